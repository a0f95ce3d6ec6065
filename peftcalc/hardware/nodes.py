"""The node catalogue: one JSON file per server type under nodes/, referencing a GPU of gpus/.

A node is what people buy and rent at scale: GPUs per node, the link between GPUs inside it (NVLink, xGMI, PCIe),
the link between nodes per GPU (InfiniBand, RoCE, Ethernet), the host link each GPU has to its CPU (PCIe,
NVLink-C2C), host memory, CPU and prices, each with its source. Bandwidths are bytes per second EACH WAY per GPU
(vendors quote NVLink and xGMI as bidirectional totals: the files halve them and say so); None where no source
was found, and then the planner does not place a run across nodes of that type (stated in its output).

`link kinds` are the tiers of networks.json, which says what each is. A GPU that no node file names gets a
`generic_node`: one node of up to 8 GPUs over the GPU's own interconnect, no network between nodes, every
field marked as an assumption.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from os import PathLike
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

from peftcalc.errors import PeftcalcError
from peftcalc.hardware.catalogue import Gpu
from peftcalc.hardware.schema import check_dates, check_fields, check_id, entries, entry_label, read_json

NODE_DIR = Path(__file__).with_name("nodes")
NETWORKS_FILE = Path(__file__).with_name("networks.json")
StrPath = Union[str, "PathLike[str]"]


@dataclass(frozen=True)
class Link:
    kind: str  # a tier of networks.json ("nvlink4-nvswitch", "infiniband-ndr", "pcie5-x16", "none", ...)
    bytes_per_s_per_gpu: int | None  # each way, per GPU; None: not sourced
    source: str
    note: str = ""
    nics_per_node: int | None = None  # inter-node links only


@dataclass(frozen=True)
class Node:
    id: str
    name: str
    gpu: str  # a GPU id of the catalogue
    gpus_per_node: int
    intra_node: Link
    inter_node: Link
    host_link: Link
    host_memory_bytes: int | None
    host_memory_source: str
    cpu: str
    cpu_cores: int | None
    purchase_usd: int | None  # the whole node
    purchase_date: str | None
    purchase_source: str
    rent_usd_per_hour: float | None  # the whole node
    rent_date: str | None
    rent_source: str
    source: str
    notes: str = ""
    assumed: bool = False  # a generic node made up for a GPU no node file names

    @property
    def multi_node(self) -> bool:
        """Whether runs may span several nodes of this type (a sourced network between them)."""
        return self.inter_node.bytes_per_s_per_gpu is not None


_LINK_SCHEMA = {
    "kind": ((str,), False, True, False),
    "bytes_per_s_per_gpu": ((int,), True, True, True),
    "nics_per_node": ((int,), True, False, True),
    "source": ((str,), False, False, False),
    "note": ((str,), False, False, False),
}
_SCHEMA = {
    "id": ((str,), False, True, False),
    "name": ((str,), False, True, False),
    "gpu": ((str,), False, True, False),
    "gpus_per_node": ((int,), False, True, True),
    "intra_node": ((dict,), False, True, False),
    "inter_node": ((dict,), False, True, False),
    "host_link": ((dict,), False, True, False),
    "host_memory_bytes": ((int,), True, False, True),
    "host_memory_source": ((str,), False, False, False),
    "cpu": ((str,), False, False, False),
    "cpu_cores": ((int,), True, False, True),
    "purchase_usd": ((int,), True, False, False),
    "purchase_date": ((str,), True, False, False),
    "purchase_source": ((str,), False, False, False),
    "rent_usd_per_hour": ((int, float), True, False, False),
    "rent_date": ((str,), True, False, False),
    "rent_source": ((str,), False, False, False),
    "source": ((str,), False, False, False),
    "notes": ((str,), False, False, False),
}
_LINK_FIELDS = ("intra_node", "inter_node", "host_link")


@lru_cache(maxsize=1)
def link_kinds() -> dict[str, dict[str, Any]]:
    """The interconnect tiers of networks.json by id, plus "none" and "unspecified" (no link, or none sourced)."""
    data = json.loads(NETWORKS_FILE.read_text(encoding="utf-8"))
    tiers = {t["id"]: t for t in data["tiers"]}
    tiers.update({k: {"id": k, "name": k} for k in ("none", "unspecified", "pcie4", "pcie5", "xgmi")})
    return tiers


def _link(raw: Any, field: str, label: str, strict: bool) -> Link:
    where = f"{label}: field {field!r}"
    values = check_fields(raw, _LINK_SCHEMA, where, strict=False, what="link")
    if strict and not values["source"]:
        raise PeftcalcError(f"{where}: missing required field 'source'")
    if values["kind"] not in link_kinds():
        raise PeftcalcError(f"{where}: unknown link kind {values['kind']!r}; known: {', '.join(sorted(link_kinds()))}")
    return Link(values["kind"], values["bytes_per_s_per_gpu"], values["source"], values["note"], values["nics_per_node"])


def _validate(raw: Any, origin: str, index: int | None, *, strict: bool) -> Node:
    label = f"{origin}: {entry_label(raw, index)}"
    values = check_fields(raw, _SCHEMA, label, strict=strict, what="node")
    check_id(values["id"], label, "hgx-h100-8")
    check_dates(values, ("rent_date", "purchase_date"), label)
    for field in _LINK_FIELDS:
        values[field] = _link(values[field], field, label, strict)
    if values["rent_usd_per_hour"] is not None:
        values["rent_usd_per_hour"] = float(values["rent_usd_per_hour"])
    return Node(**values)


@lru_cache(maxsize=1)
def _builtin() -> dict[str, Node]:
    nodes = {}
    for path in sorted(NODE_DIR.glob("*.json")):
        node = _validate(read_json(path, "node"), str(path), None, strict=True)
        if node.id != path.stem:
            raise RuntimeError(f"{path}: id {node.id!r} does not match the file name")
        nodes[node.id] = node
    return nodes


def all_nodes() -> list[Node]:
    """The built-in node types, sorted by id."""
    return list(_builtin().values())


def load_node_file(path: StrPath) -> list[Node]:
    """The nodes in a user's JSON file: one object, or a list of them. Fails with the file, entry and field."""
    p = Path(path)
    nodes = [_validate(item, str(p), i, strict=False) for item, i in entries(read_json(p, "node"), p, "node")]
    if len({n.id for n in nodes}) != len(nodes):
        raise PeftcalcError(f"{p}: a node id appears more than once")
    return nodes


def node_catalogue_with(files: Iterable[StrPath]) -> dict[str, Node]:
    """The built-in nodes plus those in `files`; a user entry replaces one with the same id."""
    nodes = dict(_builtin())
    for path in files:
        for node in load_node_file(path):
            nodes[node.id] = node
    return nodes


def check_gpus_known(nodes: Mapping[str, Node], gpus: Mapping[str, Gpu]) -> None:
    """Every node names a GPU of the catalogue (user files included)."""
    for node in nodes.values():
        if node.gpu not in gpus:
            raise PeftcalcError(f"node {node.id!r} names GPU {node.gpu!r}, which is not in the GPU catalogue "
                                "(`peftcalc gpus`; add it with --gpu-file)")


def get_node(node_id: str, nodes: Mapping[str, Node] | None = None) -> Node:
    catalogue = _builtin() if nodes is None else nodes
    key = node_id.strip().lower()
    if key in catalogue:
        return catalogue[key]
    close = [k for k in catalogue if key and key in k][:5]
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(catalogue))}"
    raise PeftcalcError(f"unknown node {node_id!r}{hint} (`peftcalc nodes` lists them)")


def node_for(gpu: Gpu, nodes: Mapping[str, Node] | None = None) -> Node:
    """The node type the planner assumes for `gpu`: among the catalogue's nodes of this GPU, one with a sourced
    network between nodes first, then the most GPUs per node (the largest NVLink domain: an NVL72 rack before
    its trays), then by id; a generic one (see `generic_node`) when no file names the GPU. `--node` chooses."""
    catalogue = _builtin() if nodes is None else nodes
    mine = [n for n in catalogue.values() if n.gpu == gpu.id]
    if not mine:
        return generic_node(gpu)
    return min(mine, key=lambda n: (not n.multi_node, -n.gpus_per_node, n.id))


GENERIC_GPUS_PER_NODE = 8


def generic_node(gpu: Gpu) -> Node:
    """An ASSUMED node for a GPU no node file names: up to 8 GPUs (1 for Apple machines) joined by the GPU's own
    interconnect (half its bidirectional figure each way), PCIe 4.0 x16 to the host, no network between nodes."""
    per_node = 1 if gpu.vendor == "apple" else GENERIC_GPUS_PER_NODE
    each_way = gpu.interconnect_bytes_per_s // 2 if gpu.interconnect_bytes_per_s else None
    why = "ASSUMED: no node file names this GPU"
    return Node(
        id=f"{gpu.id}-generic", name=f"{per_node} x {gpu.name} (assumed)", gpu=gpu.id, gpus_per_node=per_node,
        intra_node=Link("unspecified", each_way, f"{why}; half of the GPU's interconnect figure ({gpu.interconnect})"),
        inter_node=Link("none", None, f"{why}; no network between nodes assumed (single node only)"),
        host_link=Link("pcie4-x16", 31_500_000_000, f"{why}; PCIe 4.0 x16 assumed (31.5 GB/s each way)"),
        host_memory_bytes=None, host_memory_source=why, cpu="", cpu_cores=None,
        purchase_usd=None, purchase_date=None, purchase_source=why, rent_usd_per_hour=None, rent_date=None,
        rent_source=why, source=gpu.source, notes=why, assumed=True)
