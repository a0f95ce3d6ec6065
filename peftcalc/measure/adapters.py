"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021) injected into a transformers model.

peft has no bottleneck adapters, so this small module adds them, named exactly as
`peftcalc.methods.adapter` names them: `<block>.attn_adapter.{down,up}` and `<block>.ffn_adapter.{down,up}`
(Houlsby: both, Pfeiffer: the feed-forward one). Each adapter is `x + up(relu(down(x)))` applied to the output
of the block's attention output projection / feed-forward output projection (for MoE blocks, the output of the
whole expert block), before the residual addition — the placement of Houlsby et al., figure 2.
Adapter weights are fp32 like peft's adapters (the input is cast to fp32 and the result cast back); `up`
starts at zero so the adapted model starts as the base model.
"""

from __future__ import annotations

import torch
from torch import nn

from peftcalc.errors import PeftcalcError
from peftcalc.methods.adapter import SITES, BottleneckAdapter
from peftcalc.model.spec import ModelSpec

# Where the adapter goes, as a module path relative to the block; the first that exists wins.
ATTN_OUTPUTS = ("self_attn.o_proj", "self_attn.dense", "self_attn.out_proj", "attn.c_proj", "attn.out_proj",
                "self_attention.dense", "attention.dense", "attention.output.dense", "layer.0.SelfAttention.o")
FFN_OUTPUTS = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "fc2", "output.dense",
               "layer.1.DenseReluDense.wo", "layer.2.DenseReluDense.wo",
               "mlp", "block_sparse_moe")


class Bottleneck(nn.Module):
    def __init__(self, hidden: int, bottleneck: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck, bias=True, device=device, dtype=torch.float32)
        self.up = nn.Linear(bottleneck, hidden, bias=True, device=device, dtype=torch.float32)
        if device is None or torch.device(device).type != "meta":
            with torch.no_grad():
                self.up.weight.zero_()
                self.up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(torch.relu(self.down(x.to(self.down.weight.dtype))))
        return x + h.to(x.dtype)


def _hook(adapter: Bottleneck):
    def hook(module: nn.Module, args: object, out: object) -> object:
        if isinstance(out, tuple):
            return (adapter(out[0]),) + out[1:]
        return adapter(out)
    return hook


def _site_module(block: nn.Module, candidates: tuple[str, ...]) -> nn.Module | None:
    for rel in candidates:
        try:
            return block.get_submodule(rel)
        except AttributeError:
            continue
    return None


def inject_adapters(model: nn.Module, spec: ModelSpec, method: BottleneckAdapter) -> list[str]:
    """Add the adapters to every block of `model`, freeze everything else; returns the adapter module names."""
    for p in model.parameters():
        p.requires_grad_(False)
    h, b = spec.arch.hidden_size, method.bottleneck
    names: list[str] = []
    for prefix, count in spec.layer_prefixes():
        for i in range(count):
            block_name = prefix.replace("{i}", str(i))
            block = model.get_submodule(block_name)
            device = next(block.parameters()).device
            for site in SITES[method.variant]:
                target = _site_module(block, ATTN_OUTPUTS if site == "attn_adapter" else FFN_OUTPUTS)
                if target is None:
                    raise PeftcalcError(f"cannot place a bottleneck adapter ({site}) in {block_name} of {spec.name}: "
                                        "no known attention/feed-forward output module")
                adapter = Bottleneck(h, b, device=device)
                block.add_module(site, adapter)
                target.register_forward_hook(_hook(adapter))
                names.append(f"{block_name}.{site}")
    return names
