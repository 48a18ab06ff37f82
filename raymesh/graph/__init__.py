"""Graph stores, opened from a URL.

    from raymesh.graph import open_store
    store = open_store("sqlite:///path/graph.sqlite")        # embedded
    store = open_store("bigtable://PROJECT/INSTANCE/TABLE")   # PyChunkedGraph's tables
"""

from __future__ import annotations

from raymesh.graph.base import GraphError, GraphStore

SCHEMES = ("sqlite", "bigtable")


def open_store(url: str, *, create: bool = False) -> GraphStore:
    """Open a graph store; ``create`` makes an empty one for a builder."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        if url.endswith((".sqlite", ".db")):
            scheme, rest = "sqlite", url
        else:
            raise GraphError(f"graph URL {url!r} has no scheme; use one of {', '.join(s + '://' for s in SCHEMES)}")
    if scheme == "sqlite":
        from raymesh.graph.sqlite import SQLiteStore

        return SQLiteStore(rest, create=create)
    if scheme == "bigtable":
        try:
            from raymesh.graph.bigtable import BigtableStore
        except ImportError as exc:
            raise GraphError(f"the Bigtable store is not available: {exc}") from exc
        return BigtableStore.from_url(url, create=create)
    raise GraphError(
        f"unknown graph store scheme {scheme!r} in {url!r}; use one of {', '.join(s + '://' for s in SCHEMES)}"
    )


__all__ = ["open_store", "GraphStore", "GraphError"]
