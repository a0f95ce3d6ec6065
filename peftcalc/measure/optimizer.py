"""The optimizer of the measured step: torch's AdamW with an explicit implementation, or one of bitsandbytes'
(AdamW8bit, PagedAdamW8bit, PagedAdamW), and fp32 master weights around it for the mixed-precision recipes."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from peftcalc.errors import PeftcalcError

FP16_LOSS_SCALE = 2.0**16
ADAMW_KWARGS: dict[str, dict[str, bool]] = {
    "forloop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


BNB_OPTIMIZERS = {"adamw-8bit": "AdamW8bit", "paged-adamw-8bit": "PagedAdamW8bit", "paged-adamw-32bit": "PagedAdamW"}


def make_optimizer(params: Iterable[torch.Tensor], name: str, impl: str) -> torch.optim.Optimizer:
    """torch's AdamW (`impl`), or the bitsandbytes optimizer `name` with its defaults (lr aside)."""
    if name == "adamw":
        return make_adamw(params, impl)
    if name not in BNB_OPTIMIZERS:
        raise PeftcalcError(f"the measured backend runs torch's AdamW and bitsandbytes' {', '.join(BNB_OPTIMIZERS)}; "
                            f"--optimizer {name} is estimated but not measured")
    return make_bnb_optimizer(list(params), BNB_OPTIMIZERS[name])


def make_bnb_optimizer(params: list[torch.Tensor], cls_name: str) -> torch.optim.Optimizer:
    """A bitsandbytes optimizer. On fake tensors its code tables (built with data-dependent Python in
    `fill_qmap`) are made for real and handed to it as fake copies; its update kernels have fake
    implementations (bitsandbytes/_ops.py). On the CPU a paged optimizer falls back to ordinary tensors."""
    import warnings

    import bitsandbytes as bnb
    from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily

    cls = getattr(bnb.optim, cls_name)
    fake = next((p.fake_mode for p in params if isinstance(p, FakeTensor)), None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
        if fake is None:
            return cls(params, lr=1e-5)
        with unset_fake_temporarily():
            opt = cls(params, lr=1e-5)
            if not opt.name2qmap and "8bit" in cls_name:
                opt.fill_qmap()
        opt.name2qmap = {k: fake.from_tensor(v) for k, v in opt.name2qmap.items()}
        return opt


def make_adamw(params: Iterable[torch.Tensor], impl: str) -> torch.optim.Optimizer:
    try:
        kwargs = ADAMW_KWARGS[impl]
    except KeyError:
        raise PeftcalcError(f"--adamw-impl must be forloop, foreach or fused, got {impl!r}") from None
    return torch.optim.AdamW(list(params), lr=1e-5, **kwargs)


class MasterWeightOptimizer:
    """Mixed precision with fp32 master weights around a torch optimizer (see the module docstring).

    Holds `pairs` of (low-precision trainable parameter, its fp32 master copy); the wrapped optimizer steps
    the master copies and the fp32 parameters that need none.
    """

    def __init__(self, params: list[nn.Parameter], make: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
                 loss_scale: float = 1.0) -> None:
        self.params = params
        self.pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
        stepped: list[torch.Tensor] = []
        with torch.no_grad():
            for p in params:
                if p.dtype == torch.float32:
                    stepped.append(p)
                else:
                    m = p.detach().to(torch.float32, copy=True)
                    self.pairs.append((p, m))
                    stepped.append(m)
        self.loss_scale = loss_scale
        self.optimizer = make(stepped)

    @property
    def master_weights(self) -> list[torch.Tensor]:
        return [m for _, m in self.pairs]

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @torch.no_grad()
    def step(self) -> None:
        for p, m in self.pairs:
            if p.grad is not None:
                m.grad = p.grad.to(torch.float32)
                p.grad = None
                if self.loss_scale != 1.0:
                    m.grad.mul_(1.0 / self.loss_scale)
        if self.loss_scale != 1.0:
            for p in self.params:
                if p.dtype == torch.float32 and p.grad is not None:
                    p.grad.mul_(1.0 / self.loss_scale)
        self.optimizer.step()
        for p, m in self.pairs:
            m.grad = None
            p.copy_(m)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None
        self.optimizer.zero_grad(set_to_none=True)


