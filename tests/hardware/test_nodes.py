"""The node catalogue: every file loads and validates, names a known GPU and a known link kind; user files fail with
the file, entry and field named; the catalogue carries no number "from memory"; `peftcalc nodes`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from peftcalc.cli import main
from peftcalc.errors import PeftcalcError
from peftcalc.hardware.catalogue import GPU_DIR, PRICE_WINDOW, all_gpus, get_gpu, gpu_ids
from peftcalc.hardware.nodes import (NETWORKS_FILE, NODE_DIR, all_nodes, generic_node, get_node, link_kinds,
                                     load_node_file, node_catalogue_with, node_for)

HARDWARE_FILES = sorted(GPU_DIR.glob("*.json")) + sorted(NODE_DIR.glob("*.json")) + [NETWORKS_FILE]
# Words that mark a number recalled rather than read from a source (the staged data used them; none may remain).
UNSOURCED = re.compile(r"from memory|as remembered|not re-read in this session \(medium|typical build", re.I)


def test_every_node_file_loads_names_a_gpu_and_matches_its_file():
    nodes = all_nodes()
    assert len(nodes) >= 18
    for node in nodes:
        assert (NODE_DIR / f"{node.id}.json").exists()
        assert node.gpu in gpu_ids(), node.id
        assert node.gpus_per_node >= 1 and node.source
        for link in (node.intra_node, node.inter_node, node.host_link):
            assert link.kind in link_kinds() and link.source, node.id
            assert link.bytes_per_s_per_gpu is None or link.bytes_per_s_per_gpu > 0


def test_every_built_in_node_reloads_as_a_user_file():
    for path in sorted(NODE_DIR.glob("*.json")):
        (node,) = load_node_file(path)
        assert node == get_node(path.stem)


@pytest.mark.parametrize("path", HARDWARE_FILES, ids=lambda p: p.name)
def test_no_number_is_from_memory(path: Path):
    """The staged data marked recalled numbers; each was re-sourced or nulled with the reason (see ARCHITECTURE)."""
    assert not UNSOURCED.search(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", sorted(GPU_DIR.glob("*.json")) + sorted(NODE_DIR.glob("*.json")),
                         ids=lambda p: p.name)
def test_prices_are_dated_and_old_ones_say_why(path: Path):
    d = json.loads(path.read_text(encoding="utf-8"))
    for kind in ("rent", "purchase"):
        price, date, source = d[f"{kind}_usd" if kind == "purchase" else "rent_usd_per_hour"], d[f"{kind}_date"], \
            d[f"{kind}_source"]
        if price is None:
            continue
        assert date and source, f"{path.name}: {kind} price without a date or source"
        if date < PRICE_WINDOW[0]:
            assert "window" in source, f"{path.name}: {kind} price of {date} does not say why it is older"


def test_link_bandwidths_are_each_way_halves_of_vendor_figures():
    """NVIDIA quotes NVLink per GPU as a bidirectional total (H100 SXM 900 GB/s: the GPU file); a node stores half."""
    h100 = get_node("hgx-h100-8")
    assert h100.intra_node.bytes_per_s_per_gpu * 2 == get_gpu("h100-80gb").interconnect_bytes_per_s
    assert h100.inter_node.bytes_per_s_per_gpu == 400 * 10**9 // 8  # one 400 Gb/s NDR NIC per GPU


def test_node_for_prefers_a_network_then_the_largest_domain():
    assert node_for(get_gpu("h100-80gb")).id == "hgx-h100-8"
    assert node_for(get_gpu("gb200")).id == "gb200-nvl72"  # the 72-GPU NVLink domain before its 4-GPU trays
    assert node_for(get_gpu("l40s")).id == "pcie-l40s-4"  # the one with a sourced network between nodes


def test_a_gpu_without_a_node_gets_a_stated_single_node():
    for gpu in all_gpus():
        node = node_for(gpu)
        if any(n.gpu == gpu.id for n in all_nodes()):
            assert not node.assumed
            continue
        assert node.assumed and not node.multi_node and "ASSUMED" in node.notes
        assert node.gpus_per_node == (1 if gpu.vendor == "apple" else 8)
    rtx = generic_node(get_gpu("rtx-4090"))
    assert rtx.intra_node.bytes_per_s_per_gpu == get_gpu("rtx-4090").interconnect_bytes_per_s // 2


def _write(tmp_path: Path, obj) -> Path:
    f = tmp_path / "nodes.json"
    f.write_text(json.dumps(obj))
    return f


GOOD = {"id": "my-box", "name": "My box", "gpu": "rtx-4090", "gpus_per_node": 4,
        "intra_node": {"kind": "pcie4", "bytes_per_s_per_gpu": 25 * 10**9},
        "inter_node": {"kind": "ethernet-100g", "bytes_per_s_per_gpu": 3 * 10**9},
        "host_link": {"kind": "pcie4-x16", "bytes_per_s_per_gpu": 25 * 10**9}}


def test_a_user_node_adds_to_the_catalogue(tmp_path):
    nodes = node_catalogue_with([_write(tmp_path, GOOD)])
    assert nodes["my-box"].multi_node and nodes["my-box"].gpus_per_node == 4
    assert node_for(get_gpu("rtx-4090"), nodes).id == "my-box"


@pytest.mark.parametrize("change, message", [
    ({"gpus_per_node": 0}, "'gpus_per_node' must be positive"),
    ({"gpu_per_node": 4}, "unknown field 'gpu_per_node'; did you mean 'gpus_per_node'?"),
    ({"intra_node": {"kind": "nvlink9", "bytes_per_s_per_gpu": 1}}, "unknown link kind 'nvlink9'"),
    ({"inter_node": {"kind": "none"}}, "missing required field 'bytes_per_s_per_gpu'"),
    ({"host_link": {"kind": "pcie4-x16", "bytes_per_s_per_gpu": 2.5e10}}, "must be an integer or null"),
    ({"id": "My Box"}, "must be a short lower-case name"),
    ({"purchase_date": "2026"}, "must be YYYY-MM"),
])
def test_bad_user_nodes_name_the_field(tmp_path, change, message):
    with pytest.raises(PeftcalcError, match=re.escape(message)):
        load_node_file(_write(tmp_path, {**GOOD, **change}))


def test_bad_node_files(tmp_path):
    with pytest.raises(PeftcalcError, match="cannot read node file"):
        load_node_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(PeftcalcError, match="not valid JSON"):
        load_node_file(bad)
    with pytest.raises(PeftcalcError, match="the list of nodes is empty"):
        load_node_file(_write(tmp_path, []))


def test_nodes_command(tmp_path):
    r = CliRunner().invoke(main, ["nodes"])
    assert r.exit_code == 0, r.output
    for text in ("hgx-h100-8", "450.0 nvlink4-nvswitch", "50.0 infiniband-ndr", "EACH WAY", "Sources"):
        assert text in r.output
    r = CliRunner().invoke(main, ["nodes", "--json", "--node-file", str(_write(tmp_path, GOOD))])
    assert r.exit_code == 0 and any(n["id"] == "my-box" for n in json.loads(r.stdout))
    r = CliRunner().invoke(main, ["nodes", "--node-file", str(_write(tmp_path, {**GOOD, "gpu": "nope"}))])
    assert r.exit_code == 1 and "names GPU 'nope'" in r.output


def test_plan_takes_a_node_and_refuses_a_stray_one(tmp_path):
    r = CliRunner().invoke(main, ["plan", "--model", "gpt2", "--method", "lora", "--gpu", "gb200", "--node",
                                  "gb200-compute-tray", "--json"])
    assert r.exit_code == 0, r.output
    assert {o["node"] for o in json.loads(r.stdout)["options"]} == {"gb200-compute-tray"}
    r = CliRunner().invoke(main, ["plan", "--model", "gpt2", "--gpu", "h100-80gb", "--node", "dgx-b200"])
    assert r.exit_code == 1 and "holds b200, which is not among the GPUs planned" in r.output
    r = CliRunner().invoke(main, ["plan", "--model", "gpt2", "--gpu", "h100-80gb", "--node", "hgx-h999"])
    assert r.exit_code == 1 and "unknown node 'hgx-h999'" in r.output
