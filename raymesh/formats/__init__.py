"""Bytes on disk: PCG's sharded mesh files (``sharding``), Draco grids (``draco``), where files go
(``mesh_layout``), and Neuroglancer's multi-resolution meshes (``multilod``)."""
