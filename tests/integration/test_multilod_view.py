"""The multi-resolution export in stock Neuroglancer, in real headless Chromium.

The demo graph is meshed with its LOD chain, exported with ``raymesh export --format
precomputed``, and shown by ``raymesh view --precomputed``: the root must be drawn (its colour in
the 3D panel), and the server's request log (the byte ranges of the root's fragment file, mapped
to LODs through its manifest) must show a coarse LOD fetched when zoomed far out and LOD 0 when
zoomed close in.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.parse

import numpy as np
import pytest

from browser import CHROMIUM, LAUNCH_ARGS, NO_CHROMIUM, REPO, VIEWPORT, Server, state_of, wait_drawn

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)


def lods_fetched(log_text: str, root: int, ranges: list[list[tuple[int, int]]]) -> set[int]:
    """LODs whose fragments the log shows read (``Range: bytes=a-b`` of the root's fragment file)."""
    found = set()
    for match in re.finditer(rf"GET /data/precomputed/mesh/{root} HTTP/1.1 20[06] \S+ \S+ bytes=(\d+)-(\d+)",
                             log_text):
        start, stop = int(match.group(1)), int(match.group(2)) + 1
        for lod, frags in enumerate(ranges):
            if any(a < stop and start < b for a, b in frags if b > a):
                found.add(lod)
    return found


def zoomed(url: str, factor: float) -> str:
    state = state_of(url)
    state["projectionScale"] = state["projectionScale"] * factor
    base = url.split("#!", 1)[0]
    return base + "#!" + urllib.parse.quote(json.dumps(state, separators=(",", ":")), safe="/:,[]{}\"=")


def test_export_shows_in_neuroglancer_with_lods_by_zoom(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")
    from raymesh.demo import run_demo
    from raymesh.formats.multilod import Manifest

    out = tmp_path / "demo_out"
    assert run_demo(str(out)) == 0
    graph = f"sqlite://{out / 'graph.sqlite'}"
    export = tmp_path / "export"
    subprocess.run([sys.executable, "-m", "raymesh", "export", "--graph", graph, "--format", "precomputed",
                    "--out", str(export)], check=True, cwd=REPO, capture_output=True)
    manifests = {int(p.name[:-len(".index")]): Manifest.from_bytes(p.read_bytes())
                 for p in (export / "mesh").glob("*.index")}
    # the root with the most LOD-0 cells among those with a coarser LOD of fewer cells
    root = max((r for r, m in manifests.items() if m.num_lods >= 3 and len(m.positions[-1]) < len(m.positions[0])),
               key=lambda r: (len(manifests[r].positions[0]), r))
    ranges = manifests[root].fragment_ranges()

    log_path = tmp_path / "view.log"
    server = Server(graph, log_path, "--precomputed", str(export), "--roots", str(root))
    errors: list[str] = []
    try:
        state = state_of(server.url)
        layer = state["layers"][0]
        assert layer["source"] == f"precomputed://{server.base}/data/precomputed"
        assert layer["segments"] == [str(root)]
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)

            def show(url: str, name: str):
                context = browser.new_context(viewport=VIEWPORT)  # a fresh cache: every fetch is in the log
                page = context.new_page()
                page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
                        if m.type == "error" and "404" not in m.text else None)
                page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
                mark = len(log_path.read_text())
                page.goto(url)
                return context, page, mark

            context, page, mark = show(server.url, "default")
            image, counts = wait_drawn(page, tmp_path / "default.png", layer["segmentColors"])
            assert counts[str(root)] >= 400
            context.close()

            fetched = {}
            for name, factor in (("far", 400.0), ("close", 0.05)):
                context, page, mark = show(zoomed(server.url, factor), name)
                seen: set[int] = set()
                for _ in range(40):  # until the fetches settle
                    page.wait_for_timeout(500)
                    now = lods_fetched(log_path.read_text()[mark:], root, ranges)
                    if now and now == seen:
                        break
                    seen = now
                page.screenshot(path=str(tmp_path / f"{name}.png"))
                fetched[name] = seen
                context.close()
            browser.close()
    finally:
        server.stop()
    assert not errors, errors
    top = manifests[root].num_lods - 1
    assert fetched["far"], f"nothing of root {root} fetched zoomed out: {log_path.read_text()[-3000:]}"
    assert 0 not in fetched["far"] and max(fetched["far"]) > 0, fetched
    assert 0 in fetched["close"], fetched
    assert fetched["far"] != fetched["close"] and top >= 2
    assert np.isfinite(counts[str(root)])
