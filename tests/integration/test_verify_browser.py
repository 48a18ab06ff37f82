"""The verify report page in a real headless browser (Debian's chromium): its plots are drawn."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from raymesh.builder import build_graph
from raymesh.cli import main as cli
from raymesh.config import MeshConfig
from raymesh.driver import run
from raymesh.runs.job import MeshJob
from raymesh.storage import local_path
from support import SYNTH_CHUNK, SYNTH_RES

# The bar colours report.plots draws with (bytes per layer, fragments per root, worst chunks).
BLUE, GREEN, RED = (0x4C, 0x72, 0xB0), (0x55, 0xA8, 0x68), (0xC4, 0x4E, 0x52)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page: str, png: str) -> None:
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1400", f"--screenshot={png}", f"file://{page}"],
                   check=True, capture_output=True, timeout=120)


def colour_pixels(png: str, rgb) -> int:
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
    return int((np.abs(pixels - np.array(rgb)).sum(axis=1) < 12).sum())


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_report_page_shows_its_plots(synthetic, tmp_path, capsys):
    labels, agg = synthetic
    g = build_graph(labels, str(tmp_path / "g"), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg)
    config = MeshConfig(graph=g.store_url, layers=[2, 3, 4], executor="serial")
    run(config, progress=False)
    mesh = local_path(MeshJob(config).mesh_url)
    folder = os.path.join(mesh, "initial", "3")
    os.remove(os.path.join(folder, sorted(os.listdir(folder))[0]))
    page, png = str(tmp_path / "report.html"), str(tmp_path / "report.png")
    assert cli(["verify", "--graph", g.store_url, "--executor", "serial", "--html", page]) == 1
    capsys.readouterr()
    screenshot(page, png)
    counts = {name: colour_pixels(png, rgb) for name, rgb in (("bytes", BLUE), ("roots", GREEN), ("worst", RED))}
    assert all(n > 500 for n in counts.values()), f"plot bars not drawn: {counts}"
