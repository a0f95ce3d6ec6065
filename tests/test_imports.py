"""The package's import graph: no module imports another that imports it back (directly or around a longer
loop), and the estimate path stays free of torch, numpy, pandas and matplotlib.

The graph is read from the source with `ast` (every `import` and `from ... import`, at module level or inside a
function), so a cycle hidden in a function-level import counts too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "peftcalc"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports (a `from pkg import mod` names the module when it is one)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    g = graph()
    assert "peftcalc.estimate" in g["peftcalc.cli.estimate"]
    assert "peftcalc.results.record" in g["peftcalc.results.files"]


def test_no_module_imports_one_that_imports_it_back():
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_a_cycle_would_be_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


HEAVY = ("torch", "numpy", "pandas", "matplotlib", "transformers", "peft")
QLORA_FILE = Path(__file__).resolve().parent / "data" / "configs" / "axolotl" / "llama3-8b-qlora.yml"


@pytest.mark.parametrize("argv", [["estimate", "--params", "7e9", "--rank", "8"],
                                  ["estimate", "--model", "llama-2-7b", "--method", "lora"],
                                  ["plan", "--params", "7e9", "--method", "lora", "--gpu", "a100-80gb"],
                                  ["estimate", "--from", str(QLORA_FILE)],
                                  ["check", str(QLORA_FILE), "--gpu", "a100-80gb"]])
def test_the_estimate_path_imports_nothing_heavy(argv):
    code = ("import sys; from peftcalc.cli import main\n"
            "try:\n    main(%r, standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print('HEAVY:' + ','.join(m for m in %r if m in sys.modules))" % (argv, HEAVY))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1] == "HEAVY:", f"heavy imports on the estimate path: {out.stdout[-300:]}"
