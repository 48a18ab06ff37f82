"""The user-facing error types, gathered so the CLI reports them as one clear line."""

from raymesh.builder import BuildError
from raymesh.graph.base import GraphError
from raymesh.graph.ids import GraphLayoutError
from raymesh.storage import StorageError
from raymesh.volume import SegmentationError


class ConfigError(ValueError):
    """A malformed or impossible job configuration."""


class MeshingError(RuntimeError):
    """Meshing cannot go on (missing child fragments, corrupt shard, impossible range)."""


class EditError(ValueError):
    """An edit that cannot be made (unknown supervoxels, a merge within one object, ...)."""


USER_ERRORS = (BuildError, GraphError, GraphLayoutError, StorageError, SegmentationError, ConfigError,
               MeshingError, EditError)
