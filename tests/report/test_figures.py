"""figures.py: each figure drawn from the frame it is made for; assertions on the Axes (data, labels,
titles), never on pixels."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from peftcalc.methods import MethodOptions
from peftcalc.report import figures as fg
from peftcalc.report import frames as fr
from peftcalc.setup import Setup
from peftcalc.units import Unit

SETUP = "test-model (1.00B params) · fp32 · batch 1 x seq 512"
GB = 10**9


def assert_labelled(fig: Figure, title: str) -> None:
    """A title, the setup it assumes, and every axis labelled with a unit in parentheses (or a category)."""
    sup = fig.get_suptitle()
    assert title in sup and SETUP.split(" · ")[0] in sup
    for ax in fig.axes:
        assert ax.get_title(), "every panel says what it shows"
        assert ax.get_xlabel() and (ax.get_ylabel() or ax.get_shared_y_axes().get_siblings(ax) != [ax])


def test_memory_breakdown_stacks_components(seed_estimate):
    df = fr.breakdown_frame(seed_estimate)
    fig = fg.memory_breakdown_figure(df, SETUP)
    assert_labelled(fig, "Memory per GPU by component")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "peak memory per GPU (GB)"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(df["method"])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:3] == ["weights", "gradients", "optimizer states"]
    assert "master weights" not in labels  # fp32: none, so no empty legend entry
    # the stack of each bar reaches the method's total
    tops = {}
    for container in ax.containers:
        for i, bar in enumerate(container):
            tops[i] = max(tops.get(i, 0.0), bar.get_y() + bar.get_height())
    assert [round(tops[i], 6) for i in range(len(df))] == [round(v / GB, 6) for v in df["total_bytes"]]
    assert len(ax.containers) == len(labels)


def test_memory_breakdown_in_gib(seed_estimate):
    fig = fg.memory_breakdown_figure(fr.breakdown_frame(seed_estimate), SETUP, Unit.GiB)
    ax = fig.axes[0]
    assert ax.get_ylabel().endswith("(GiB)")
    full = ax.containers[0][0]  # weights of full fine-tuning
    assert full.get_height() == pytest.approx(seed_estimate.result("full").memory.weight_bytes / 2**30)


@pytest.mark.parametrize("field,values,xlabel", [
    ("seq_len", (256, 512, 1024, 2048), "sequence length (tokens)"),
    ("batch_size", (1, 2, 4, 8), "micro-batch size (sequences per GPU)"),
])
def test_memory_sweep_lines_and_capacities(small_spec, gpus, field, values, xlabel):
    sweep = fr.sweep_frame(small_spec, Setup(), ("full", "lora"), MethodOptions(), field, values)
    caps = fr.capacity_frame(gpus)
    fig = fg.memory_sweep_figure(sweep, caps, field, SETUP)
    assert_labelled(fig, "Peak memory per GPU vs")
    ax = fig.axes[0]
    assert ax.get_xlabel() == xlabel
    assert ax.get_ylabel() == "peak memory per GPU (GB, log scale)"
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    lines = {l.get_label(): l for l in ax.get_lines() if not str(l.get_gid()).startswith("capacity:")}
    assert set(lines) == {"full", "lora"}
    for method, line in lines.items():
        g = sweep[sweep["method"] == method]
        assert list(line.get_xdata()) == list(values)
        np.testing.assert_allclose(line.get_ydata(), g["peak_bytes"] / GB)
    capacity = {l.get_gid(): l.get_ydata()[0] for l in ax.get_lines() if str(l.get_gid()).startswith("capacity:")}
    assert capacity == {f"capacity:{g.id}": pytest.approx(g.usable_memory_bytes / GB) for g in gpus}
    assert any("rtx-4090" in t.get_text() for t in ax.texts)
    trained = [l for l in ax.get_lines() if l.get_gid() == "max-positions"]
    assert not trained  # none given


def test_memory_sweep_marks_the_trained_context(small_spec, gpus):
    sweep = fr.sweep_frame(small_spec, Setup(), ("lora",), MethodOptions(), "seq_len", (256, 1024, 4096))
    fig = fg.memory_sweep_figure(sweep, fr.capacity_frame(gpus), "seq_len", SETUP, max_positions=1024)
    (line,) = [l for l in fig.axes[0].get_lines() if l.get_gid() == "max-positions"]
    assert list(line.get_xdata()) == [1024, 1024]
    assert any("trained context 1,024" in t.get_text() for t in fig.axes[0].texts)


def test_rank_figure(small_spec):
    ranks = fr.rank_frame(small_spec, Setup(), MethodOptions(), (1, 4, 16), ("lora", "qlora"))
    fig = fg.rank_figure(ranks, SETUP)
    assert_labelled(fig, "vs LoRA rank")
    ax_p, ax_c = fig.axes
    assert ax_p.get_xlabel() == ax_c.get_xlabel() == "LoRA rank r"
    assert "millions" in ax_p.get_ylabel() and "(MB" in ax_c.get_ylabel()
    lora = ranks[ranks["method"] == "lora"]
    line = next(l for l in ax_p.get_lines() if l.get_label() == "lora")
    np.testing.assert_allclose(line.get_ydata(), lora["trainable_params"] / 1e6)
    line = next(l for l in ax_c.get_lines() if l.get_label() == "qlora")
    np.testing.assert_allclose(line.get_ydata(), ranks[ranks["method"] == "qlora"]["checkpoint_bytes"] / 1e6)


def test_storage_figure(seed_estimate):
    st = fr.storage_frame(seed_estimate, (1, 10, 100))
    fig = fg.storage_figure(st, SETUP)
    assert_labelled(fig, "Storage for N tasks")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "number of fine-tuned tasks N"
    assert ax.get_ylabel() == "disk for N tasks (GB, log scale)"
    copies = next(l for l in ax.get_lines() if l.get_gid() == "full-copies")
    assert list(copies.get_xdata()) == [1, 10, 100]
    np.testing.assert_allclose(copies.get_ydata(), st[st["method"] == "full"]["full_copies_bytes"] / GB)
    labels = [l.get_label() for l in ax.get_lines()]
    assert "lora: base + N checkpoints" in labels and not any(l.startswith("full:") for l in labels)


def test_fit_matrix_colours_each_cell(small_plan, gpus):
    fit = fr.fit_frame(fr.plan_frame(small_plan.rows), gpus, ("full", "lora", "qlora"))
    fig = fg.fit_matrix_figure(fit, SETUP)
    assert_labelled(fig, "GPU fit matrix")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["full", "lora", "qlora"]
    assert [t.get_text() for t in ax.get_xticklabels()] == [g.id for g in gpus]
    grid = ax.get_images()[0].get_array()
    levels = {s: i for i, s in enumerate(fr.FIT_STATUSES)}
    assert grid[0].tolist() == [levels["needs more GPUs"], levels["needs more GPUs"], levels["fits with changes"]]
    assert grid[1].tolist() == [levels["does not fit"], levels["fits"], levels["fits"]]
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert texts[(0, 0)] == "x4" and texts[(0, 2)] == "ckpt+offload" and texts[(1, 0)] == "-"
    assert texts[(2, 0)] == "12"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(fr.FIT_STATUSES)


def test_time_cost_figure(small_plan):
    cost = fr.cost_frame(fr.plan_frame(small_plan.rows), ("full", "lora", "qlora"))
    fig = fg.time_cost_figure(cost, SETUP)
    assert_labelled(fig, "Time and cost per GPU option")
    ax_t, ax_c = fig.axes
    assert "hours" in ax_t.get_xlabel() and "US$" in ax_c.get_xlabel()
    assert [t.get_text() for t in ax_t.get_yticklabels()] == ["a100-80gb", "h100-80gb", "rtx-4090"]
    hours = {c.get_label(): sorted(c.get_offsets()[:, 0].tolist()) for c in ax_t.collections}
    assert hours == {"full": [3.0, 4.0, 10.0], "lora": [2.0, 6.0], "qlora": [3.0, 8.0, 20.0]}
    rent = {c.get_label(): sorted(c.get_offsets()[:, 0].tolist()) for c in ax_c.collections}
    assert rent["qlora"] == [9.0, 15.0]  # the 4090 has no rent price: no dot
    assert any("x4" == t.get_text() for t in ax_t.texts)


def test_predicted_vs_measured(records):
    compared = fr.compared_frame(fr.results_frame(records))
    fig = fg.predicted_vs_measured_figure(compared, SETUP, band_percent=2.0)
    assert_labelled(fig, "Predicted vs measured peak memory")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "measured peak memory (GB, log scale)"
    assert ax.get_ylabel() == "predicted peak memory (GB, log scale)"
    identity = next(l for l in ax.get_lines() if l.get_gid() == "identity")
    np.testing.assert_allclose(identity.get_xdata(), identity.get_ydata())
    band = next(c for c in ax.collections if c.get_gid() == "band")
    ys = band.get_paths()[0].vertices
    assert ys[:, 1].max() == pytest.approx(ax.get_ylim()[1] * 1.02, rel=1e-3)
    points = {c.get_label(): c.get_offsets() for c in ax.collections if c.get_gid() != "band"}
    assert set(points) == {"traced (5)", "measured CPU (3)", "measured GPU (2)"}
    gpu = points["measured GPU (2)"]
    assert sorted(gpu[:, 0].tolist()) == [8.0, 16.0] and sorted(gpu[:, 1].tolist()) == [8.8, 12.0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "±2 % band" in legend and "predicted = measured" in legend


def test_error_distribution(records):
    compared = fr.compared_frame(fr.results_frame(records))
    fig = fg.error_distribution_figure(compared, SETUP)
    assert_labelled(fig, "Prediction error of the peak")
    ax_m, ax_f = fig.axes
    assert ax_m.get_xlabel() == "fine-tuning method" and ax_f.get_xlabel() == "architecture family"
    assert "%" in ax_m.get_ylabel()
    assert [t.get_text() for t in ax_m.get_xticklabels()] == ["full", "lora", "prompt", "qlora"]
    assert [t.get_text() for t in ax_f.get_xticklabels()] == ["gpt2", "llama", "qwen2"]
    full = next(c for c in ax_m.collections if c.get_gid() == "points:full")
    assert sorted(full.get_offsets()[:, 1].tolist()) == [-25.0, 0.5, 0.5]
    qwen = next(c for c in ax_f.collections if c.get_gid() == "points:qwen2")
    assert len(qwen.get_offsets()) == 4


def test_error_distribution_of_nothing_still_draws():
    empty = fr.compared_frame(fr.results_frame([]))
    fig = fg.error_distribution_figure(empty, SETUP)
    assert len(fig.axes) == 2
    fg.png_bytes(fig)


def test_png_is_small_stable_and_plain(seed_estimate):
    fig = fg.memory_breakdown_figure(fr.breakdown_frame(seed_estimate), SETUP)
    a, b = fg.png_bytes(fig), fg.png_bytes(fig)
    assert a == b
    assert a[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(a) < 80_000
    from PIL import Image
    with Image.open(io.BytesIO(a)) as im:
        assert im.size == (900, 500) and im.mode == "P"


def test_every_method_has_its_own_colour():
    assert len(set(fg.METHOD_COLORS.values())) == len(fg.METHOD_COLORS)
    assert set(fg.FIT_COLORS) == set(fr.FIT_STATUSES)
    assert isinstance(fg.method_color("unknown"), str)
    assert pd.notna(fg.DPI)
