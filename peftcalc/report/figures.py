"""DataFrames -> matplotlib figures: one function per figure, each drawing the frame that frames.py makes.

Every figure has a title, labelled axes with their units, and states the setup it assumes (the second
line of its title). Figures are drawn on the Agg canvas (no pyplot, no display, no global state), so
reports build the same on a headless machine and inside a notebook.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from peftcalc.methods import DEFAULT_TABLE, METHODS
from peftcalc.report.frames import COMPONENTS, FIT_STATUSES
from peftcalc.units import Unit

DPI = 100  # PNGs of ~900 x 500 px: sharp on a laptop, small in the repository

# One colour per method, the same in every figure (matplotlib's tab10, then tab20's light half).
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896"]
METHOD_COLORS = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(list(DEFAULT_TABLE) +
                                                                     [m for m in METHODS if m not in DEFAULT_TABLE])}
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
METHOD_MARKERS = {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(METHOD_COLORS)}
COMPONENT_COLORS = dict(zip([name for name, _ in COMPONENTS],
                            ["#4c72b0", "#dd8452", "#c44e52", "#8172b3", "#937860", "#55a868", "#8c8c8c"]))
LAYER_COLORS = {"traced": "#1f77b4", "measured CPU": "#2ca02c", "measured GPU": "#d62728"}
LAYER_MARKERS = {"traced": "o", "measured CPU": "s", "measured GPU": "^"}
FIT_COLORS = {"fits": "#59a14f", "fits with changes": "#edc948", "needs more GPUs": "#f28e2b",
              "does not fit": "#e15759"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _title(fig: Figure, title: str, setup: str) -> None:
    """The figure's title, and on its second line the setup it assumes."""
    fig.suptitle(f"{title}\n{_wrap(setup, int(fig.get_figwidth() * 12))}", fontsize=11)


def _wrap(text: str, width: int) -> str:
    """Break a long ' · '-separated setup line between its parts."""
    lines, line = [], ""
    for part in text.split(" · "):
        if line and len(line) + 3 + len(part) > width:
            lines.append(line)
            line = part
        else:
            line = f"{line} · {part}" if line else part
    lines.append(line)
    return "\n".join(lines)


def method_color(method: str) -> str:
    return METHOD_COLORS.get(method, "#333333")


def _plain(v: float) -> str:
    """A tick label without exponents: 1,000 / 20 / 0.5 / 0.002."""
    if v >= 1:
        return f"{v:,.0f}" if abs(v - round(v)) < 1e-9 * max(1.0, v) else f"{v:,.3g}"
    return f"{v:.3g}"


def _log_ticks(axis, subs: Sequence[float] = (1.0, 2.0, 5.0)) -> None:
    """Log-scale ticks at 1, 2, 5 x 10^k, labelled as plain numbers."""
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _p: _plain(v)))
    axis.set_minor_formatter(NullFormatter())


def _in(values: pd.Series | np.ndarray | Sequence[float], unit: Unit) -> np.ndarray:
    return np.asarray(values, dtype=float) / unit.bytes


PNG_COLORS = 128  # palette size of the saved PNGs: plots have few colours, and files shrink ~4x


def png_bytes(fig: Figure) -> bytes:
    """The figure as a palette PNG (`PNG_COLORS` colours, no metadata): the same figure gives the same
    bytes, and a report's images stay small."""
    from PIL import Image  # matplotlib's own dependency

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    buf.seek(0)
    with Image.open(buf) as im:
        quantized = im.convert("RGB").quantize(colors=PNG_COLORS, method=Image.Quantize.FASTOCTREE)
    out = io.BytesIO()
    quantized.save(out, format="PNG", optimize=True)
    return out.getvalue()


# ---- one model --------------------------------------------------------------------------------------

def memory_breakdown_figure(breakdown: pd.DataFrame, setup: str, unit: Unit = Unit.GB) -> Figure:
    """Stacked bars: the peak memory per GPU of each method, by component (frames.breakdown_frame)."""
    fig = _figure(9, 5)
    ax = fig.add_subplot()
    x = np.arange(len(breakdown))
    bottom = np.zeros(len(breakdown))
    for name, col in COMPONENTS:
        values = _in(breakdown[col], unit)
        if not values.any():
            continue  # e.g. no master weights in fp32: no empty legend entry
        ax.bar(x, values, bottom=bottom, label=name, color=COMPONENT_COLORS[name], width=0.7)
        bottom += values
    for xi, total in zip(x, _in(breakdown["total_bytes"], unit)):
        ax.annotate(f"{total:,.1f}", (xi, total), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, breakdown["method"].tolist())
    ax.set_xlabel("fine-tuning method")
    ax.set_ylabel(f"peak memory per GPU ({unit.value})")
    ax.set_ylim(0, bottom.max() * 1.1 if len(bottom) else 1)
    ax.set_title("each bar: the peak of one training step, by what holds it", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    _title(fig, "Memory per GPU by component", setup)
    return fig


_SWEEP_LABELS = {"seq_len": ("sequence length (tokens)", "Peak memory per GPU vs sequence length"),
                 "batch_size": ("micro-batch size (sequences per GPU)", "Peak memory per GPU vs batch size")}


def memory_sweep_figure(sweep: pd.DataFrame, capacities: pd.DataFrame, field: str, setup: str,
                        unit: Unit = Unit.GB, max_positions: int | None = None) -> Figure:
    """Peak memory per GPU of each method as `field` (seq_len or batch_size) grows (frames.sweep_frame),
    with each GPU's usable memory as a horizontal line (frames.capacity_frame) and, for sequence length,
    the context the model was trained with (`max_positions`) as a vertical one."""
    xlabel, title = _SWEEP_LABELS[field]
    fig = _figure(9, 5.2)
    ax = fig.add_subplot()
    for method, g in sweep.groupby("method", sort=False):
        ax.plot(g[field], _in(g["peak_bytes"], unit), marker=METHOD_MARKERS.get(method, "o"), markersize=4,
                color=method_color(method), label=method, linewidth=1.5)
    for _, cap in capacities.iterrows():
        y = cap["usable_memory_bytes"] / unit.bytes
        ax.axhline(y, color="#555555", linestyle="--", linewidth=0.9, gid=f"capacity:{cap['gpu']}")
        ax.annotate(f"{cap['gpu']} ({y:,.0f} {unit.value} usable)", (0.005, y), xycoords=("axes fraction", "data"),
                    fontsize=7.5, color="#333333", va="bottom")
    if field == "seq_len" and max_positions and len(sweep) and sweep[field].min() <= max_positions:
        ax.axvline(max_positions, color="#555555", linestyle=":", linewidth=1.2, gid="max-positions")
        ax.annotate(f" trained context {max_positions:,}", (max_positions, 0.02),
                    xycoords=("data", "axes fraction"), fontsize=7.5, color="#333333", rotation=90,
                    va="bottom", ha="right")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{int(v):,}"))
    ax.set_xticks(sorted(sweep[field].unique()))
    ax.xaxis.set_minor_formatter(NullFormatter())
    _log_ticks(ax.yaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"peak memory per GPU ({unit.value}, log scale)")
    ax.grid(which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), title="method", title_fontsize=8)
    ax.set_title("dashed: usable memory of each GPU (before the CUDA context)", fontsize=9)
    _title(fig, title, setup)
    return fig


def rank_figure(ranks: pd.DataFrame, setup: str, unit: Unit = Unit.GB) -> Figure:
    """Trainable parameters and checkpoint size per task as the LoRA rank grows (frames.rank_frame)."""
    fig = _figure(9, 4.6)
    ax_p, ax_c = fig.subplots(1, 2)
    mb = 10**6 if unit is Unit.GB else 2**20
    mb_name = "MB" if unit is Unit.GB else "MiB"
    for method, g in ranks.groupby("method", sort=False):
        kw = dict(marker=METHOD_MARKERS.get(method, "o"), markersize=4, color=method_color(method), label=method)
        ax_p.plot(g["rank"], g["trainable_params"] / 1e6, **kw)
        ax_c.plot(g["rank"], g["checkpoint_bytes"] / mb, **kw)
    for ax in (ax_p, ax_c):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted(ranks["rank"].unique()))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{int(v)}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        _log_ticks(ax.yaxis)
        ax.set_xlabel("LoRA rank r")
        ax.grid(which="major", alpha=0.3)
        ax.legend(fontsize=8)
    ax_p.set_ylabel("trainable parameters (millions, log scale)")
    ax_p.set_title("trainable parameters: r(m+n) per adapted matrix", fontsize=9)
    ax_c.set_ylabel(f"checkpoint per task ({mb_name}, log scale)")
    ax_c.set_title("adapter checkpoint (safetensors, fp32)", fontsize=9)
    _title(fig, "Trainable parameters and checkpoint size vs LoRA rank", setup)
    return fig


def storage_figure(storage: pd.DataFrame, setup: str, unit: Unit = Unit.GB) -> Figure:
    """Disk for N tasks: each method's files plus one base model, against N full copies (frames.storage_frame)."""
    fig = _figure(9, 5)
    ax = fig.add_subplot()
    copies = storage.drop_duplicates("num_tasks")
    ax.plot(copies["num_tasks"], _in(copies["full_copies_bytes"], unit), color="black", linestyle="--",
            linewidth=2, label="N full copies", gid="full-copies")
    for method, g in storage.groupby("method", sort=False):
        if method == "full":
            continue  # the full-copies line
        ax.plot(g["num_tasks"], _in(g["total_bytes"], unit), marker=METHOD_MARKERS.get(method, "o"), markersize=4,
                color=method_color(method), label=f"{method}: base + N checkpoints")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sorted(storage["num_tasks"].unique()))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{int(v):,}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    _log_ticks(ax.yaxis, subs=(1.0, 2.0, 3.0, 5.0))
    ax.set_xlabel("number of fine-tuned tasks N")
    ax.set_ylabel(f"disk for N tasks ({unit.value}, log scale)")
    ax.grid(which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("adapters share one base model; full fine-tuning saves a whole copy per task", fontsize=9)
    _title(fig, "Storage for N tasks: adapters vs full copies", setup)
    return fig


REMEDY_ABBREVIATIONS = {"smaller batch": "b-", "gradient checkpointing": "ckpt", "adamw-8bit": "8bit",
                        "optimizer offload": "offload"}


def fit_cell_text(row: pd.Series, unit: Unit) -> str:
    """What a fit-matrix cell says: the peak per GPU when it fits, the changes it needs, xN GPUs, or -."""
    status = row["status"]
    if status == "fits":
        return f"{row['per_gpu_bytes'] / unit.bytes:,.0f}" if pd.notna(row["per_gpu_bytes"]) else ""
    if status == "fits with changes":
        needs = str(row["fits_with"] or "").split("+")
        return "+".join(REMEDY_ABBREVIATIONS.get(n, n) for n in needs if n)
    if status == "needs more GPUs":
        return f"x{row['min_gpus']}"
    return "-"


def fit_matrix_figure(fit: pd.DataFrame, setup: str, unit: Unit = Unit.GB) -> Figure:
    """Method x GPU at the setup asked (frames.fit_frame): green fits (cell: peak per GPU), yellow fits with
    changes (cell: which), orange needs more GPUs (cell: xN, the fewest), red does not fit within the
    planner's GPU limit."""
    methods = list(dict.fromkeys(fit["method"]))
    gpus = list(dict.fromkeys(fit["gpu"]))
    grid = np.full((len(methods), len(gpus)), np.nan)
    fig = _figure(max(7.0, 2.6 + 0.6 * len(gpus)), 2.2 + 0.4 * len(methods))
    ax = fig.add_subplot()
    for _, row in fit.iterrows():
        i, j = methods.index(row["method"]), gpus.index(row["gpu"])
        grid[i, j] = FIT_STATUSES.index(row["status"])
        ax.text(j, i, fit_cell_text(row, unit), ha="center", va="center", fontsize=6.5)
    ax.imshow(grid, cmap=ListedColormap([FIT_COLORS[k] for k in FIT_STATUSES]), vmin=-0.5,
              vmax=len(FIT_STATUSES) - 0.5, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(gpus)), gpus, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    ax.set_xticks(np.arange(-0.5, len(gpus)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(methods)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("GPU (usable memory from the catalogue)")
    ax.set_ylabel("fine-tuning method")
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color=FIT_COLORS[k], label=k) for k in FIT_STATUSES], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1))
    ax.set_title(f"cell: peak per GPU ({unit.value}) | changes needed (b- smaller batch, ckpt, 8bit Adam, offload) "
                 "| xN fewest GPUs", fontsize=8)
    _title(fig, "GPU fit matrix", setup)
    return fig


def time_cost_figure(cost: pd.DataFrame, setup: str, methods: Sequence[str] | None = None) -> Figure:
    """Hours and rent per GPU option, one dot per (GPU, method): the fewest GPUs of each kind that fit
    (frames.cost_frame), labelled xN with N the number of GPUs."""
    cost = cost[cost["hours"].notna()]
    if methods is None:
        methods = list(dict.fromkeys(cost["method"]))
    cost = cost[cost["method"].isin(list(methods))]
    gpus = sorted(dict.fromkeys(cost["gpu"]))
    fig = _figure(10, 2.2 + 0.36 * max(1, len(gpus)))
    ax_t, ax_c = fig.subplots(1, 2, sharey=True)
    y = {gpu: i for i, gpu in enumerate(gpus)}
    step = 0.5 / max(1, len(methods))
    for k, method in enumerate(methods):
        g = cost[cost["method"] == method]
        if g.empty:
            continue
        pos = np.array([y[gpu] for gpu in g["gpu"]], dtype=float) + (k - (len(methods) - 1) / 2) * step
        kw = dict(color=method_color(method), marker=METHOD_MARKERS.get(method, "o"), s=28, label=method, zorder=3)
        hours = g["hours"].astype(float).to_numpy()
        ax_t.scatter(hours, pos, **kw)
        rent = g["rent_usd"].astype(float).to_numpy()
        has_rent = ~np.isnan(rent)
        ax_c.scatter(rent[has_rent], pos[has_rent], **kw)
        for h, p, n in zip(hours, pos, g["num_gpus"]):
            if n > 1:
                ax_t.annotate(f"x{n}", (h, p), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
    for gpu in gpus:
        if cost.loc[cost["gpu"] == gpu, "rent_usd"].isna().all():
            ax_c.annotate("no rent price in the catalogue", (0.02, y[gpu]), xycoords=("axes fraction", "data"),
                          va="center", fontsize=7, color="#555555")
    ax_t.set_yticks(range(len(gpus)), gpus, fontsize=8)
    ax_t.set_ylim(len(gpus) - 0.5, -0.5)
    for ax in (ax_t, ax_c):
        ax.set_xscale("log")
        _log_ticks(ax.xaxis)
        ax.grid(which="major", alpha=0.3)
    ax_t.set_xlabel("wall-clock time for the run (hours, log scale)")
    ax_c.set_xlabel("rent cost of the run (US$, log scale)")
    ax_t.set_ylabel("GPU (fewest that fit; xN = N GPUs)")
    ax_t.set_title("time", fontsize=9)
    ax_c.set_title("rent at the catalogue's $/GPU-hour", fontsize=9)
    ax_c.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), title="method", title_fontsize=8)
    _title(fig, "Time and cost per GPU option", setup)
    return fig


# ---- measured results -------------------------------------------------------------------------------

def predicted_vs_measured_figure(compared: pd.DataFrame, setup: str, band_percent: float = 2.0,
                                 unit: Unit = Unit.GB) -> Figure:
    """Predicted vs measured peak, one point per run (frames.compared_frame), coloured by layer of truth
    (traced, measured CPU, measured GPU), with the identity line and a +/- band_percent band."""
    fig = _figure(7.5, 6.4)
    ax = fig.add_subplot()
    m = _in(compared["measured_peak_bytes"], unit)
    p = _in(compared["predicted_peak_bytes"], unit)
    lo = float(min(m.min(), p.min())) * 0.7 if len(m) else 0.01
    hi = float(max(m.max(), p.max())) * 1.4 if len(m) else 1.0
    line = np.geomspace(lo, hi, 50)
    f = band_percent / 100.0
    ax.fill_between(line, line * (1 - f), line * (1 + f), color="#999999", alpha=0.3, linewidth=0,
                    label=f"±{band_percent:g} % band", gid="band")
    ax.plot(line, line, color="black", linewidth=1, label="predicted = measured", gid="identity")
    for layer, g in compared.groupby("layer", sort=True):
        ax.scatter(_in(g["measured_peak_bytes"], unit), _in(g["predicted_peak_bytes"], unit), s=22,
                   color=LAYER_COLORS.get(layer, "#333333"), marker=LAYER_MARKERS.get(layer, "o"),
                   label=f"{layer} ({len(g)})", alpha=0.85, edgecolors="white", linewidths=0.4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    _log_ticks(ax.xaxis)
    _log_ticks(ax.yaxis)
    ax.set_xlabel(f"measured peak memory ({unit.value}, log scale)")
    ax.set_ylabel(f"predicted peak memory ({unit.value}, log scale)")
    ax.grid(which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("analytic prediction against the traced or measured step", fontsize=9)
    _title(fig, "Predicted vs measured peak memory", setup)
    return fig


def error_distribution_figure(compared: pd.DataFrame, setup: str, band_percent: float = 2.0) -> Figure:
    """The peak's error in % (predicted - measured, over measured) by method and by architecture family:
    a box per group and every run as a point (frames.compared_frame)."""
    fig = _figure(10, 4.8)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, by, label in ((axes[0], "method", "fine-tuning method"), (axes[1], "family", "architecture family")):
        groups = sorted(compared[by].dropna().unique())
        data = [compared.loc[compared[by] == k, "peak_error_percent"].astype(float).to_numpy() for k in groups]
        ax.axhspan(-band_percent, band_percent, color="#999999", alpha=0.3, linewidth=0, gid="band")
        ax.axhline(0, color="black", linewidth=0.8)
        if groups:
            ax.boxplot(data, positions=range(len(groups)), widths=0.55, showfliers=False,
                       medianprops={"color": "black"})
            rng = np.random.default_rng(0)  # fixed jitter: the same report every time
            for i, (k, d) in enumerate(zip(groups, data)):
                colors = [LAYER_COLORS.get(layer, "#333333") for layer in compared.loc[compared[by] == k, "layer"]]
                ax.scatter(i + rng.uniform(-0.18, 0.18, len(d)), d, s=12, c=colors, alpha=0.8, zorder=3,
                           gid=f"points:{k}")
            ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel(label)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"by {label} (grey: ±{band_percent:g} %)", fontsize=9)
    axes[0].set_ylabel("peak error (% of measured; + = over-predicted)")
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=k) for k, c in LAYER_COLORS.items()
               if k in set(compared["layer"])]
    if handles:
        axes[1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    _title(fig, "Prediction error of the peak, by method and architecture", setup)
    return fig


# ---- published GPU runs -----------------------------------------------------------------------------------

GROUP_COLORS = {"transformers": "#1f77b4", "torchtune": "#ff7f0e", "litgpt": "#2ca02c"}
QUANTITY_MARKERS = {"max_allocated": "o", "peak_active": "o", "max_reserved": "s", "reserved_p99": "s",
                    "device_used": "^", "not_stated": "x"}


def published_scatter_figure(published: pd.DataFrame, setup: str, unit: Unit = Unit.GB) -> Figure:
    """Estimated vs published GPU memory, one point per predicted record (frames.published_frame), coloured by
    whose model code ran (transformers + peft, torchtune, litgpt), marked by the quantity the source measured
    (allocated, reserved, device), with the identity line and a ±10 % band."""
    fig = _figure(7.5, 6.4)
    ax = fig.add_subplot()
    d = published[published["error_percent"].notna()]
    m, p = _in(d["measured_bytes"], unit), _in(d["predicted_bytes"].astype(float), unit)
    lo = float(min(m.min(), p.min())) * 0.7 if len(d) else 0.1
    hi = float(max(m.max(), p.max())) * 1.4 if len(d) else 100.0
    line = np.geomspace(lo, hi, 50)
    ax.fill_between(line, line * 0.9, line * 1.1, color="#999999", alpha=0.3, linewidth=0, label="±10 % band",
                    gid="band")
    ax.plot(line, line, color="black", linewidth=1, label="estimated = published", gid="identity")
    for (group, quantity), g in d.groupby(["group", "quantity"], sort=True):
        ax.scatter(_in(g["measured_bytes"], unit), _in(g["predicted_bytes"].astype(float), unit), s=20,
                   color=GROUP_COLORS.get(group, "#333333"), marker=QUANTITY_MARKERS.get(quantity, "o"),
                   label=f"{group}: {quantity} ({len(g)})", alpha=0.8,
                   edgecolors="white" if quantity != "not_stated" else None, linewidths=0.4, gid=f"points:{group}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    _log_ticks(ax.xaxis)
    _log_ticks(ax.yaxis)
    ax.set_xlabel(f"published GPU memory ({unit.value}, log scale)")
    ax.set_ylabel(f"estimated, same quantity ({unit.value}, log scale)")
    ax.grid(which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("colour: whose model code ran · marker: the quantity the source measured", fontsize=9)
    _title(fig, "Published GPU runs: estimated vs published memory", setup)
    return fig
