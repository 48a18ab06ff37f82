"""The Ray runtime: chunks of a layer as tasks through a bounded window, with shard caches and
memory-aware placement (../shared/docs/architecture.md, actors/; ray-notes.md).

- The driver never lists a layer's chunks: it pulls them lazily and keeps at most ``window``
  tasks in flight (a full connectome has ~10 million layer-2 chunks).
- A task's shard comes back as an object the driver owns; ``ShardCaches`` file the refs under the
  chunks that will read them, and a stitching task gets its children's refs as top-level
  arguments, so Ray runs it where the bytes are and nobody reads the shard from storage again.
- Each task asks for the memory its estimate says, and on a cluster of two node groups the
  resource of its group (placement.layer_resources: big-memory from ``highmem_layer`` up, the
  general group's below).
- On an autoscaling cluster the tasks are submitted even when no node is up that fits them: the
  autoscaler adds nodes for pending tasks only, so the window keeps a floor of ``MIN_WINDOW``
  tasks in flight and grows with the cluster's CPUs. A request that no node type fits fails the
  job within seconds on the autoscaler's verdict (Ray's autoscaler v2, actors/autoscaler.py);
  without one, after ``placement_timeout`` seconds (0: at once), instead of hanging.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
import uuid
from typing import Callable, Iterable, Iterator

import numpy as np
import ray

from actors import autoscaler
from actors.read_gate import RayReadGate
from actors.shard_cache import ShardCaches
from raymesh.errors import ConfigError
from raymesh.placement import TaskRequest, unsatisfiable

_EMPTY = np.zeros(0, dtype=np.uint8)
# Tasks in flight at least, whatever the cluster's size now: an autoscaling cluster starts with no
# worker, and its autoscaler adds nodes only for tasks that are pending. The window then grows with
# the CPUs that joined (4 per CPU), so a cluster of 8-CPU nodes grows about fourfold per round.
MIN_WINDOW = 16
WINDOW_REFRESH_S = 5.0  # how often the window follows the cluster's CPUs
PLACEMENT_POLL_S = 2.0  # how often a request no node fits yet is looked at again
AUTOSCALER_GRACE_S = 60.0  # how long an autoscaler v2 that has not reported yet is waited for
_WORKER_ENV = ("BIGTABLE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")


def _call(fn, item):
    return fn(item)


def _graph_counters(job) -> tuple[int, int, float, float]:
    """Round trips, rows, seconds of graph reads and of waits for the read gate among them, so far
    by the job's store in this task (zeros for a store that does not count them)."""
    store = job.__dict__.get("store")
    if store is None:
        return 0, 0, 0.0, 0.0
    return (int(getattr(store, "round_trips", 0)), int(getattr(store, "rows_read", 0)),
            float(getattr(store, "read_seconds", 0.0)), float(getattr(store, "gate_seconds", 0.0)))


def _profiled(job, fn):
    """``fn()``, and what it cost: task seconds and graph round trips, rows and read seconds."""
    before = _graph_counters(job)
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    after = _graph_counters(job)
    return out, {"seconds": seconds, "round_trips": after[0] - before[0], "rows": after[1] - before[1],
                 "read_seconds": after[2] - before[2], "gate_seconds": after[3] - before[3]}


def _share_reads(job, token: str | None) -> None:
    """Every task of one job reads the graph as of the job's time stamp: a worker keeps what its
    tasks read for the job's later tasks (``GraphStore.share_reads``)."""
    if token is not None:
        job.store.share_reads(token)


def _mesh_batch(job, token, batch, keep_shards: bool, shard_chunks: list[int], *shards):
    """One task: mesh a batch of chunks in order. Returns the stats, consumers, (for a chunk
    too big for one task) its plan in parts and what the chunk cost (``ReadProfile``), then
    (with ``keep_shards``) one shard array per chunk, each its own object so each is freed on
    its own."""
    _share_reads(job, token)
    cached = dict(zip(shard_chunks, shards))
    outputs = [_profiled(job, lambda item=item: job.mesh_chunk(tuple(item), cached, keep_shards, split=True))
               for item in batch]
    meta = [(o.stats, o.consumers, o.split, cost) for o, cost in outputs]
    outputs = [o for o, _ in outputs]
    if not keep_shards:
        return meta
    return (meta, *[o.shard if o.shard is not None else _EMPTY for o in outputs])


def _stitch_part(job, token, plan, shard_chunks: list[int], *shards):
    _share_reads(job, token)
    return job.stitch_part(plan, dict(zip(shard_chunks, shards)))


def _merge_parts(job, item, keep_shards: bool, *parts):
    """The chunk's one shard from its parts: the same return shape as ``_mesh_batch``."""
    layer, coords = item
    out, cost = _profiled(job, lambda: job.write_parts(layer, coords, list(parts), keep_shards))
    meta = [(out.stats, out.consumers, None, cost)]
    if not keep_shards:
        return meta
    return (meta, out.shard if out.shard is not None else _EMPTY)


LOCAL_START_TRIES = 3


def start_local_ray(**kwargs) -> None:
    """``ray.init`` of a new local Ray, tried again when it times out starting up.

    On a loaded machine a local start can time out ("The current node timed out during startup",
    "Timed out waiting for file .../gcs_server_port..."), though the next try works; after the
    last try the error says so instead of showing Ray's traceback."""
    for attempt in range(1, LOCAL_START_TRIES + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:  # Ray raises bare Exception for a node start-up time-out
            if "timed out" not in str(exc).lower():
                raise
            ray.shutdown()
            if attempt == LOCAL_START_TRIES:
                raise RuntimeError(f"the local Ray did not start ({str(exc).splitlines()[0]}) in {attempt} tries; "
                                   "the machine may be overloaded: run again, or use --executor serial") from exc
            time.sleep(2.0 * attempt)


CLIENT_CONNECT_TRIES = 3
# What Ray Client's proxy answers when the per-client server it starts for this client dies or
# races it at start-up (its proxier checks the new process's command line and can meet a zombie):
# the cluster is up and the next connection gets a new server.
_CLIENT_SERVER_FLAKES = ("Starting Ray client server failed", "start_specific_server", "SpecificServer startup")


def client_server_flaked(exc: BaseException) -> bool:
    """Whether ``ray.init("ray://...")`` failed because the proxy's per-client server did not
    start (worth another connection), not because of the address, the token or the cluster."""
    text = str(exc)
    return any(marker in text for marker in _CLIENT_SERVER_FLAKES)


def connect_ray(**kwargs) -> None:
    """``ray.init`` of an existing cluster; over Ray Client, tried again when the proxy failed to
    start this client's server (a flake of Ray's proxy on a loaded head, seen in CI)."""
    client = str(kwargs.get("address", "")).startswith("ray://")
    for attempt in range(1, CLIENT_CONNECT_TRIES + 1):
        try:
            ray.init(**kwargs)
            return
        except ConnectionError as exc:
            if not client or not client_server_flaked(exc) or attempt == CLIENT_CONNECT_TRIES:
                raise
            ray.shutdown()
            time.sleep(1.0 * attempt)


class ReadProfile:
    """Per layer: chunks, task seconds, and the graph reads inside them (round trips, rows,
    seconds), summed over the tasks that meshed each chunk (``RayExecutor.profile``)."""

    FIELDS = ("chunks", "seconds", "round_trips", "rows", "read_seconds", "gate_seconds")

    def __init__(self) -> None:
        self.layers: dict[int, dict[str, float]] = {}

    def add(self, layer: int, cost: dict, chunk: bool = True) -> None:
        """One task's cost; ``chunk``: it finished a chunk (a split chunk's planning task did not)."""
        row = self.layers.setdefault(int(layer), dict.fromkeys(self.FIELDS, 0))
        row["chunks"] += int(chunk)
        for name in self.FIELDS[1:]:
            row[name] += cost.get(name, 0)

    def summary(self) -> dict[int, dict[str, float]]:
        """Per layer: sums, and per chunk the means (ms, round trips, rows) and the share of task
        time spent in graph reads."""
        out = {}
        for layer, row in sorted(self.layers.items()):
            n = max(1, row["chunks"])
            out[layer] = {"chunks": row["chunks"], "task_seconds": round(row["seconds"], 3),
                          "graph_read_seconds": round(row["read_seconds"], 3),
                          "round_trips_per_chunk": round(row["round_trips"] / n, 2),
                          "rows_per_chunk": round(row["rows"] / n, 1),
                          "graph_read_ms_per_chunk": round(1000 * row["read_seconds"] / n, 2),
                          "gate_wait_ms_per_chunk": round(1000 * row["gate_seconds"] / n, 2),
                          "task_ms_per_chunk": round(1000 * row["seconds"] / n, 2),
                          "graph_read_share": round(row["read_seconds"] / row["seconds"], 4) if row["seconds"] else 0.0}
        return out


class RayExecutor:
    """Connects to (or starts) Ray; runs meshing layers, or any ``fn(item)``, as retriable tasks.

    ``profile`` (a ``ReadProfile``) adds up, per layer, what each chunk's task cost and how much
    of it went to graph reads (for stores that count them: Bigtable)."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 object_store_memory: int | None = None, window: int | None = None, max_retries: int = 3,
                 cache_actors: int = 2):
        self._started = False
        # Inside `ray job submit` (and KubeRay's RayJob) Ray sets RAY_ADDRESS: join that cluster.
        address = address or os.environ.get("RAY_ADDRESS") or None
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": True}
            if address:
                _check_reachable(address)
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = num_cpus
                kwargs["object_store_memory"] = object_store_memory or 256 * 2**20
                passed = {k: os.environ[k] for k in _WORKER_ENV if k in os.environ}
                if passed:  # e.g. a Bigtable emulator chosen after this shell started
                    kwargs["runtime_env"] = {"env_vars": passed}
            try:
                if address:
                    connect_ray(**kwargs)
                else:
                    start_local_ray(**kwargs)
            except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError) as exc:
                from actors.ray_auth import explain

                # a cluster with token authentication that refused this client: say what to set
                raise ConfigError(explain(address, exc) or f"cannot connect to Ray at {address!r}: {exc}; check "
                                  "the address (auto, ray://host:10001) and that the cluster is up") from exc
            self._started = True
        self._fixed_window = window
        self._window_at = -float("inf")
        self._window = MIN_WINDOW
        self.max_retries = max_retries
        self.cache_actors = cache_actors
        self._remote = ray.remote(_call).options(max_retries=max_retries)
        self._mesh = ray.remote(max_retries=max_retries)(_mesh_batch)
        self._part = ray.remote(max_retries=max_retries)(_stitch_part)
        self._merge = ray.remote(max_retries=max_retries)(_merge_parts)
        self._caches: ShardCaches | None = None
        self._gate = None
        self._store_bytes = 0  # the cluster's object store now (it grows and shrinks with autoscaling)
        self._filed_bytes = 0
        self._job_ref = None
        self._job = None
        self._token = None
        self._fits: set[tuple] = set()
        self._unplaced: dict[tuple, list] = {}  # no node fits yet: [layer, request, since, verdicts in a row]
        self.resubmitted = 0  # batches run again without cached shards after losing them
        self.profile = ReadProfile()

    @property
    def window(self) -> int:
        """Tasks kept in flight: the ``window`` given, else 4 per CPU of the cluster as it is now
        (looked up every few seconds, so it grows as an autoscaler adds nodes), at least
        ``MIN_WINDOW``."""
        if self._fixed_window:
            return self._fixed_window
        self._refresh_cluster_size()
        return self._window

    def _refresh_cluster_size(self) -> None:
        """The window and the object store from the cluster's resources, at most every few seconds."""
        now = time.monotonic()
        if now - self._window_at < WINDOW_REFRESH_S:
            return
        self._window_at = now
        resources = ray.cluster_resources()
        self._window = max(MIN_WINDOW, 4 * int(resources.get("CPU", 0)))
        self._store_bytes = int(resources.get("object_store_memory", 0))

    def _cache_budget(self, job) -> int:
        """Bytes of shards (counted once per reader) the caches may hold: ``shard_cache_bytes``,
        else half the cluster's object store as it is now (it grows as an autoscaler adds nodes)."""
        if job.config.shard_cache_bytes:
            return job.config.shard_cache_bytes
        self._refresh_cluster_size()
        return self._store_bytes // 2

    # ---- generic ----------------------------------------------------------------------------
    def imap_unordered(self, fn: Callable, items: Iterable) -> Iterator:
        fn_ref = ray.put(fn)
        inflight = []
        for item in items:
            inflight.append(self._remote.remote(fn_ref, item))
            if len(inflight) >= self.window:
                done, inflight = ray.wait(inflight, num_returns=1, fetch_local=False)
                yield _get(done[0])
        while inflight:
            done, inflight = ray.wait(inflight, num_returns=1, fetch_local=False)
            yield _get(done[0])

    # ---- meshing layers -----------------------------------------------------------------------
    def run_layer(self, job, layer: int) -> Iterator:
        """Mesh every chunk of ``layer``; yields each chunk's ``ChunkStats`` as it finishes."""
        if self._job is not job:
            self.end_job()
            if job.config.graph.startswith("bigtable://") and job.read_gate is None:
                self._gate = job.read_gate = RayReadGate(job.config.max_graph_reads)
            self._job, self._job_ref = job, ray.put(job)
            self._token = uuid.uuid4().hex  # this job's reads, shared by its tasks on each worker
            if job.config.shard_cache:
                self._caches = ShardCaches(self.cache_actors)
                self._filed_bytes = 0
        config = job.config
        keep = config.shard_cache and layer < max(config.layers)
        from_cache = self._caches is not None and layer > config.layers[0]
        batches = _batches(job.iter_chunks(layer), config.chunks_per_task)
        inflight: dict = {}
        for batch in batches:
            self._submit(job, layer, batch, keep, from_cache, inflight)
            while len(inflight) >= self.window:
                yield from self._collect(job, layer, keep, inflight)
        while inflight:
            yield from self._collect(job, layer, keep, inflight)

    def _submit(self, job, layer: int, batch: list, keep: bool, from_cache: bool, inflight: dict) -> None:
        chunk_ids, refs, child_bytes = [], [], 0
        if from_cache:
            layout = job.meta.layout
            consumers = [(layer, int(layout.chunk_id(layer, *coords))) for _, coords in batch]
            chunk_ids, refs, child_bytes, released = self._caches.take(consumers)
            self._filed_bytes -= released
        # Past the cache budget a shard is not handed back: its readers go to storage instead,
        # so a layer of millions of chunks cannot fill the object store and spill.
        keep = keep and self._filed_bytes < self._cache_budget(job)
        request = job.task_request(layer, child_bytes)
        self._check_fits(job, layer, request)
        options = {"num_returns": 1 + (len(batch) if keep else 0), "memory": request.memory}
        if request.resources:
            options["resources"] = request.resources
        out = self._mesh.options(**options).remote(self._job_ref, self._token, batch, keep, chunk_ids, *refs)
        meta_ref, shard_refs = (out[0], out[1:]) if keep else (out, [])
        inflight[meta_ref] = (batch, shard_refs, (chunk_ids, refs, keep, options))

    def _submit_parts(self, item, plans: list, submitted: tuple, inflight: dict) -> None:
        """A chunk its task found too big (it planned and split it): its parts in parallel, then
        one merge task that writes the chunk's single shard (the parts reach it as top-level refs)."""
        chunk_ids, refs, keep, options = submitted
        part_options = {k: v for k, v in options.items() if k != "num_returns"}
        pieces = [self._part.options(**part_options).remote(self._job_ref, self._token, plan, chunk_ids, *refs)
                  for plan in plans]
        merge_options = dict(options, num_returns=2 if keep else 1)
        out = self._merge.options(**merge_options).remote(self._job_ref, item, keep, *pieces)
        meta_ref, shard_refs = (out[0], out[1:]) if keep else (out, [])
        inflight[meta_ref] = ([item], shard_refs, submitted)

    def _collect(self, job, layer: int, keep: bool, inflight: dict) -> Iterator:
        done = []
        while not done:
            waiting = self._unplaced and PLACEMENT_POLL_S
            done, _ = ray.wait(list(inflight), num_returns=1, fetch_local=False, timeout=waiting or None)
            if self._unplaced:
                self._watch_unplaced(job)
        batch, shard_refs, submitted = inflight.pop(done[0])
        _, child_refs, _, _ = submitted  # (chunk ids, child shard refs, keep, task options)
        try:
            meta = ray.get(done[0])
        except (ray.exceptions.ObjectLostError, ray.exceptions.RayTaskError) as exc:
            if not child_refs or not _lost_input(exc):
                raise _cause(exc) from None
            # A cached child shard was lost with its node and could not be rebuilt: read storage.
            self.resubmitted += 1
            self._submit(job, layer, batch, keep, False, inflight)
            return
        for item, (stats, consumers, split, cost), shard_ref in itertools.zip_longest(batch, meta, shard_refs):
            self.profile.add(layer, cost, chunk=not split)
            if split:
                self._submit_parts(item, split, submitted, inflight)
                continue
            if consumers and shard_ref is not None and self._caches is not None:
                chunk = int(job.meta.layout.chunk_id(layer, *stats.chunk))
                self._caches.add(consumers, chunk, shard_ref, stats.shard_bytes)
                self._filed_bytes += stats.shard_bytes * len(consumers)
            yield stats

    def _check_fits(self, job, layer: int, request: TaskRequest) -> None:
        """Whether a node can run the task. One that none of the nodes up can run is still
        submitted (an autoscaler adds nodes only for pending tasks) and watched while the layer
        runs (``_watch_unplaced``), except where nothing will come: no autoscaler's view and
        ``placement_timeout`` 0, which fails at once as before."""
        key = (request.memory, tuple(sorted(request.resources.items())))
        if key in self._fits or key in self._unplaced:
            return
        why = unsatisfiable(request, _alive_nodes())
        if why is None:
            self._fits.add(key)
            return
        view = autoscaler.read()
        if not job.config.placement_timeout and not (view is not None and view.v2):
            raise _placement_error(job, layer, why)
        self._unplaced[key] = [layer, request, time.monotonic(), 0]

    def _watch_unplaced(self, job) -> None:
        """Requests no node fitted when submitted: done once a node that fits is up. A job error
        when the autoscaler says no node type fits them, or after ``placement_timeout`` (when set;
        with an autoscaler's view and 0 the job waits for the autoscaler's verdict).

        Ray's autoscaler v2 lists as "infeasible" whatever it cannot place on the nodes it has and
        adds now, including tasks that wait for nodes to free up when a group is at its maximum. So
        a verdict counts only while it launches nothing, two readings in a row, and only for a
        request no node that is up can run."""
        nodes = _alive_nodes()
        view = None
        for key, entry in list(self._unplaced.items()):
            layer, request, since, strikes = entry
            why = unsatisfiable(request, nodes)
            if why is None:
                del self._unplaced[key]
                self._fits.add(key)
                continue
            view = view or autoscaler.read()
            waited = time.monotonic() - since
            # an autoscaler v2 that never reported (its monitor down) gives no verdict: stop waiting
            autoscaling = view is not None and view.v2 and (view.version > 0 or waited < AUTOSCALER_GRACE_S)
            if autoscaling:
                verdict = not view.launching and any(request.is_bundle(b) for b in view.infeasible)
                entry[3] = strikes + 1 if verdict else 0
                if entry[3] >= 2:
                    raise _infeasible_error(job, layer, request)
            timeout = job.config.placement_timeout
            if (timeout or not autoscaling) and waited >= timeout:
                raise _placement_error(job, layer, why)

    def end_job(self) -> None:
        """Drop the job's cached shards (consumers outside the job never take theirs)."""
        if self._caches is not None:
            self._caches.close()
        if self._gate is not None:
            self._gate.close()
            self._job.read_gate = None
        self._caches, self._job, self._job_ref, self._gate = None, None, None, None
        self._unplaced.clear()
        self._token = None

    def shutdown(self) -> None:
        self.end_job()
        if self._started:
            ray.shutdown()
            self._started = False


def _alive_nodes() -> list[dict[str, float]]:
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def _placement_error(job, layer: int, why: str) -> ConfigError:
    budget = job.config.memory_budget
    return ConfigError(
        f"layer {layer} cannot be placed: {why} (memory budget {budget / 2**30:.2f} GiB, "
        f"waited {job.config.placement_timeout:.0f} s for a node). Lower memory_budget, "
        "give the cluster a node group with that much memory or the resource "
        "(kuberay/raycluster.yaml), or raise placement_timeout for an autoscaler")


def _infeasible_error(job, layer: int, request: TaskRequest) -> ConfigError:
    wanted = ", ".join(f"{k} {v / 2**30:.2f} GiB" if k == "memory" else f"{k} {v:g}"
                       for k, v in request.bundle().items())
    return ConfigError(
        f"layer {layer} cannot be placed: the cluster's autoscaler has no node type that fits its tasks "
        f"({wanted}; memory budget {job.config.memory_budget / 2**30:.2f} GiB). Lower memory_budget, or give "
        "the cluster a node group with that much memory and the resource (kuberay/raycluster.yaml: the "
        "general group carries general_resource, the highmem group highmem_resource)")


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Ray keeps retrying an address that does not answer, or that refuses this client's token
    (Ray >= 2.59 turns token authentication on by default), for half a minute or more before a
    vague error; check both first and say what is wrong."""
    if address in ("auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise ConfigError(f"Ray address {address!r} is a dashboard (jobs API) address, for `ray job submit "
                          "--address`; --address takes auto, HEAD:6379 or ray://HEAD:10001 (Ray Client)")
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"Ray address {address!r} is not auto, host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r} ({exc}); check the address "
                          "(auto, host:6379, ray://host:10001) and that the cluster is up") from exc
    from actors.ray_auth import refusal

    why = refusal(address, timeout_s)
    if why:
        raise ConfigError(why)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _lost_input(exc: Exception) -> bool:
    cause = getattr(exc, "cause", exc)
    return isinstance(exc, ray.exceptions.ObjectLostError) or isinstance(cause, ray.exceptions.ObjectLostError)


def _cause(exc: Exception) -> Exception:
    cause = getattr(exc, "cause", None)
    return cause if cause is not None else exc


def _get(ref):
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        raise _cause(exc) from None
