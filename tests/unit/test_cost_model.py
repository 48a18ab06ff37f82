"""benchmarks/cost_model.py: its inputs come from benchmarks/results, its layers and chunks from
the graphene info, and its prediction for a small graph matches that graph's run time measured
here (issue 23)."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import cost_model
from benchmarks.cost_model import Rates, estimate, node_groups
from raymesh.config import load_config
from raymesh.placement import l2_request

REPO = Path(__file__).resolve().parents[2]
MINNIE = REPO / "benchmarks" / "data" / "minnie65_graphene_info.json"
GiB = 2**30


def _minnie(rates=None, **kw):
    template = load_config(str(REPO / "configs" / "pcg_bigtable.yaml"))
    kw = {"mip": template.mip, "memory_budget": template.memory_budget, "highmem_layer": template.highmem_layer,
          **kw}
    return estimate(json.loads(MINNIE.read_text()), rates=rates or Rates.from_results(), groups=node_groups(), **kw)


def test_minnie65_layers_chunks_and_task_memory():
    est = _minnie()
    by = {c.layer: c for c in est.layers}
    assert sorted(by) == list(range(2, 13))  # 12 layers, meshed through the root
    assert by[2].chunks == 752 * 512 * 26 and by[3].chunks == 376 * 256 * 13 and by[12].chunks == 1
    assert est.voxels == 48106 * 32763 * 13008  # at mip 2, the template's mesh mip
    # Layer 2 asks what raymesh's placement asks for a 64x64x512 block (256x256x512 at mip 2) ...
    assert by[2].peak_task_bytes == l2_request(np.array([65, 65, 513]), 16 * GiB)
    # ... and no task asks more than the template's budget, unlike PCG's whole-shard tasks.
    assert all(c.peak_task_bytes <= 16 * GiB for c in est.layers)
    assert by[8].pcg_task_bytes > 16 * GiB and by[8].parts > 1
    assert {c.group for c in est.layers if c.layer >= 5} == {"highmem"} and by[4].group == "general"
    assert est.wall_hours <= est.target_hours * 1.001
    assert any("12-hour SQS lease" in n for n in est.notes) and any("layer 7" in n for n in est.notes)


def test_rates_are_read_from_the_benchmark_results(tmp_path):
    """Halving the measured layer-2 rate in a copy of benchmarks/results doubles layer 2's
    core-hours; doubling stitching's seconds doubles layer 3's: nothing is typed into the model."""
    shutil.copytree(cost_model.RESULTS, tmp_path / "results")
    l2 = tmp_path / "results" / "l2_rate_full.json"
    data = json.loads(l2.read_text())
    data["figures"]["end_to_end_mvox_per_s"] /= 2
    l2.write_text(json.dumps(data))
    sm = tmp_path / "results" / "stitch_memory_full.json"
    data = json.loads(sm.read_text())
    for row in data["figures"]["per_layer"].values():
        row["stream"]["seconds"] *= 2
    sm.write_text(json.dumps(data))
    base, changed = _minnie(store="sqlite"), _minnie(Rates.from_results(tmp_path / "results"), store="sqlite")
    assert changed.layers[0].core_hours == pytest.approx(2 * base.layers[0].core_hours)
    assert changed.layers[1].core_hours == pytest.approx(2 * base.layers[1].core_hours)
    (tmp_path / "results" / "l2_rate_full.json").unlink()
    with pytest.raises(SystemExit, match="l2_rate_full.json is missing"):
        Rates.from_results(tmp_path / "results")


def test_the_command_prints_the_table_and_its_assumptions(capsys):
    assert cost_model.main(["--graphene-info", str(MINNIE)]) == 0
    out = capsys.readouterr().out
    assert "| layer | chunks | core-hours | peak task memory |" in out and "| 12 | 1 |" in out
    assert "Assumptions:" in out and "us/voxel" in out
    assert cost_model.main(["--graphene-info", str(MINNIE), "--json", "--hours", "96"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["benchmark"] == "cost_model" and line["figures"]["target_hours"] == 96


@pytest.mark.real_data
def test_prediction_matches_a_run_measured_here(real_labels, tmp_path):
    """A 128^3 crop of the real volume (2x2x2 chunks of 64^3, root at layer 3), meshed in this
    process: the model, given only its graphene info and the results' rates, predicts each layer's
    time and layer 2's fragment bytes within a factor of 3 of what the run measured."""
    from raymesh.builder import build_graph
    from raymesh.config import MeshConfig
    from raymesh.driver import run
    from raymesh.formats.mesh_layout import graphene_info
    from raymesh.graph import open_store

    crop = np.asfortranarray(real_labels[192:320, 192:320, 192:320])
    g = build_graph(crop, str(tmp_path), resolution=(8, 8, 40), chunk_size=(64, 64, 64), graph_id="cost")
    # The model covers meshing and stitching, not the LOD chain written beside them (no benchmark yet)
    no_lod = {"lod_chain": False} if "lod_chain" in MeshConfig.model_fields else {}
    config = MeshConfig(graph=g.store_url, layers=list(range(2, g.n_layers + 1)), mip=0, time_stamp=2e9,
                        executor="serial", **no_lod)
    t0 = time.perf_counter()
    summary = run(config, progress=False)
    measured = time.perf_counter() - t0
    assert not summary.failed
    est = estimate(graphene_info(open_store(g.store_url).meta), mip=0, rates=Rates.from_results(),
                   memory_budget=config.memory_budget, highmem_layer=None, groups=node_groups(), store="sqlite")
    predicted = {c.layer: c.core_hours * 3600 for c in est.layers}
    seconds = {s.layer: s.seconds for s in summary.layers}
    assert predicted.keys() == seconds.keys() == {2, 3}
    ratio = {layer: predicted[layer] / seconds[layer] for layer in predicted}
    l2_bytes = est.rates["bytes_per_voxel"][2] * est.voxels
    print(f"cost model: measured {measured:.1f} s ({seconds}), predicted {predicted}; layer-2 bytes "
          f"{summary.layers[0].bytes_written} measured, {l2_bytes:.0f} predicted")
    assert 1 / 3 <= sum(predicted.values()) / measured <= 3, ratio
    assert all(1 / 3 <= r <= 3 for r in ratio.values()), ratio
    assert 1 / 3 <= l2_bytes / summary.layers[0].bytes_written <= 3
    assert [c.chunks for c in est.layers] == [s.chunks for s in summary.layers]


def test_the_lod_chain_adds_its_measured_share_to_every_stitched_layer():
    rates = Rates.from_results()
    assert rates.lod_over_stitch, "benchmarks/results/lod_chain_full.json is read"
    plain, with_lod = _minnie(rates=rates), _minnie(rates=rates, lod_chain=True)
    for a, b in zip(plain.layers, with_lod.layers):
        if a.layer == 2:
            assert b.core_hours == a.core_hours
        else:  # stitching time times (1 + the LOD ratio), graph reads unchanged: at most that factor
            assert a.core_hours < b.core_hours <= a.core_hours * (1 + rates.lod_ratio(a.layer)) + 1e-9
