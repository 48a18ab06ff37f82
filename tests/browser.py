"""Shared by the browser tests: Debian's chromium driven by Playwright, stock Neuroglancer's
screenshots read by colour, and ``raymesh view`` started as a user starts it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VIEWPORT = {"width": 1280, "height": 720}

NO_CHROMIUM = "Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)"
LAUNCH_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
               "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
               "--disable-backgrounding-occluded-windows"]


def colour_mask(image: np.ndarray, hex_colour: str) -> np.ndarray:
    """Pixels of a colour under Neuroglancer's mesh shading (lighting scales it): same chromaticity."""
    target = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
    target /= target.max()
    px = image[..., :3].astype(float)
    peak = px.max(axis=2, keepdims=True)
    norm = px / np.maximum(peak, 1)
    return (peak[..., 0] > 50) & (np.abs(norm - target).max(axis=2) < 0.2)


def panel_3d(image: np.ndarray) -> np.ndarray:
    """The right half of the ``xy-3d`` layout, below the top bars."""
    h, w = image.shape[:2]
    return image[60:h - 40, w // 2 + 10:w - 10]


def panel_2d(image: np.ndarray) -> np.ndarray:
    """The left half of the ``xy-3d`` layout (the xy cross-section)."""
    h, w = image.shape[:2]
    return image[60:h - 60, 10:w // 2 - 10]


def shoot(page, path: Path) -> np.ndarray:
    from PIL import Image

    page.screenshot(path=str(path))
    return np.asarray(Image.open(path).convert("RGB"))


def wait_drawn(page, path: Path, colours: dict[str, str], timeout: float = 45.0, min_pixels: int = 400):
    """Screenshots until every root's colour covers ``min_pixels`` of the 3D panel and the counts
    stop changing (all fragments drawn)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        image = shoot(page, path)
        counts = {root: int(colour_mask(panel_3d(image), c).sum()) for root, c in colours.items()}
        if all(n >= min_pixels for n in counts.values()) and counts == last:
            return image, counts
        last = counts
        if time.monotonic() > deadline:
            pytest.fail(f"Neuroglancer did not draw the roots within {timeout:.0f} s: pixels per root {counts}")
        time.sleep(1.0)


def state_of(url: str) -> dict:
    import json
    import urllib.parse

    return json.loads(urllib.parse.unquote(url.split("#!", 1)[1]))


class Server:
    """``raymesh view`` as a user starts it: a process; the URL is read from what it prints."""

    def __init__(self, graph: str, log: Path, *extra: str):
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "raymesh", "view", "--graph", graph, "--port", "0",
                                      "--log-requests", *extra], stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     cwd=REPO)
        self.url = None
        deadline = time.monotonic() + 60
        while self.url is None:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"raymesh view exited ({self.proc.wait()}): {log.read_text()}")
            match = re.match(r"Neuroglancer: (\S+)", line)
            if match:
                self.url = match.group(1)
            if time.monotonic() > deadline:
                raise AssertionError("raymesh view printed no URL within 60 s")
        self.base = self.url.split("/v/", 1)[0]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
