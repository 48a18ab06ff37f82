"""raymesh: PyChunkedGraph-compatible meshing as a Ray application.

From a notebook (also over Ray Client, after ``ray.init("ray://head:10001")``)::

    import raymesh
    summary = raymesh.run("configs/demo.yaml", layers=[2, 3])
"""

from __future__ import annotations


def run(config, *, progress: bool = True, executor=None, **overrides):
    """Run a meshing job: ``config`` is a YAML path, a dict of settings or a ``MeshConfig``;
    keyword overrides win over it. Returns the ``RunSummary``."""
    from raymesh.config import MeshConfig, load_config
    from raymesh.driver import run as _run

    if isinstance(config, MeshConfig):
        config = config.model_copy(update=overrides) if overrides else config
    elif isinstance(config, dict):
        config = load_config(None, **{**config, **overrides})
    else:
        config = load_config(str(config), **overrides)
    return _run(config, executor=executor, progress=progress)


__all__ = ["run"]
