"""Cost of meshing a whole dataset, from this machine's measured rates (issue 23).

    python -m benchmarks.cost_model --graphene-info benchmarks/data/minnie65_graphene_info.json
    python -m benchmarks.cost_model --graphene-info INFO.json --hours 48 --store bigtable --json

Per layer of the dataset the graphene info describes: chunks, core-hours, peak task memory (what
raymesh's tasks ask Ray for: raymesh.placement, with the job template's memory budget), bytes the
shard caches hold in the object store while the layer runs, the cluster of kuberay/raycluster.yaml
nodes that finishes the run in a target wall time, the longest task beside PCG's 12-hour SQS lease,
and PCG's whole-shard task memory beside its layer-7 ceiling.

Every rate is read from the project's benchmark results (benchmarks/results/*.json), none is typed
in here:
- layer 2, seconds per voxel at the mesh mip: ``l2_rate`` (end to end, one worker);
- stitching, seconds per byte of child fragments: ``stitch_memory``'s streaming stitch of the
  biggest chunk of layers 3-5 (seconds over child-shard bytes);
- fragment bytes per voxel at each layer: ``stitch_memory`` (its top chunk covers the whole volume,
  so its child shards are all of layer 4; the shard-over-children ratio of each layer's biggest
  chunk carries that down to layers 2-3 and up past 5), over ``l2_rate``'s volume;
- graph reads per chunk: ``bigtable_vs_sqlite`` (Bigtable, in the tasks, over SQLite in process,
  which the two rates above already include);
- PCG's task memory per byte of child shards: ``stitch_memory``'s whole-shard mode (peak RSS).
The job template (configs/pcg_bigtable.yaml: memory budget, highmem layer) and the node groups
(kuberay/raycluster.yaml: CPUs and memory per node) come from the project's own files.
``ASSUMPTIONS`` says what the model takes for granted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TEMPLATE = REPO / "configs" / "pcg_bigtable.yaml"
MANIFEST = REPO / "kuberay" / "raycluster.yaml"
GiB = 2**30
PCG_LEASE_HOURS = 12.0  # PCG's meshing workers hold an SQS message this long; a longer task is handed out again
PCG_MAX_LAYER = 7  # minnie65's published meshes stop here: a task holds its chunk's child shards whole
PCG_L6_SHARD_BYTES = 765_877_565  # a byte offset inside one minnie65 layer-6 shard (../shared/spec/pcg-compat.md 7.2)
OBJECT_STORE_SHARE = 0.3  # Ray's default object store: 30% of the node's memory

ASSUMPTIONS = [
    "With --lod-chain: each layer's stitching time grows by the LOD chain's measured time over "
    "stitching's at that layer (benchmarks/results/lod_chain_full.json, layers 3-5 of the real volume); "
    "above layer 5, the layer-5 ratio.",
    "Rates are this machine's (2 cores, one task per core) on the real 512^3 volume at 8x8x40 nm; a "
    "voxel at the mesh mip costs the same time and yields the same fragment bytes whatever its size "
    "(minnie65 meshes at 32x32x40 nm, with more surface per voxel: likely an underestimate).",
    "Layer-2 time and fragment bytes scale with the voxels at the mesh mip; stitching time with the "
    "bytes of child fragments; one task per chunk, one CPU per task.",
    "Above the highest measured layer, a layer's fragments are its children's times the last measured "
    "shard-over-children ratio (every node stitched; the node limit only lowers bytes and time).",
    "The densest chunk holds the measured densest-over-mean share of its layer's bytes (the most "
    "measured on the real volume), which sets peak task memory and the longest task.",
    "Graph reads: the Bigtable emulator's time per chunk measured in tasks, layers above 4 as layer 4.",
    "Shard caches hold the layer below's shards while a layer runs, at most half the object store of "
    "the nodes that wrote them (raymesh's default cache budget; the object store is 30% of a node's "
    "memory, Ray's default), and none where the layer below's mean shard is over half the work a task "
    "may use (raymesh hands such shards to no cache: their readers read storage).",
    "Cluster size: nodes of each group of kuberay/raycluster.yaml (tasks per node: its CPUs, its memory "
    "over the tasks' request, its highmem units) such that the layers, one after the other, fit the "
    "target wall time with the smallest cluster at its biggest; a layer runs no more tasks than its "
    "chunks (times their parts), and takes no less than its longest task.",
]


def _load(results: Path, name: str) -> dict:
    path = results / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"cost_model: {path} is missing: run `python -m benchmarks.{name.split('_full')[0]}` "
                         f"and save its JSON line there") from None


@dataclass
class Rates:
    """What the model takes from benchmarks/results (see the module docstring)."""

    l2_seconds_per_voxel: float
    stitch_seconds_per_byte: float
    bytes_per_voxel: dict[int, float]  # layer -> fragment bytes of all its shards per mesh-mip voxel
    keep_ratio: float  # a layer's bytes over its children's, above the measured layers
    densest_share: float  # the densest chunk's bytes over its layer's mean
    read_seconds: dict[int, float]  # layer -> Bigtable graph reads per chunk beyond SQLite's
    pcg_bytes_per_child_byte: float  # PCG's whole-shard task: peak RSS per byte of child shards
    sources: dict[str, str] = field(default_factory=dict)
    # layer -> the LOD chain's time over full-resolution stitching's (``lod_chain``), when measured
    lod_over_stitch: dict[int, float] = field(default_factory=dict)

    def lod_ratio(self, layer: int) -> float:
        """What the LOD chain adds to a layer's stitching time; above the measured layers, the top one's."""
        if not self.lod_over_stitch:
            raise SystemExit("cost_model: --lod-chain needs benchmarks/results/lod_chain_full.json "
                             "(python -m benchmarks.lod_chain)")
        known = self.lod_over_stitch
        return known.get(layer, known[max(known)] if layer > max(known) else known[min(known)])

    @classmethod
    def from_results(cls, results: Path = RESULTS) -> "Rates":
        l2 = _load(results, "l2_rate_full")
        memory = _load(results, "stitch_memory_full")
        reads = _load(results, "bigtable_vs_sqlite_full")
        shape = l2["inputs"]["shape"]
        chunk = l2["inputs"]["chunk_size"]
        voxels = math.prod(shape)
        if list(memory["inputs"]["chunk"]) != list(chunk):
            raise SystemExit("cost_model: l2_rate and stitch_memory were measured on different chunkings")
        per_layer = {int(k): v for k, v in memory["figures"]["per_layer"].items()}
        top = max(per_layer)
        if per_layer[top]["layer_chunks"] != 1:
            raise SystemExit(f"cost_model: stitch_memory's layer {top} has more than one chunk; "
                             "its child shards are not the whole of layer {top - 1}")
        keep = {layer: row["stream"]["shard_bytes"] / row["child_shard_bytes"] for layer, row in per_layer.items()}
        totals = {top - 1: per_layer[top]["child_shard_bytes"], top: per_layer[top]["stream"]["shard_bytes"]}
        for layer in range(top - 1, min(per_layer) - 1, -1):  # down: children = shards / ratio
            totals[layer - 1] = totals[layer] / keep[layer]
        chunks = {layer: math.prod(-(-s // (c * 2 ** (layer - 2))) for s, c in zip(shape, chunk))
                  for layer in per_layer}
        densest = max(row["child_shard_bytes"] / (totals[layer - 1] / chunks[layer])
                      for layer, row in per_layer.items())
        seconds = sum(row["stream"]["seconds"] for row in per_layer.values())
        child = sum(row["child_shard_bytes"] for row in per_layer.values())
        in_tasks = reads["figures"]["bigtable_in_tasks"]
        in_process = reads["figures"]["graph_reads_in_process"]
        read_seconds = {}
        for layer in sorted(int(k) for k in in_tasks):
            sqlite = in_process.get(f"sqlite_layer{layer}", {}).get("ms_per_chunk_mean", 0.0)
            read_seconds[layer] = max(0.0, in_tasks[str(layer)]["graph_read_ms_per_chunk"] - sqlite) / 1000
        lod_over = {}
        if (results / "lod_chain_full.json").exists():
            lod = _load(results, "lod_chain_full")["figures"]["per_layer"]
            lod_over = {int(k): v["seconds"]["lod_part"] / v["seconds"]["full"] for k, v in lod.items()}
        whole = memory["figures"]["rss_mib"]["whole_shards"]
        pcg = max(whole[str(layer)] * 2**20 / row["child_shard_bytes"] for layer, row in per_layer.items())
        return cls(
            l2_seconds_per_voxel=1.0 / (l2["figures"]["end_to_end_mvox_per_s"] * 1e6 / l2["inputs"].get("workers", 1)),
            stitch_seconds_per_byte=seconds / child,
            bytes_per_voxel={layer: b / voxels for layer, b in sorted(totals.items())},
            keep_ratio=keep[top], densest_share=densest, read_seconds=read_seconds,
            pcg_bytes_per_child_byte=pcg, lod_over_stitch=lod_over,
            sources={"l2_rate": f"{l2['inputs']['volume']} {shape}, mip {l2['inputs']['mip']}",
                     "stitch_memory": memory["inputs"]["volume"], "bigtable_vs_sqlite": reads["inputs"]["store"]})

    def layer_bytes_per_voxel(self, layer: int) -> float:
        known = self.bytes_per_voxel
        if layer in known:
            return known[layer]
        if layer < min(known):
            raise ValueError(f"no fragment bytes measured for layer {layer}")
        return known[max(known)] * self.keep_ratio ** (layer - max(known))

    def graph_read_seconds(self, layer: int, store: str) -> float:
        if store != "bigtable":
            return 0.0
        return self.read_seconds.get(layer, self.read_seconds[max(self.read_seconds)])


@dataclass
class NodeGroup:
    name: str
    cpus: int
    memory: int  # bytes: Ray's memory resource, the container's limit
    highmem_units: float = 0.0

    @property
    def object_store(self) -> int:
        return int(self.memory * OBJECT_STORE_SHARE)

    def slots(self, request: int) -> int:
        """Tasks of ``request`` bytes one node runs at once."""
        n = min(self.cpus, self.memory // max(1, request))
        return int(min(n, self.highmem_units) if self.highmem_units else n)


def node_groups(manifest: Path = MANIFEST) -> dict[str, NodeGroup]:
    """The worker groups of a RayCluster manifest: CPUs and memory from the container limits,
    the big-memory resource from rayStartParams (as KubeRay turns them into Ray resources)."""
    import yaml

    spec = yaml.safe_load(manifest.read_text())["spec"]
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    out = {}
    for group in spec["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"][:1]
        limits = container["resources"]["limits"]
        mem = str(limits["memory"])
        memory = int(mem[:-2]) * units[mem[-2:]] if mem[-2:] in units else int(mem)
        extra = yaml.safe_load(yaml.safe_load(group["rayStartParams"].get("resources", '"{}"')))
        out[group["groupName"]] = NodeGroup(group["groupName"], int(limits["cpu"]), memory,
                                            float(extra.get("raymesh_highmem", 0)))
    return out


@dataclass
class LayerCost:
    layer: int
    chunks: int
    core_hours: float
    peak_task_bytes: int  # what one task asks Ray for (raymesh.placement)
    parts: int  # tasks the densest chunk is split over
    cache_bytes: int  # shard bytes the caches hold in the object store during this layer
    group: str
    nodes: int = 0
    wall_hours: float = 0.0
    longest_task_hours: float = 0.0
    pcg_task_bytes: int = 0  # PCG: every child shard of the densest chunk, whole


@dataclass
class Estimate:
    dataset: str
    mip: int
    voxels: int
    layers: list[LayerCost]
    nodes: dict[str, int]
    wall_hours: float
    target_hours: float
    memory_budget: int
    store: str
    rates: dict
    notes: list[str]

    def table(self) -> str:
        head = ("| layer | chunks | core-hours | peak task memory | shard caches hold | nodes (group) | wall h "
                "| longest task h | PCG task memory |")
        rows = [head, "|" + "---|" * 9]
        for c in self.layers:
            rows.append(f"| {c.layer} | {c.chunks:,} | {c.core_hours:,.1f} | {_size(c.peak_task_bytes)}"
                        f"{f' ({c.parts} parts)' if c.parts > 1 else ''} | {_size(c.cache_bytes)} | {c.nodes} "
                        f"({c.group}) | {c.wall_hours:.2f} | {c.longest_task_hours:.2f} | {_size(c.pcg_task_bytes)} |")
        total = sum(c.core_hours for c in self.layers)
        rows.append(f"| all | {sum(c.chunks for c in self.layers):,} | {total:,.1f} | | | "
                    + ", ".join(f"{n} {g}" for g, n in self.nodes.items()) + f" | {self.wall_hours:.2f} | | |")
        return "\n".join(rows)


def _size(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.0f} KiB" if n else "0"


def estimate(info: dict, *, mip: int, rates: Rates, memory_budget: int, highmem_layer: int | None,
             groups: dict[str, NodeGroup], target_hours: float = 48.0, store: str = "bigtable",
             max_layer: int | None = None, name: str = "", lod_chain: bool = False) -> Estimate:
    """The cost of meshing layers 2..``max_layer`` (default the root) of the graph ``info`` describes
    (``lod_chain``: with the LOD chain, its measured time over stitching's added to each layer)."""
    import numpy as np

    from raymesh.graph.ids import ChunkLayout
    from raymesh.placement import TASK_BASE_BYTES, l2_request, stitch_parts, stitch_request, stitch_work

    graph = info["graph"]
    scales = info["scales"]
    cv_mip = int(graph.get("cv_mip", 0))
    chunk = np.asarray(graph["chunk_size"], dtype=np.int64)
    layout = ChunkLayout.from_voxels(scales[cv_mip]["size"], chunk, spatial_bits=int(graph["spatial_bit_masks"]["2"]))
    if layout.n_layers != int(graph["n_layers"]):
        raise ValueError(f"the info says {graph['n_layers']} layers; its size and chunk size give {layout.n_layers}")
    distortion = np.asarray(scales[mip]["resolution"]) // np.asarray(scales[cv_mip]["resolution"])
    block = chunk // distortion.astype(np.int64)
    voxels = int(np.prod(np.asarray(scales[mip]["size"], dtype=np.int64)))
    top = int(max_layer or layout.n_layers)
    costs = []
    for layer in range(2, top + 1):
        chunks = int(np.prod(layout.layer_chunk_bounds(layer)))
        reads = chunks * rates.graph_read_seconds(layer, store)
        group = "highmem" if highmem_layer is not None and layer >= highmem_layer and "highmem" in groups else "general"
        if layer == 2:
            seconds = voxels * rates.l2_seconds_per_voxel + reads
            request, parts, densest, cache = l2_request(block + 1, memory_budget), 1, 0.0, 0
            longest = float(np.prod(block)) * rates.l2_seconds_per_voxel
        else:
            child_total = rates.layer_bytes_per_voxel(layer - 1) * voxels
            densest = child_total / chunks * min(chunks, rates.densest_share)
            seconds = child_total * rates.stitch_seconds_per_byte
            if lod_chain:
                seconds *= 1 + rates.lod_ratio(layer)
            seconds += reads
            request = stitch_request(int(densest), memory_budget)
            parts = stitch_parts(int(densest), memory_budget)
            longest = densest * rates.stitch_seconds_per_byte / parts
            if lod_chain:
                longest *= 1 + rates.lod_ratio(layer)
            below = int(np.prod(layout.layer_chunk_bounds(layer - 1)))
            cache = child_total if child_total / below <= stitch_work(memory_budget) // 2 else 0
        costs.append(LayerCost(layer, chunks, seconds / 3600, int(request), parts, int(cache), group,
                               longest_task_hours=longest / 3600,
                               pcg_task_bytes=int(TASK_BASE_BYTES + rates.pcg_bytes_per_child_byte * densest)
                               if layer > 2 else int(request)))
    nodes = _size_cluster(costs, groups, target_hours)
    for c in costs:
        c.nodes = nodes[c.group]
        c.wall_hours = _wall(c, c.nodes, groups[c.group])
    # Shards stay where the layer below ran; the caches hold at most half that group's object store.
    for below, c in zip(costs, costs[1:]):
        c.cache_bytes = min(c.cache_bytes, nodes[below.group] * groups[below.group].object_store // 2)
    notes = _pcg_notes(costs, rates, voxels, memory_budget)
    return Estimate(name, mip, voxels, costs, nodes, sum(c.wall_hours for c in costs), target_hours, memory_budget,
                    store, asdict(rates), notes)


def _size_cluster(costs: list[LayerCost], groups: dict[str, NodeGroup], target_hours: float) -> dict[str, int]:
    """Nodes per group for the whole run to fit ``target_hours`` with the smallest cluster at its
    biggest (the groups' layers run one after the other, and an autoscaler removes a group's nodes
    when its layers are done), then the fewest CPU-hours. Where the target is out of reach, the
    sizes past which more nodes gain under 5%."""
    by_group = {name: [c for c in costs if c.group == name] for name in dict.fromkeys(c.group for c in costs)}

    def hours(name: str, n: int) -> float:
        return sum(_wall(c, n, groups[name]) for c in by_group[name])

    def least(name: str, goal: float) -> int:
        goal = max(goal, 1.05 * hours(name, 10**9))  # no more nodes than still pay off
        lo, hi = 1, 1
        while hours(name, hi) > goal:
            lo, hi = hi, hi * 2
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if hours(name, mid) > goal else (lo, mid)
        return hi

    names = list(by_group)
    if len(names) == 1:
        return {names[0]: least(names[0], target_hours)}
    first, second = names  # the general group (lower layers), then the highmem one
    best = None
    n = 1
    share = sum(c.core_hours for c in by_group[first]) / max(1e-9, sum(c.core_hours for c in costs))
    while True:
        # Past the target already with this many big-memory nodes: the general group still gets its
        # share of the target, not the impossible rest (which would size it to its asymptote).
        rest = target_hours - hours(second, n)
        if rest <= 0:
            rest = target_hours * share
        m = least(first, rest)
        cpu_hours = m * groups[first].cpus * hours(first, m) + n * groups[second].cpus * hours(second, n)
        peak = max(m * groups[first].cpus, n * groups[second].cpus)  # the groups run one after the other
        total = hours(first, m) + hours(second, n)
        over = total > target_hours * 1.0001
        # out of reach: the quickest (more nodes stop paying off below), else the smallest cluster
        key = (over, total if over else 0.0, peak, cpu_hours)
        if best is None or key < best[0]:
            best = (key, {first: m, second: n})
        if hours(second, n) <= 1.05 * hours(second, 10**9):
            return best[1]
        n = max(n + 1, int(n * 1.25))


def _wall(c: LayerCost, nodes: int, group: NodeGroup) -> float:
    """Hours a layer takes on ``nodes`` nodes of ``group``: its core-hours over the tasks that run
    at once (no more than its chunks' tasks), and never less than its longest task."""
    slots = min(nodes * group.slots(c.peak_task_bytes), c.chunks * c.parts)
    return max(c.core_hours / max(1, slots), c.longest_task_hours)


def _pcg_notes(costs: list[LayerCost], rates: Rates, voxels: int, budget: int) -> list[str]:
    by_layer = {c.layer: c for c in costs}
    notes = []
    over = [c.layer for c in costs if c.longest_task_hours > PCG_LEASE_HOURS]
    whole = {c.layer: c.longest_task_hours * c.parts for c in costs}  # PCG: the densest chunk, one task
    pcg_over = [layer for layer, h in whole.items() if h > PCG_LEASE_HOURS]
    notes.append(f"PCG's 12-hour SQS lease: raymesh's longest task is {max(c.longest_task_hours for c in costs):.2f} h "
                 "(a chunk over the memory budget is split into up to 64 parts); "
                 + (f"layers {over} pass it. " if over else "none passes it. ")
                 + (f"PCG runs a chunk as one task: its densest chunk would take {whole[pcg_over[0]]:.0f} h at layer "
                    f"{pcg_over[0]}, past the lease." if pcg_over else "PCG's one task per chunk stays within it too."))
    if 6 in by_layer:
        mean6 = rates.layer_bytes_per_voxel(6) * voxels / by_layer[6].chunks
        notes.append(f"Layer-6 shards: mean {_size(mean6)}, densest {_size(mean6 * min(by_layer[6].chunks, rates.densest_share))} "
                     f"by this model; a published minnie65 layer-6 shard holds at least {_size(PCG_L6_SHARD_BYTES)}.")
    if PCG_MAX_LAYER + 1 in by_layer:
        c7, c8 = by_layer[PCG_MAX_LAYER], by_layer[PCG_MAX_LAYER + 1]
        notes.append(f"PCG's ceiling at layer {PCG_MAX_LAYER}: a PCG task holds its chunk's child shards whole, "
                     f"{_size(c7.pcg_task_bytes)} at layer {PCG_MAX_LAYER} and {_size(c8.pcg_task_bytes)} at layer "
                     f"{PCG_MAX_LAYER + 1}; raymesh's tasks ask at most the {_size(budget)} memory budget at every layer.")
    return notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cost_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--graphene-info", required=True, metavar="INFO.json",
                   help="a graphene info (what a PCG server serves at /segmentation/table/<graph>/info)")
    p.add_argument("--config", default=str(TEMPLATE), help="job config for mip, memory budget and highmem layer "
                   "(default: configs/pcg_bigtable.yaml)")
    p.add_argument("--mip", type=int, help="mesh mip (default: the config's)")
    p.add_argument("--manifest", default=str(MANIFEST), help="RayCluster whose groups size the cluster "
                   "(default: kuberay/raycluster.yaml)")
    p.add_argument("--results", default=str(RESULTS), help="benchmark results folder (default: benchmarks/results)")
    p.add_argument("--hours", type=float, default=48.0, help="target wall time of the whole run (default: 48)")
    p.add_argument("--store", choices=["bigtable", "sqlite"], default="bigtable", help="graph store (default: bigtable)")
    p.add_argument("--max-layer", type=int, help="highest layer meshed (default: the root layer)")
    p.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    p.add_argument("--lod-chain", action=argparse.BooleanOptionalAction, default=None,
                   help="with the LOD chain (its time over stitching's from benchmarks/results/lod_chain_full.json; "
                   "default: the config's lod_chain)")
    args = p.parse_args(argv)

    from raymesh.config import load_config

    config = load_config(args.config, graph="sqlite:///unused.sqlite")
    info = json.loads(Path(args.graphene_info).read_text())
    rates = Rates.from_results(Path(args.results))
    est = estimate(info, mip=config.mip if args.mip is None else args.mip, rates=rates,
                   memory_budget=config.memory_budget, highmem_layer=config.highmem_layer,
                   groups=node_groups(Path(args.manifest)), target_hours=args.hours, store=args.store,
                   max_layer=args.max_layer, name=Path(args.graphene_info).stem,
                   lod_chain=config.lod_chain if args.lod_chain is None else args.lod_chain)
    if args.json:
        from benchmarks.common import emit

        emit("cost_model", asdict(est), {"graphene_info": args.graphene_info, "config": args.config,
                                         "manifest": args.manifest, "hours": args.hours, "store": args.store})
        return 0
    out = sys.stdout
    print(f"{est.dataset}: {est.voxels:,} voxels at mip {est.mip}; {est.store} graph; memory budget "
          f"{_size(est.memory_budget)}; target {est.target_hours:g} h", file=out)
    print(est.table(), file=out)
    print("\n" + "\n".join(f"- {n}" for n in est.notes), file=out)
    r = rates
    print(f"\nRates (benchmarks/results): layer 2 {r.l2_seconds_per_voxel * 1e6:.2f} us/voxel; stitching "
          f"{r.stitch_seconds_per_byte * 1e6:.2f} us per child byte; fragments "
          + ", ".join(f"L{k} {v:.3f}" for k, v in r.bytes_per_voxel.items()) + " B/voxel; densest chunk "
          f"{r.densest_share:.2f}x its layer's mean; graph reads "
          + ", ".join(f"L{k} {v * 1000:.0f} ms" for k, v in r.read_seconds.items()) + " per chunk (Bigtable over SQLite)",
          file=out)
    print("Assumptions:\n" + "\n".join(f"- {a}" for a in ASSUMPTIONS), file=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
