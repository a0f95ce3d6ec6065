"""A report seen in a real browser: headless Chromium opens index.html from disk, takes a screenshot at a
desktop and a phone width, and the screenshot must show the figures.

How "shows the figures" is checked: the page itself is drawn only in greys (text, tables, links), so every
coloured pixel of the screenshot comes from an embedded image. The screenshot must be the size asked, not
blank, hold as many separate coloured bands as the page has images, and its coloured area must match the
coloured area of the PNGs scaled to the width the page gives them. A broken or missing image, an image
drawn at the wrong size, or a page that did not render all fail.

Set PEFTCALC_SCREENSHOTS=DIR to keep the screenshots (default: pytest's temporary folder).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PIL = pytest.importorskip("PIL.Image")


def _chromium() -> str | None:
    for name in (os.environ.get("PEFTCALC_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM = _chromium()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found: install Debian's `chromium` "
                                 "package (.ci/run does) or set PEFTCALC_CHROMIUM to a Chromium binary")]

DESKTOP = (1280, 16000)
PHONE = (412, 20000)
COLOURFUL = 40  # max - min over RGB: greys (page) are below, plot colours above


def screenshot(html: Path, out: Path, size: tuple[int, int]) -> np.ndarray:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--hide-scrollbars", "--force-device-scale-factor=1",
           f"--screenshot={out}", f"--window-size={size[0]},{size[1]}", html.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.exists(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    with PIL.open(out) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def colourful(rgb: np.ndarray) -> np.ndarray:
    return (rgb.max(axis=2) - rgb.min(axis=2)) > COLOURFUL


def bands(mask: np.ndarray, min_pixels: int = 3, max_gap: int = 90) -> list[tuple[int, int]]:
    """Vertical runs of rows with coloured pixels, runs closer than max_gap merged."""
    rows = np.flatnonzero(mask.sum(axis=1) >= min_pixels)
    out: list[tuple[int, int]] = []
    for r in rows:
        if out and r - out[-1][1] <= max_gap:
            out[-1] = (out[-1][0], r)
        else:
            out.append((r, r))
    return [b for b in out if b[1] - b[0] >= 20]  # a figure is taller than a stray line


def embedded_images(report: Path) -> list[Path]:
    html = (report / "index.html").read_text()
    names = re.findall(r'<img src="data:image/png;base64,[^"]*" alt="[^"]*" data-name="([^"]+)"', html)
    return [report / f"{n}.png" for n in names]


def expected_colour_pixels(pngs: list[Path], content_width: int) -> float:
    """Coloured pixels the images should show when scaled to fit `content_width` (never enlarged)."""
    total = 0.0
    for p in pngs:
        with PIL.open(p) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
        scale = min(1.0, content_width / rgb.shape[1])
        total += colourful(rgb).sum() * scale * scale
    return total


def check(report: Path, shots: Path, label: str, size: tuple[int, int], content_width: int) -> Path:
    out = shots / f"{label}-{size[0]}x{size[1]}.png"
    rgb = screenshot(report / "index.html", out, size)
    assert rgb.shape[:2] == (size[1], size[0])
    drawn = np.flatnonzero((rgb != rgb[-1, -1]).any(axis=2).any(axis=1))  # rows that differ from the background
    assert len(drawn) and rgb[: drawn[-1] + 1].std() > 20, "blank screenshot"
    pngs = embedded_images(report)
    assert pngs, "the page embeds no image"
    mask = colourful(rgb)
    found = bands(mask)
    assert len(found) >= len(pngs), f"{len(found)} coloured bands for {len(pngs)} images: {found}"
    last = found[-1][1]
    assert last < size[1] - 50, "the page is taller than the screenshot: raise its height"
    expected = expected_colour_pixels(pngs, content_width)
    ratio = mask.sum() / expected
    assert 0.75 < ratio < 1.3, f"coloured area {mask.sum():,} px vs {expected:,.0f} px expected from the images"
    return out


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = os.environ.get("PEFTCALC_SCREENSHOTS")
    if d:
        Path(d).mkdir(parents=True, exist_ok=True)
        return Path(d)
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def fresh_report(tmp_path_factory) -> Path:
    """A model report made now, by the command, with every section (fit matrix, time and cost too)."""
    from click.testing import CliRunner

    from peftcalc.cli import main

    out = tmp_path_factory.mktemp("browser") / "llama-2-7b"
    res = CliRunner().invoke(main, ["report", "--model", "llama-2-7b", "--gpu", "rtx-4090", "--gpu", "l40s",
                                    "--gpu", "a100-80gb", "--gpu", "h100-80gb", "--gpu", "h200", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


# main's max-width 1180 px less 2 x 16 px padding, less the figure's 2 x (1 px border + 4.8 px padding)
DESKTOP_CONTENT = 1180 - 32 - 12
# a 412 px phone: 2 x 9 px padding (0.6rem of 15 px) and the figure's frame
PHONE_CONTENT = 412 - 18 - 12


def test_desktop_shows_every_figure(fresh_report, shots):
    out = check(fresh_report, shots, "fresh-llama-2-7b-desktop", DESKTOP, DESKTOP_CONTENT)
    print(f"screenshot: {out}")


def test_phone_shows_every_figure_shrunk_to_fit(fresh_report, shots):
    out = check(fresh_report, shots, "fresh-llama-2-7b-phone", PHONE, PHONE_CONTENT)
    # nothing wider than the phone: the right edge column holds no part of a figure
    rgb = np.asarray(PIL.open(out).convert("RGB"), dtype=np.int16)
    assert colourful(rgb[:, -3:]).sum() == 0, "a figure overflows the phone's width"


@pytest.mark.parametrize("name", ["seed-7b", "llama-2-7b", "llama-3.1-70b", "validation"])
def test_committed_report_renders(name, shots):
    report = REPO / "reports" / name
    if not (report / "index.html").exists():
        pytest.skip(f"reports/{name} is not generated (peftcalc report --all)")
    check(report, shots, f"committed-{name}-desktop", DESKTOP, DESKTOP_CONTENT)
