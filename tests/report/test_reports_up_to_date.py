"""The committed example reports (reports/) are up to date with the code: each is regenerated into a
temporary folder and its tables (CSV) must equal the committed ones byte for byte. CSVs hold only what the
code computes from committed inputs (catalogues, bench/results/), nothing from the machine that runs
this (no dates, versions or paths), so they compare exactly on a fresh machine. Images and pages are not
compared (fonts and library versions move pixels); their presence is.

On a failure, regenerate them all with `peftcalc report --all` and commit reports/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from peftcalc.cli.report import EXAMPLES, example_report
from peftcalc.report.page import csv_bytes

REPO = Path(__file__).resolve().parents[2]
REPORTS = REPO / "reports"
FIX = "regenerate with `peftcalc report --all` (from the repository root) and commit reports/"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXAMPLES))
def test_committed_report_matches_the_code(name, tmp_path, monkeypatch):
    committed = REPORTS / name
    assert (committed / "index.html").is_file() and (committed / "report.md").is_file(), \
        f"reports/{name} is missing: {FIX}"
    monkeypatch.chdir(REPO)  # the examples name their inputs relative to the repository root
    report = example_report(name, tmp_path)  # assembled exactly as `--all` does; only the tables are rendered
    fresh = {f"{t.name}.csv": csv_bytes(t.frame) for t in report.tables()}
    old = {p.name for p in committed.glob("*.csv")}
    assert set(fresh) == old, f"reports/{name} has other tables than the code makes ({sorted(old ^ set(fresh))}): {FIX}"
    stale = [n for n in sorted(fresh) if (committed / n).read_bytes() != fresh[n]]
    assert not stale, f"reports/{name}: {', '.join(stale)} differ from what the code makes now: {FIX}"
    pngs = {f"{p.name}.png" for p in report.plots()}
    assert pngs == {p.name for p in committed.glob("*.png")}, f"reports/{name} has other figures: {FIX}"


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_committed_report_links_resolve(name):
    """Every image and CSV that report.md links to is in the folder, and the page embeds every image."""
    committed = REPORTS / name
    if not committed.is_dir():
        pytest.skip(f"reports/{name} is missing (the test above says so)")
    md = (committed / "report.md").read_text()
    links = re.findall(r"\]\(([^)#]+)\)", md)
    assert links
    for link in links:
        assert (committed / link).is_file(), f"reports/{name}/report.md links to a missing {link}"
    html = (committed / "index.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == len(list(committed.glob("*.png")))
    assert not re.search(r'(src|href)="https?://', html)


def test_reports_stay_small():
    sizes = [p.stat().st_size for p in REPORTS.rglob("*") if p.is_file()]
    assert sum(sizes) < 3_000_000, f"reports/ holds {sum(sizes):,} bytes"
    assert max(sizes, default=0) < 600_000
