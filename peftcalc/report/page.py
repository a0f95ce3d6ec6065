"""Reports as files: report.md (tables + image links), one self-contained index.html (images embedded as
data URIs, no network, readable on a phone), a PNG per figure and a CSV per table.

A report is assembled from DataFrames (frames.py) and figures (figures.py) into a `Report`, rendered to
bytes in memory, and only then written, atomically: into a temporary folder beside the target, which
replaces the target by renames, so a crash never leaves half a report nor destroys the previous one.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import pandas as pd
from matplotlib.figure import Figure

from peftcalc.atomic import check_folder
from peftcalc.errors import InputError
from peftcalc.render.text import fmt_bytes, fmt_count, fmt_percent
from peftcalc.units import Unit

REPORT_FILES = ("report.md", "index.html")
_OWN_SUFFIXES = (".md", ".html", ".png", ".csv")


@dataclass
class Table:
    name: str  # file stem: <name>.csv
    title: str
    frame: pd.DataFrame  # the data, written unformatted to the CSV
    display: pd.DataFrame | None = None  # formatted strings for reading; default: the frame itself
    caption: str = ""
    show: bool = True  # False: only linked as CSV (a long table nobody reads on a page)

    def shown(self) -> pd.DataFrame:
        return self.frame if self.display is None else self.display


@dataclass
class Plot:
    name: str  # file stem: <name>.png
    title: str
    figure: Figure
    caption: str = ""


Item = Union[Table, Plot]


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    anchor: str = ""

    def __post_init__(self) -> None:
        if not self.anchor:
            self.anchor = _slug(self.title)


@dataclass
class Report:
    title: str
    summary: list[str]
    sections: list[Section]
    assumptions: Mapping[str, str]
    command: str  # the command that regenerates this report

    def tables(self) -> list[Table]:
        return [i for s in self.sections for i in s.items if isinstance(i, Table)]

    def plots(self) -> list[Plot]:
        return [i for s in self.sections for i in s.items if isinstance(i, Plot)]


def _slug(text: str) -> str:
    out = "".join(c.lower() if c.isalnum() else "-" for c in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")


# ---- formatting (the numbers people read; the CSVs keep the exact integers) ------------------------

def format_frame(df: pd.DataFrame, formats: Mapping[str, Callable[[Any], str]],
                 rename: Mapping[str, str] | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Strings for display: each column in `formats` through its formatter (missing values as "-"),
    the others as str; then the chosen `columns`, renamed."""
    out = pd.DataFrame(index=df.index)
    for c in (columns if columns is not None else df.columns):
        f = formats.get(c, str)
        out[c] = [("-" if _missing(v) else f(v)) for v in df[c]]
    return out.rename(columns=dict(rename or {})).reset_index(drop=True)


def _missing(v: Any) -> bool:
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def bytes_fmt(unit: Unit) -> Callable[[Any], str]:
    return lambda v: fmt_bytes(int(v), unit)


def size_fmt(unit: Unit) -> Callable[[Any], str]:
    """Bytes in the unit's own scale (GB, MB, kB; GiB, MiB, KiB): for sizes that span many orders, like
    checkpoints, where 0.000328 GB reads worse than 328 kB."""
    base = 1000 if unit is Unit.GB else 1024
    names = ("kB", "MB", "GB") if unit is Unit.GB else ("KiB", "MiB", "GiB")

    def f(v: Any) -> str:
        n = int(v)
        for power, name in ((3, names[2]), (2, names[1]), (1, names[0])):
            if abs(n) >= base**power:
                return f"{n / base**power:,.3g} {name}" if n < 100 * base**power else f"{n / base**power:,.0f} {name}"
        return f"{n:,} B"
    return f


def count_fmt(v: Any) -> str:
    return fmt_count(int(v))


def percent_fmt(v: Any) -> str:
    return fmt_percent(float(v))


def error_fmt(v: Any) -> str:
    return f"{float(v):+.2f} %"


def usd_fmt(v: Any) -> str:
    return f"${float(v):,.0f}" if float(v) >= 100 else f"${float(v):,.2f}"


def hours_fmt(v: Any) -> str:
    return f"{float(v):,.1f} h" if float(v) >= 10 else f"{float(v):,.2f} h"


# ---- Markdown ---------------------------------------------------------------------------------------

def _md_cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table; text columns left-aligned, numbers right-aligned."""
    cols = [str(c) for c in df.columns]
    align = ["---" if _texty(df[c]) else "--:" for c in df.columns]
    lines = ["| " + " | ".join(_md_cell(c) for c in cols) + " |", "|" + "|".join(align) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_md_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _texty(col: pd.Series) -> bool:
    """A column that reads as text (left-aligned): not all its values start like a number."""
    vals = [str(v) for v in col if str(v) not in ("-", "")]
    return not vals or not all(v[:1].isdigit() or v[:1] in "+-$x" and v[1:2].isdigit() for v in vals)


def render_markdown(report: Report) -> str:
    out = [f"# {report.title}", ""]
    out += [p + "\n" for p in report.summary]
    out.append(f"Regenerate: `{report.command}`\n")
    out.append("Contents: " + " · ".join(f"[{s.title}](#{s.anchor})" for s in report.sections) + "\n")
    for s in report.sections:
        out.append(f"## {s.title}\n")
        out += [p + "\n" for p in s.paragraphs]
        for item in s.items:
            out.append(f"### {item.title}\n")
            if isinstance(item, Table):
                if item.show and item.frame.empty:
                    out.append("None.\n")
                elif item.show:
                    out.append(markdown_table(item.shown()) + "\n")
                out.append(f"Data: [{item.name}.csv]({item.name}.csv)" + (f" — {item.caption}" if item.caption else "")
                           + "\n")
            else:
                out.append(f"![{item.title}]({item.name}.png)\n")
                if item.caption:
                    out.append(item.caption + "\n")
    out.append("## Assumptions\n")
    out.append(markdown_table(pd.DataFrame({"": list(report.assumptions), "assumed": list(report.assumptions.values())}))
               + "\n")
    return "\n".join(out)


# ---- HTML -------------------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1d1d1d; background: #fafafa; }
main { max-width: 1180px; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.6rem; margin: .4rem 0 .8rem; }
h2 { font-size: 1.3rem; margin-top: 2rem; border-bottom: 1px solid #d0d0d0; padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
p, li { max-width: 75ch; }
code { font-size: .9em; background: #ececec; padding: .1em .3em; border-radius: 3px; overflow-wrap: anywhere; }
a { color: #2b2b2b; text-decoration-thickness: 1px; }
nav ul { padding-left: 1.2rem; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; border: 1px solid #e0e0e0; background: #fff; }
table { border-collapse: collapse; font-size: .85rem; font-variant-numeric: tabular-nums; width: 100%; }
th, td { padding: .3rem .55rem; border-bottom: 1px solid #e6e6e6; white-space: nowrap; text-align: right; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.text, th.text { text-align: left; }
figure { margin: .5rem 0 1rem; background: #fff; border: 1px solid #e0e0e0; padding: .3rem; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption, .data { font-size: .85rem; color: #444; margin-top: .3rem; }
dl { display: grid; grid-template-columns: minmax(8rem, max-content) 1fr; gap: .2rem 1rem; font-size: .9rem; }
dt { font-weight: 600; } dd { margin: 0; overflow-wrap: anywhere; }
@media (max-width: 600px) {
  body { font-size: 15px; } main { padding: .6rem; } h1 { font-size: 1.3rem; }
  dl { grid-template-columns: 1fr; } dd { margin-bottom: .4rem; }
}
"""


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def html_table(df: pd.DataFrame) -> str:
    text = [_texty(df[c]) for c in df.columns]
    head = "".join(f'<th{" class=text" if t else ""}>{html.escape(str(c))}</th>' for c, t in zip(df.columns, text))
    rows = []
    for row in df.itertuples(index=False):
        rows.append("<tr>" + "".join(f'<td{" class=text" if t else ""}>{html.escape(str(v))}</td>'
                                     for v, t in zip(row, text)) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def render_html(report: Report, pngs: Mapping[str, bytes]) -> str:
    """One self-contained page: every image is a data: URI; no script, no stylesheet or font to fetch.
    The CSV links point at the files beside the page (the tables themselves are in the page)."""
    e = html.escape
    out = ["<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(report.title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>", "<main>",
           f"<h1>{e(report.title)}</h1>"]
    out += [f"<p>{e(p)}</p>" for p in report.summary]
    out.append(f"<p>Regenerate: <code>{e(report.command)}</code></p>")
    out.append("<nav><ul>" + "".join(f'<li><a href="#{s.anchor}">{e(s.title)}</a></li>' for s in report.sections)
               + '<li><a href="#assumptions">Assumptions</a></li></ul></nav>')
    for s in report.sections:
        out.append(f'<section id="{s.anchor}"><h2>{e(s.title)}</h2>')
        out += [f"<p>{e(p)}</p>" for p in s.paragraphs]
        for item in s.items:
            out.append(f"<h3>{e(item.title)}</h3>")
            if isinstance(item, Table):
                if item.show and item.frame.empty:
                    out.append("<p>None.</p>")
                elif item.show:
                    out.append(html_table(item.shown()))
                link = f'<a href="{e(item.name)}.csv">{e(item.name)}.csv</a>'
                out.append(f'<p class="data">Data: {link}' + (f" — {e(item.caption)}" if item.caption else "") + "</p>")
            else:
                out.append(f'<figure><img src="{_data_uri("image/png", pngs[item.name])}" alt="{e(item.title)}" '
                           f'data-name="{e(item.name)}"><figcaption>'
                           + (f"{e(item.caption)} " if item.caption else "")
                           + f'<a href="{e(item.name)}.png">{e(item.name)}.png</a> (full size)</figcaption></figure>')
        out.append("</section>")
    out.append('<section id="assumptions"><h2>Assumptions</h2><dl>')
    out += [f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in report.assumptions.items()]
    out += ["</dl></section>", "</main>", "</body>", "</html>", ""]
    return "\n".join(out)


# ---- files ------------------------------------------------------------------------------------------

def csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False, lineterminator="\n").encode("utf-8")


def render_files(report: Report) -> dict[str, bytes]:
    """Every file of the report, by name, in memory: report.md, index.html, <plot>.png, <table>.csv."""
    from peftcalc.report.figures import png_bytes

    names = [f"{i.name}.{'csv' if isinstance(i, Table) else 'png'}" for s in report.sections for i in s.items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"report items share file names: {', '.join(dupes)}")
    pngs = {p.name: png_bytes(p.figure) for p in report.plots()}
    csvs = {t.name: csv_bytes(t.frame) for t in report.tables()}
    files: dict[str, bytes] = {"report.md": render_markdown(report).encode("utf-8"),
                               "index.html": render_html(report, pngs).encode("utf-8")}
    files.update({f"{k}.png": v for k, v in pngs.items()})
    files.update({f"{k}.csv": v for k, v in csvs.items()})
    return files


def _is_report_dir(path: Path) -> bool:
    """An existing folder we may replace: empty, or holding only what a report writes."""
    entries = list(path.iterdir())
    if not entries:
        return True
    names = {e.name for e in entries}
    return (any(n in names for n in REPORT_FILES)
            and all(e.is_file() and e.suffix in _OWN_SUFFIXES for e in entries))


def check_out(out: str | os.PathLike[str]) -> Path:
    """The report folder `out`, if a report can be written there: not a file, not a folder of other files, and
    its parent creatable and writable. Checked before any work, so a bad --out fails at once, writing nothing."""
    target = Path(out)
    if target.exists() and not target.is_dir():
        raise InputError(f"--out {str(target)!r} is a file, not a folder")
    try:
        if target.is_dir() and not _is_report_dir(target):
            raise InputError(f"--out {str(target)!r} exists and holds files that are not a peftcalc report; "
                             "give a new or an existing report folder")
    except OSError as e:
        raise InputError(f"cannot write --out {str(target)!r}: {e.strerror or e}") from None
    try:
        check_folder(target.absolute().parent, "--out")  # where write_files makes its temporary folder
    except InputError as e:
        raise InputError(f"cannot write --out {str(target)!r}: {str(e).rsplit(': ', 1)[-1]}") from None
    return target


def write_files(files: Mapping[str, bytes], out: str | os.PathLike[str]) -> Path:
    """Write `files` as the folder `out`, atomically: all of them into a new temporary folder beside it,
    then swap it in by renames. An existing report folder is replaced only once the new one is complete;
    a folder that is not a report (other files in it) is never touched."""
    target = check_out(out)
    parent = target.absolute().parent
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=parent))
    except OSError as e:
        raise InputError(f"cannot write --out {str(target)!r}: {e.strerror or e}") from None
    try:
        _swap_in(files, tmp, target, parent)
    except OSError as e:
        raise InputError(f"cannot write --out {str(target)!r}: {e.strerror or e}") from None
    return target


def _swap_in(files: Mapping[str, bytes], tmp: Path, target: Path, parent: Path) -> None:
    """Fill the temporary folder, then rename it over `target` (the previous report kept until the swap)."""
    try:
        for name, data in files.items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"bad report file name {name!r}")
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if target.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            os.rmdir(old)
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)  # put the previous report back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_report(report: Report, out: str | os.PathLike[str]) -> Path:
    """Render every file in memory first (a failing figure leaves nothing behind), then write atomically."""
    return write_files(render_files(report), out)
