"""page.py and build.py: Markdown, the self-contained HTML page, CSVs, atomic writes; and the
`peftcalc report` command end to end on small inputs."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import pandas as pd
import pytest
from click.testing import CliRunner

from peftcalc.cli import main
from peftcalc.errors import PeftcalcError
from peftcalc.methods import MethodOptions
from peftcalc.report import page
from peftcalc.report.assemble import model_report, validation_report
from peftcalc.report.figures import memory_breakdown_figure
from peftcalc.report.frames import breakdown_frame
from peftcalc.setup import Setup


class Links(HTMLParser):
    """Every URL-bearing attribute of a page, and its images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.images: list[dict[str, str]] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        a = dict(attrs)
        for k in ("src", "href", "srcset", "action", "poster", "data"):
            if a.get(k):
                self.urls.append((tag, k, a[k]))
        if tag == "img":
            self.images.append(a)


def small_report(seed_estimate) -> page.Report:
    df = breakdown_frame(seed_estimate)
    return page.Report(
        title="A | title <with> markup",
        summary=["first paragraph"],
        sections=[page.Section("Memory", ["why"], [
            page.Plot("breakdown", "Memory by component", memory_breakdown_figure(df, "setup line"), "a caption"),
            page.Table("breakdown", "Memory table", df),
            page.Table("hidden", "Long table", df, show=False),
        ])],
        assumptions={"precision": "fp32 & friends"},
        command="peftcalc report --params 7e9 --out x")


def test_markdown_links_every_image_and_csv(seed_estimate):
    files = page.render_files(small_report(seed_estimate))
    md = files["report.md"].decode()
    assert md.startswith("# A | title <with> markup\n")
    assert "![Memory by component](breakdown.png)" in md
    assert "[breakdown.csv](breakdown.csv)" in md and "[hidden.csv](hidden.csv)" in md
    assert "| method | weights_bytes |" in md
    assert md.count("| full |") == 1  # the hidden table is linked, not printed
    assert "`peftcalc report --params 7e9 --out x`" in md
    assert set(files) == {"report.md", "index.html", "breakdown.png", "breakdown.csv", "hidden.csv"}


def test_markdown_table_escapes_and_aligns():
    df = pd.DataFrame({"name": ["a|b", "c"], "bytes": ["1.00 GB", "-"]})
    assert page.markdown_table(df).splitlines() == ["| name | bytes |", "|---|--:|", "| a\\|b | 1.00 GB |", "| c | - |"]


def test_html_is_self_contained(seed_estimate):
    files = page.render_files(small_report(seed_estimate))
    text = files["index.html"].decode()
    p = Links()
    p.feed(text)
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
    assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    # nothing to fetch: every URL is a data: URI, an anchor in the page, or a CSV file beside it
    for tag, attr, url in p.urls:
        assert url.startswith(("data:", "#")) or (tag == "a" and url in files), (tag, attr, url[:60])
    assert not re.search(r"url\(|@import|https?://", text.split("<body>")[0])
    # the image is the PNG file, byte for byte
    (img,) = p.images
    assert img["alt"] == "Memory by component"
    assert base64.b64decode(img["src"].split(",", 1)[1]) == files["breakdown.png"]
    assert [u for t, a, u in p.urls if u.endswith(".csv")] == ["breakdown.csv", "hidden.csv"]
    assert "A | title &lt;with&gt; markup" in text and "fp32 &amp; friends" in text
    assert "max-width: 100%" in text or "width: 100%" in text  # images shrink to a phone's width


def test_csv_holds_exact_integers(seed_estimate):
    files = page.render_files(small_report(seed_estimate))
    back = pd.read_csv(io.BytesIO(files["breakdown.csv"]))
    pd.testing.assert_frame_equal(back, breakdown_frame(seed_estimate), check_dtype=False)


def test_duplicate_file_names_fail(seed_estimate):
    r = small_report(seed_estimate)
    r.sections[0].items.append(page.Table("breakdown", "again", pd.DataFrame({"a": [1]})))
    with pytest.raises(ValueError, match="breakdown.csv"):
        page.render_files(r)


# ---- atomic writes ---------------------------------------------------------------------------------------

def test_write_creates_and_replaces(tmp_path):
    out = tmp_path / "sub" / "rep"
    page.write_files({"report.md": b"one", "a.csv": b"1"}, out)
    assert (out / "report.md").read_bytes() == b"one"
    page.write_files({"report.md": b"two", "index.html": b"<html>"}, out)
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "report.md"]  # a.csv gone: replaced whole
    assert (out / "report.md").read_bytes() == b"two"
    assert [p.name for p in out.parent.iterdir()] == ["rep"]  # no temporary folder left


def test_a_crash_keeps_the_previous_report(tmp_path, seed_estimate, monkeypatch):
    out = tmp_path / "rep"
    page.write_files({"report.md": b"old"}, out)

    def boom(fig):
        raise RuntimeError("disk full")

    monkeypatch.setattr("peftcalc.report.figures.png_bytes", boom)
    with pytest.raises(RuntimeError):
        page.write_report(small_report(seed_estimate), out)
    assert (out / "report.md").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_a_crash_while_writing_cleans_up(tmp_path):
    out = tmp_path / "rep"
    page.write_files({"report.md": b"old"}, out)
    with pytest.raises(ValueError):
        page.write_files({"report.md": b"new", "../escape": b"x"}, out)
    assert (out / "report.md").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_never_replaces_a_folder_that_is_not_a_report(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(PeftcalcError, match="not a peftcalc report"):
        page.write_files({"report.md": b"x"}, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(PeftcalcError, match="is a file"):
        page.write_files({"report.md": b"x"}, tmp_path / "file")


# ---- the assembled reports ---------------------------------------------------------------------------------

def test_model_report_has_every_section(seed_estimate, small_plan, gpus):
    r = model_report(seed_estimate.spec, Setup(), ("full", "lora", "qlora"), MethodOptions(rank=8), plan=small_plan,
                     gpus=gpus, capacity_gpus=gpus, command="cmd")
    assert [s.title for s in r.sections] == ["Method comparison", "Memory per GPU",
                                             "Memory vs sequence length and batch size", "LoRA rank",
                                             "Storage for N tasks", "Which GPUs fit", "Time and cost per GPU option"]
    assert [p.name for p in r.plots()] == ["memory-breakdown", "memory-vs-seq", "memory-vs-batch", "lora-rank",
                                           "storage-tasks", "gpu-fit", "time-cost"]
    assert "112.00 GB of model states" in r.sections[0].paragraphs[0]
    comp = r.tables()[0].shown()
    assert list(comp["method"]) == ["Full fine-tuning", "LoRA", "QLoRA"]
    assert comp.loc[0, "model states (exact)"] == "112.00 GB"
    assert r.assumptions["plan: MFU"] == "assumed 40 %"
    for fig in (p.figure for p in r.plots()):
        assert "7.00B params" in fig.get_suptitle()


def test_model_report_without_a_plan(seed_estimate):
    r = model_report(seed_estimate.spec, Setup(), ("lora",), MethodOptions())
    assert "Which GPUs fit" not in [s.title for s in r.sections]


def test_validation_report(records):
    r = validation_report(records, "results/", command="cmd")
    assert [p.name for p in r.plots()] == ["predicted-vs-measured", "error-distribution"]
    names = [t.name for t in r.tables()]
    assert names == ["runs-by-status", "failed-runs", "prediction-history", "error-by-component", "error-by-method", "error-by-family", "worst-runs", "runs"]
    worst = next(t for t in r.tables() if t.name == "worst-runs").shown()
    assert worst.loc[0, "error %"] == "-25.00 %" and worst.loc[0, "model"] == "qwen-tiny"
    assert "12 runs from results/" in r.summary[0]


# ---- the command -------------------------------------------------------------------------------------------

def test_cli_model_report(tmp_path):
    out = tmp_path / "rep"
    res = CliRunner().invoke(main, ["report", "--model", "gpt2", "--method", "full", "--method", "lora",
                                    "--gpu", "t4", "--gpu", "a100-80gb", "--out", str(out)])
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "index.html", "comparison.csv", "gpu-fit.png", "time-cost.png", "plan-options.csv"} <= names
    md = (out / "report.md").read_text()
    assert f"`peftcalc report --model gpt2 --method full --method lora --gpu t4 --gpu a100-80gb --out {out}`" in md
    fit = pd.read_csv(out / "gpu-fit.csv")
    assert set(fit["gpu"]) == {"t4", "a100-80gb"} and set(fit["method"]) == {"full", "lora"}


def test_cli_validation_report(tmp_path, results_dir):
    out = tmp_path / "val"
    res = CliRunner().invoke(main, ["report", "--results", str(results_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    worst = pd.read_csv(out / "worst-runs.csv")
    assert worst.loc[0, "peak_error_percent"] == -25.0
    assert (out / "predicted-vs-measured.png").stat().st_size > 10_000


@pytest.mark.parametrize("args,message", [
    (["--model", "gpt2"], "give --out"),
    (["--results", ".", "--model", "gpt2", "--out", "x"], "takes no model"),
    (["--all", "--model", "gpt2"], "drop --model"),
    (["--model", "gpt2", "--tasks", "0", "--out", "x"], "--tasks"),
])
def test_cli_errors(tmp_path, args, message):
    res = CliRunner().invoke(main, ["report", *args])
    assert res.exit_code != 0 and message in res.output, res.output


def test_cli_count_text():
    from peftcalc.cli.report import _count_text

    assert _count_text(7_000_000_000) == "7e9"
    assert _count_text(6_700_000_000) == "6.7e9"
    assert _count_text(6_738_415_616) == "6738415616"
    assert _count_text(500) == "500"


def test_size_fmt_scales_small_files():
    from peftcalc.units import Unit

    f = page.size_fmt(Unit.GB)
    assert [f(v) for v in (512, 327_680, 16_777_216, 28 * 10**9, 280 * 10**9)] == \
        ["512 B", "328 kB", "16.8 MB", "28 GB", "280 GB"]
    assert page.size_fmt(Unit.GiB)(3 * 2**20) == "3 MiB"


def test_an_empty_table_says_none(seed_estimate):
    r = small_report(seed_estimate)
    r.sections[0].items.append(page.Table("empty", "Nothing failed", pd.DataFrame({"a": []})))
    files = page.render_files(r)
    assert "### Nothing failed\n\nNone.\n" in files["report.md"].decode()
    assert "<h3>Nothing failed</h3>\n<p>None.</p>" in files["index.html"].decode()
    assert files["empty.csv"] == b"a\n"
