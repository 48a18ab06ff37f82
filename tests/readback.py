"""Reading meshes back the way users do: CloudVolume's graphene client, offline (readback.md)."""

from __future__ import annotations

import numpy as np

from raymesh.formats.draco import Fragment
from raymesh.formats.mesh_layout import graphene_info


def cloudvolume_for(store):
    from cloudvolume import CloudVolume

    return CloudVolume(f"graphene://https://localhost/segmentation/table/{store.meta.graph_id}",
                       info=graphene_info(store.meta), secrets={"token": "0" * 32})


class CloudVolumeReader:
    """Fragments as CloudVolume's graphene client reads them on bypass: ``dynamic/`` first, then
    the initial shards with each layer's sharding spec.

    Each ``get_meshes_on_bypass`` call costs about 0.2 s however few nodes it reads (CloudFiles'
    pool polls every 0.1 s), and the checks ask for one root at a time, so ``prefetch`` reads a
    whole test's nodes in one call; the same call returns the same bytes for a node whatever else
    it reads. A fragment once read is kept: make a new reader after the meshes change."""

    def __init__(self, store):
        self.cv = cloudvolume_for(store)
        self.kept: dict[int, Fragment] = {}

    def prefetch(self, nodes) -> None:
        missing = sorted({int(n) for n in nodes} - set(self.kept))
        if missing:
            meshes = self.cv.mesh.get_meshes_on_bypass(missing, allow_missing=False)
            for n in missing:
                self.kept[n] = Fragment(meshes[n].vertices.astype(np.float64), meshes[n].faces.astype(np.uint32),
                                        None)

    def __call__(self, nodes) -> list[Fragment]:
        self.prefetch(nodes)
        return [self.kept[int(n)] for n in nodes]


def cloudvolume_reader(store) -> CloudVolumeReader:
    return CloudVolumeReader(store)
