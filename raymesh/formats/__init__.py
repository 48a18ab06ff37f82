"""Bytes on disk: PCG's sharded mesh files (``sharding``), Draco grids (``draco``), where files go
(``mesh_layout``), Neuroglancer's multi-resolution meshes (``multilod``), and the LOD chain's
values for big nodes stored in units (``lod_cells``)."""
