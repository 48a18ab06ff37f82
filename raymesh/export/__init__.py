"""``raymesh export``: roots' meshes, as a viewer loads them, written to standard mesh files.

Each root's mesh is PCG's verified manifest from the highest meshed layer (fragments from the
initial shards, or ``dynamic/`` for nodes made by edits), decoded and merged by position, in nm,
written by trimesh: one file per root, ``<root>.<format>``.

Formats are a table of writers (``FORMATS``), so another kind of output (a multi-resolution
``precomputed`` export) is one more entry: a writer takes the ``ViewerMeshes`` of the graph, the
roots and the output folder, and returns what it wrote.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

from raymesh.errors import ConfigError
from raymesh.export.fragments import Fragment, RootMesh, ViewerMeshes


@dataclass
class Exported:
    root: int
    path: str
    vertices: int
    faces: int
    fragments: int


def to_trimesh(mesh: RootMesh):
    import trimesh

    # process=False: keep the vertices and faces as merged (trimesh would drop degenerate faces).
    return trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False)


def _file_writer(ext: str) -> Callable[[ViewerMeshes, Sequence[int], str], list[Exported]]:
    def write(meshes: ViewerMeshes, roots: Sequence[int], out: str) -> list[Exported]:
        done = []
        for root in roots:
            mesh = meshes.mesh(root)
            path = os.path.join(out, f"{int(root)}.{ext}")
            tmp = os.path.join(out, f".{int(root)}.{ext}.tmp")
            with open(tmp, "wb") as f:
                to_trimesh(mesh).export(f, file_type=ext)
            os.replace(tmp, path)  # a file is there whole or not at all
            done.append(Exported(int(root), path, len(mesh.vertices), len(mesh.faces), mesh.fragments))
        return done

    return write


# format name -> writer(meshes, roots, out folder) -> files written
FORMATS: dict[str, Callable[[ViewerMeshes, Sequence[int], str], list[Exported]]] = {
    ext: _file_writer(ext) for ext in ("ply", "obj", "stl", "glb")
}


def export_roots(graph: str, roots: Sequence[int], fmt: str, out: str, mesh_dir: str | None = None
                 ) -> list[Exported]:
    """Write each root's mesh into ``out`` in ``fmt``; every root is checked before any file is written."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(sorted(FORMATS))}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file, not a folder")
    meshes = ViewerMeshes(graph, mesh_dir)
    for root in roots:
        root = meshes.check_node(root, min_layer=2)
        if not meshes.exists(root):
            raise ConfigError(f"node {root} is not in graph {meshes.meta.graph_id}")
    os.makedirs(out, exist_ok=True)
    return FORMATS[fmt](meshes, [int(r) for r in roots], out)


__all__ = ["FORMATS", "Exported", "Fragment", "RootMesh", "ViewerMeshes", "export_roots", "to_trimesh"]
