"""`peftcalc nodes`: the server types the planner counts GPUs in, with their links, host memory, prices, sources."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from peftcalc.cli.options import format_options, gpu_file_option

node_file_option = click.option("--node-file", "node_files", multiple=True, metavar="PATH",
                                help="A JSON file of node types (one object or a list) that adds to or overrides "
                                     "the catalogue (repeatable).")


def _gbps(v: int | None) -> str:
    return "-" if v is None else f"{v / 1e9:,.1f}"


def _dated(v: Any, date: str | None, fmt: str) -> str:
    return "-" if v is None else fmt.format(v) + (f" ({date})" if date else "")


@click.command("nodes")
@node_file_option
@gpu_file_option
@format_options
def nodes_cmd(node_files: tuple[str, ...], gpu_files: tuple[str, ...], as_json: bool, as_csv: bool) -> None:
    """The node catalogue: GPUs per server, link bandwidths each way per GPU, host memory, prices, sources.

    `peftcalc plan` counts GPUs in whole nodes of these types once past one node, times communication over
    their links and checks offloaded states against their host memory (`--node` chooses one per GPU).

    \b
    Examples:
      peftcalc nodes
      peftcalc nodes --json
      peftcalc nodes --node-file my-cluster.json
    """
    from peftcalc.errors import PeftcalcError
    from peftcalc.hardware.catalogue import catalogue_with
    from peftcalc.hardware.nodes import check_gpus_known, node_catalogue_with
    from peftcalc.render.text import table, to_csv

    if as_json and as_csv:
        raise PeftcalcError("--json and --csv are exclusive: choose one")
    nodes = node_catalogue_with(node_files)
    check_gpus_known(nodes, catalogue_with(gpu_files))
    ordered = sorted(nodes.values(), key=lambda n: n.id)
    if as_json:
        click.echo(json.dumps([asdict(n) for n in ordered], indent=2))
        return
    header = ["id", "gpu", "GPUs", "intra GB/s", "inter GB/s", "host link GB/s", "host memory", "buy", "rent"]
    rows = [[n.id, n.gpu, str(n.gpus_per_node), f"{_gbps(n.intra_node.bytes_per_s_per_gpu)} {n.intra_node.kind}",
             f"{_gbps(n.inter_node.bytes_per_s_per_gpu)} {n.inter_node.kind}",
             f"{_gbps(n.host_link.bytes_per_s_per_gpu)} {n.host_link.kind}",
             "-" if n.host_memory_bytes is None else f"{n.host_memory_bytes / 2**30:,.0f} GiB",
             _dated(n.purchase_usd, n.purchase_date, "${:,}"), _dated(n.rent_usd_per_hour, n.rent_date, "${:,.2f}/h")]
            for n in ordered]
    if as_csv:
        click.echo(to_csv(header, rows), nl=False)
        return
    out = [table(header, rows, align_left=2), "",
           "Bandwidths are bytes per second EACH WAY per GPU (vendors' bidirectional figures halved); '-' = not "
           "sourced: the planner does not span nodes without an inter-node figure.", "", "Sources"]
    for n in ordered:
        out.append(f"  {n.id}: {n.source}")
        for label, link in (("intra-node", n.intra_node), ("inter-node", n.inter_node), ("host link", n.host_link)):
            out.append(f"    {label}: {link.source}" + (f" - {link.note}" if link.note else ""))
        out.append(f"    host memory: {n.host_memory_source or '-'}")
        out.append(f"    purchase: {n.purchase_source or '-'}")
        out.append(f"    rent: {n.rent_source or '-'}")
    click.echo("\n".join(out))
