"""PCG's pickled graph meta (pcg-compat.md 2.5), read without PyChunkedGraph and without trust.

The ``meta`` row holds ``pickle.dumps(ChunkedGraphMeta)``. Unpickling runs whatever callables a
pickle names, so ``loads_meta`` resolves only the classes the spec lists (PCG's three meta
classes, mapped to local stand-ins; ``datetime.timedelta``; numpy scalars and dtypes) and refuses
anything else before it is called. ``dumps_meta`` writes a pickle that names exactly PCG's
classes, so PCG itself reads tables raymesh built.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
import threading
import types
from collections import namedtuple
from typing import Any

import numpy as np

from raymesh.graph.base import GraphError
from raymesh.graph.meta import DataSource, GraphConfig, GraphMeta

PCG_MODULE = "pychunkedgraph.graph.meta"

# PCG's namedtuples, fields in PCG's order with PCG's defaults (2.5).
PCGGraphConfig = namedtuple(
    "GraphConfig",
    ["ID", "ID_PREFIX", "CHUNK_SIZE", "FANOUT", "LAYER_ID_BITS", "SPATIAL_BITS", "OVERWRITE",
     "ROOT_LOCK_EXPIRY", "ROOT_COUNTERS"],
    defaults=(None, "", None, 2, 8, 10, False, None, 8),
)
PCGDataSource = namedtuple("DataSource", ["EDGES", "COMPONENTS", "WATERSHED", "DATA_VERSION", "CV_MIP"],
                           defaults=(None, None, None, None, 0))


class PCGChunkedGraphMeta:
    """Stand-in for ``ChunkedGraphMeta``: the pickle replays ``(graph_config, data_source)`` into
    the constructor (``__getnewargs__``) and then a state dict."""

    def __init__(self, graph_config=None, data_source=None, custom_data=None):
        self.graph_config = graph_config
        self.data_source = data_source
        self.custom_data = dict(custom_data or {})

    def __getnewargs__(self):
        return (self.graph_config, self.data_source)

    def __getstate__(self):
        return {"graph_config": self.graph_config, "data_source": self.data_source,
                "custom_data": self.custom_data}

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise GraphError("the meta pickle's ChunkedGraphMeta state is not a dict")
        self.__init__(state.get("graph_config"), state.get("data_source"), state.get("custom_data", {}))


_PCG_CLASSES = {"ChunkedGraphMeta": PCGChunkedGraphMeta, "GraphConfig": PCGGraphConfig,
                "DataSource": PCGDataSource}


def _allowed(module: str, name: str):
    if module == PCG_MODULE and name in _PCG_CLASSES:
        return _PCG_CLASSES[name]
    if (module, name) == ("datetime", "timedelta"):
        import datetime

        return datetime.timedelta
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
        def scalar(dtype, data=None):  # numpy's scalar(), after checking what it is given
            if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
                raise GraphError("the meta pickle holds a numpy scalar that is not a plain number")
            return np.frombuffer(data, dtype=dtype, count=1)[0]

        return scalar
    if (module, name) == ("numpy", "dtype"):
        def dtype(spec, align=False, copy=False):
            if not isinstance(spec, str) or not spec[:1] in "biufc?" or len(spec) > 4:
                raise GraphError(f"the meta pickle asks for numpy dtype {spec!r}; only plain numbers are accepted")
            return np.dtype(spec)

        return dtype
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        found = _allowed(module, name)
        if found is None:
            raise GraphError(
                f"the graph's meta pickle names {module}.{name}, which is not one of the classes a PCG "
                "meta may hold (pychunkedgraph.graph.meta.ChunkedGraphMeta/GraphConfig/DataSource, "
                "datetime.timedelta, numpy scalars); refusing to load it, nothing from it was run")
        return found


# The stand-ins carry PCG's qualified names, so the standard pickler writes exactly those.
for _name, _cls in _PCG_CLASSES.items():
    _cls.__module__, _cls.__name__, _cls.__qualname__ = PCG_MODULE, _name, _name
_DUMP_LOCK = threading.Lock()


@contextlib.contextmanager
def _pcg_module():
    """Make ``pychunkedgraph.graph.meta`` resolve to the stand-ins while pickling (pickle checks
    that a class is importable under its name), unless PyChunkedGraph itself is installed."""
    with _DUMP_LOCK:
        if PCG_MODULE in sys.modules:
            raise GraphError("PyChunkedGraph is imported in this process; write the meta with PCG itself")
        added = []
        for name in ("pychunkedgraph", "pychunkedgraph.graph", PCG_MODULE):
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        for cls_name, cls in _PCG_CLASSES.items():
            setattr(sys.modules[PCG_MODULE], cls_name, cls)
        try:
            yield
        finally:
            for name in added:
                sys.modules.pop(name, None)


def loads_meta(data: bytes) -> dict[str, Any]:
    """PCG meta pickle -> the plain dict ``GraphMeta.from_dict`` takes."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    except GraphError:
        raise
    except Exception as exc:
        raise GraphError(f"the graph's meta row is not a readable PCG meta pickle: {exc}") from exc
    if not isinstance(obj, PCGChunkedGraphMeta) or not isinstance(obj.graph_config, PCGGraphConfig) \
            or not isinstance(obj.data_source, PCGDataSource):
        raise GraphError(f"the graph's meta row holds a {type(obj).__name__}, not PCG's ChunkedGraphMeta")
    gc, ds = obj.graph_config, obj.data_source
    if gc.CHUNK_SIZE is None or ds.WATERSHED is None:
        raise GraphError("the graph's meta has no CHUNK_SIZE or no WATERSHED segmentation path")
    return {
        "graph_config": {"graph_id": str(gc.ID), "chunk_size": [int(v) for v in gc.CHUNK_SIZE],
                         "fanout": int(gc.FANOUT), "layer_id_bits": int(gc.LAYER_ID_BITS),
                         "spatial_bits": int(gc.SPATIAL_BITS), "id_prefix": str(gc.ID_PREFIX or "")},
        "data_source": {"watershed": str(ds.WATERSHED), "cv_mip": int(ds.CV_MIP or 0), "edges": ds.EDGES,
                        "components": ds.COMPONENTS,
                        "data_version": None if ds.DATA_VERSION is None else int(ds.DATA_VERSION)},
        "custom_data": _plain(obj.custom_data),
    }


def dumps_meta(meta: GraphMeta) -> bytes:
    """GraphMeta -> a pickle of ``pychunkedgraph.graph.meta.ChunkedGraphMeta`` (default protocol)."""
    import datetime

    gc: GraphConfig = meta.graph_config
    ds: DataSource = meta.data_source
    pcg = PCGChunkedGraphMeta(
        PCGGraphConfig(ID=gc.graph_id, ID_PREFIX=gc.id_prefix, CHUNK_SIZE=[int(v) for v in gc.chunk_size],
                       FANOUT=gc.fanout, LAYER_ID_BITS=gc.layer_id_bits, SPATIAL_BITS=gc.spatial_bits,
                       ROOT_LOCK_EXPIRY=datetime.timedelta(minutes=3)),
        PCGDataSource(EDGES=ds.edges, COMPONENTS=ds.components, WATERSHED=ds.watershed,
                      DATA_VERSION=ds.data_version, CV_MIP=ds.cv_mip),
        _plain(meta.custom_data),
    )
    with _pcg_module():
        return pickle.dumps(pcg, protocol=pickle.DEFAULT_PROTOCOL)


def _plain(value):
    """custom_data with numpy scalars turned into Python numbers (JSON-able, as SQLite keeps it)."""
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
