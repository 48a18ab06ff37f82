"""Layer-2 meshing of one chunk: the overlap remap (``remap``), the kernel and its caps and seam
patches (``mesh``), the rules where several chunks meet (``corners``, ``squares``).

Arrays and bytes in and out; the runtime (``raymesh.runs``) decides where chunks run and writes
their shards."""
