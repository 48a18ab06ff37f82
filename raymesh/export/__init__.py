"""``raymesh export``: roots' meshes, as a viewer loads them, written to standard mesh files.

Each root's mesh is PCG's verified manifest from the highest meshed layer (fragments from the
initial shards, or ``dynamic/`` for nodes made by edits), decoded and merged by position, in nm,
written by trimesh: one file per root, ``<root>.<format>``.

Formats are a table of writers (``FORMATS``): a writer takes the ``ViewerMeshes`` of the graph,
the roots and the output folder, and returns what it wrote. ``precomputed`` is the one
multi-resolution format: Neuroglancer's ``neuroglancer_multilod_draco`` from the LOD chain
(``export.multilod``), every root in one folder (sharded or not) rather than a file per root.
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
    lods: dict | None = None  # precomputed: per-LOD fragments, faces and bytes


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


def _precomputed(meshes: ViewerMeshes, roots: Sequence[int], out: str, sharded: bool = False) -> list[Exported]:
    from raymesh.export.multilod import write_precomputed

    done = write_precomputed(meshes, roots, out, sharded=sharded)
    where = done.mesh_dir if sharded else None
    return [Exported(s["root"], where or os.path.join(done.mesh_dir, str(s["root"])), 0, sum(s["faces"]),
                     sum(s["fragments"]), lods=s) for s in done.segments]


MULTI_RESOLUTION = ("precomputed",)
FORMATS["precomputed"] = _precomputed


def export_roots(graph: str, roots: Sequence[int] | None, fmt: str, out: str, mesh_dir: str | None = None,
                 *, sharded: bool = False, time_stamp: float | None = None) -> list[Exported]:
    """Write each root's mesh into ``out`` in ``fmt``; every root is checked before any file is
    written. ``roots`` None: every root of the graph at ``time_stamp`` (precomputed only)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(sorted(FORMATS))}")
    if fmt not in MULTI_RESOLUTION and (sharded or time_stamp is not None):
        raise ConfigError(f"--sharded and --time-stamp are for --format precomputed, not {fmt}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file, not a folder")
    meshes = ViewerMeshes(graph, mesh_dir)
    if roots is None:
        from raymesh.export.multilod import roots_at

        roots = roots_at(meshes, time_stamp)
    for root in roots:
        root = meshes.check_node(root, min_layer=2)
        if not meshes.exists(root):
            raise ConfigError(f"node {root} is not in graph {meshes.meta.graph_id}")
    os.makedirs(out, exist_ok=True)
    if fmt == "precomputed":
        return _precomputed(meshes, [int(r) for r in roots], out, sharded)
    return FORMATS[fmt](meshes, [int(r) for r in roots], out)


__all__ = ["FORMATS", "Exported", "Fragment", "RootMesh", "ViewerMeshes", "export_roots", "to_trimesh"]
