"""Shared benchmark plumbing: the JSON line, versions, the real volume, peak memory."""

from __future__ import annotations

import json
import os
import platform
import resource
from importlib import metadata
from pathlib import Path

REAL_VOLUME = Path(os.environ.get("RAYMESH_SHARED", Path(__file__).resolve().parents[2] / "shared")) \
    / "data" / "connectomics.npy.ckl.gz"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("raymesh", "ray", "zmesh", "DracoPy", "tensorstore", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict:
    import psutil

    return {"cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_real_or_exit(name: str):
    """The real volume, or a JSON line saying it was skipped (user clones have no ../shared)."""
    if not REAL_VOLUME.exists():
        emit(name, {}, {"skipped": f"real volume not found at {REAL_VOLUME}"})
        raise SystemExit(0)
    import numpy as np

    from raymesh.volume import load_labels

    return np.asarray(load_labels(str(REAL_VOLUME)))


QUICK_CROP = (slice(128, 384), slice(128, 384), slice(192, 320))  # 256x256x128, 4x4x2 chunks of 64^3


def real_labels_or_exit(name: str, quick: bool):
    """The real volume (Fortran order, as the builder reads it), or its quick crop."""
    import numpy as np

    labels = load_real_or_exit(name)
    return np.asfortranarray(labels[QUICK_CROP] if quick else labels)


def emit(name: str, figures: dict, inputs: dict) -> None:
    print(json.dumps({"benchmark": name, "figures": figures, "inputs": inputs,
                      "versions": versions(), "machine": machine()}))
