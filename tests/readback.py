"""Reading meshes back the way users do: CloudVolume's graphene client, offline (readback.md)."""

from __future__ import annotations

import numpy as np

from raymesh.formats.draco import Fragment
from raymesh.formats.mesh_layout import graphene_info


def cloudvolume_for(store):
    from cloudvolume import CloudVolume

    return CloudVolume(f"graphene://https://localhost/segmentation/table/{store.meta.graph_id}",
                       info=graphene_info(store.meta), secrets={"token": "0" * 32})


def cloudvolume_reader(store):
    """Fragments as CloudVolume's graphene client reads them on bypass: ``dynamic/`` first, then
    the initial shards with each layer's sharding spec."""
    cv = cloudvolume_for(store)

    def read(nodes):
        meshes = cv.mesh.get_meshes_on_bypass([int(n) for n in nodes], allow_missing=False)
        return [Fragment(meshes[int(n)].vertices.astype(np.float64), meshes[int(n)].faces.astype(np.uint32), None)
                for n in nodes]

    return read
