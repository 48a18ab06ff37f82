"""The Neuroglancer client shipped in the ``neuroglancer`` PyPI wheel, and the viewer state
(in the URL's ``#!`` fragment) that opens a graph's segmentation with some roots selected."""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.parse
from typing import Sequence

from raymesh.errors import ConfigError

# Segment colours, in the order roots are listed: saturated and far apart in hue, so a screenshot
# tells them apart by chromaticity (yellow is left out: Neuroglancer draws the data bounds in it).
PALETTE = ("#ff0000", "#00ff00", "#0080ff", "#ff00ff", "#00ffff", "#ff8000", "#8000ff", "#80ff00")

# The path the client is served under: the wheel's client finds its Python server from
# ``/v/<token>/`` in its own URL (the token means nothing here; nothing is secret).
TOKEN = "raymesh"


def client_dir() -> str:
    """The built Neuroglancer client inside the installed ``neuroglancer`` package (not imported:
    importing it starts nothing, but pulls in tornado and more that the server does not need)."""
    spec = importlib.util.find_spec("neuroglancer")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the neuroglancer package is not installed (pip install neuroglancer); "
                          "raymesh view serves the Neuroglancer client it ships")
    path = os.path.join(list(spec.submodule_search_locations)[0], "static", "client")
    if not os.path.isfile(os.path.join(path, "index.html")):
        raise ConfigError(f"the installed neuroglancer package has no built client at {path}; "
                          "install the wheel from PyPI (pip install neuroglancer)")
    return path


def colours_for(roots: Sequence[int]) -> dict[str, str]:
    return {str(int(r)): PALETTE[i % len(PALETTE)] for i, r in enumerate(roots)}


def viewer_state(source: str, meta, roots: Sequence[int], layout: str = "xy-3d") -> dict:
    """A state showing the graph's segmentation (``source``: its ``graphene://`` URL) with
    ``roots`` selected in fixed colours, centred on the dataset, the 3D view beside a 2D slice."""
    resolution = [float(r) for r in meta.resolution]
    lo, hi = meta.voxel_bounds
    size = (hi - lo).astype(float)
    centre = ((lo + hi) / 2).tolist()
    extent_nm = float(max(size * resolution))
    name = meta.graph_id
    return {
        "dimensions": {axis: [r * 1e-9, "m"] for axis, r in zip("xyz", resolution)},
        "position": centre,
        # voxels per screen pixel in the 2D panel, so the whole section fits (about 450 pixels)
        "crossSectionScale": max(float(max(size[:2])) / 450.0, 0.05),
        # the 3D panel's height in canonical voxels (the finest dimension's): the dataset and a margin
        "projectionScale": extent_nm * 2.2 / min(resolution),
        "projectionOrientation": [0.25, -0.3, -0.05, 0.92],
        "showSlices": False,
        "layers": [{
            "type": "segmentation",
            "source": source,
            "name": name,
            "tab": "segments",
            "segments": [str(int(r)) for r in roots],
            "segmentColors": colours_for(roots),
        }],
        "selectedLayer": {"layer": name, "visible": False},
        "layout": layout,
    }


def state_url(base: str, state: dict) -> str:
    """``<base>/v/<token>/#!<state>``: the client reads the state from the URL fragment."""
    text = json.dumps(state, separators=(",", ":"))
    return f"{base}/v/{TOKEN}/#!" + urllib.parse.quote(text, safe="/:,[]{}\"=")


__all__ = ["PALETTE", "TOKEN", "client_dir", "colours_for", "state_url", "viewer_state"]
