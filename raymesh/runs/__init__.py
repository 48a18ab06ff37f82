"""What a meshing run leaves behind besides meshes, and what the next run reads back from it."""
