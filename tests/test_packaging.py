"""The wheel carries every module and data file of the package (a folder without __init__.py, or a data file
outside package_data, once left the installed CLI broken). `.ci/run` also installs the wheel into a clean
environment with no extras and runs the core commands from there."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_data_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("peftcalc-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "peftcalc"], capture_output=True, text=True)
    files = [f for f in tracked.stdout.splitlines() if f.endswith((".py", ".json"))] if tracked.returncode == 0 \
        else [str(p.relative_to(ROOT)) for p in (ROOT / "peftcalc").rglob("*") if p.suffix in (".py", ".json")]
    assert len(files) > 100
    missing = [f for f in files if f not in names]
    assert not missing, f"not in the wheel: {missing[:10]}"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "peftcalc = peftcalc.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
