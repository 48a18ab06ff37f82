"""The real crop the integration tests share (``real_crop_meshed`` in the integration conftest):
where it is cut, when it was built, and how a test gets a private copy to change."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CROP = (slice(128, 384), slice(128, 384), slice(192, 320))  # 4x4x2 layer-2 chunks, 4 layers
CROP_T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)  # built then, meshed 30 s later


@dataclass
class MeshedCrop:
    labels: np.ndarray  # the crop's supervoxels
    folder: Path  # the build folder: graph.sqlite, the segmentation, its graphene_meshes
    graph: object  # builder.BuildSummary
    config: object  # the MeshConfig it was meshed with
    summary: object  # what the run returned



def copy_meshed_crop(crop: MeshedCrop, dest: Path) -> str:
    """A private copy of the meshed crop (graph, segmentation, meshes) in ``dest``; returns its
    graph URL. The graph goes through SQLite's backup, which copies committed pages whatever the
    other connections' WAL holds (a file copy can miss them)."""
    from raymesh.graph import open_store

    shutil.copytree(crop.folder, dest, ignore=shutil.ignore_patterns("graph.sqlite*"))
    source = sqlite3.connect(crop.folder / "graph.sqlite")
    target = sqlite3.connect(dest / "graph.sqlite")
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    url = f"sqlite://{dest}/graph.sqlite"
    assert open_store(url).meta.segmentation_path.rstrip("/").endswith(os.fspath(dest / "ws")), \
        "the copy reads its own segmentation"
    return url
