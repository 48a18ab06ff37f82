"""The LOD chain: a simplified mesh for every node of layers 3 and up, made from its children's
(``geometry``), stored beside ``initial/`` (``raymesh.formats.mesh_layout.lod_key``), and its export to
Neuroglancer's multi-resolution format (``raymesh.export.multilod``)."""
