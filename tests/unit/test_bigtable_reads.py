"""How the Bigtable store reads (issue 19): one client per table and process, the meta and the
table check once, the read gate per store object, fewer requests (a chunk's nodes with their
parents and counters in one), a job's reads shared by its tasks, and answers the same as reading
the old way (and as SQLite)."""

import contextlib
import warnings

import numpy as np
import pytest

from raymesh.builder import build_graph
from raymesh.graph import open_store
from raymesh.layer2.remap import latest_l2_nodes, lower_neighbours, neighbour_chunks
from support import SYNTH_CHUNK, SYNTH_RES

PROJECT, INSTANCE = "raymesh-test", "pychunkedgraph"
TS = 2e9


@pytest.fixture(scope="module")
def graphs(bigtable_emulator, synthetic, tmp_path_factory):
    """The synthetic graph in SQLite and in a Bigtable table."""
    labels, agg = synthetic
    out = {}
    for kind in ("sqlite", "bigtable"):
        url = f"bigtable://{PROJECT}/{INSTANCE}/reads" if kind == "bigtable" else None
        out[kind] = build_graph(labels, str(tmp_path_factory.mktemp(kind)), resolution=SYNTH_RES,
                                chunk_size=SYNTH_CHUNK, agglomeration=agg, store_url=url, graph_id="reads").store_url
    return out


@pytest.fixture
def url(graphs):
    from raymesh.graph.bigtable import close_shared

    close_shared(graphs["bigtable"])  # each test starts without this process's client
    yield graphs["bigtable"]
    close_shared(graphs["bigtable"])


def _plain(rows: list[dict]) -> list[list]:
    """Range reads as plain values, node order included."""
    return [[(n, kids.tolist()) for n, kids in r.items()] for r in rows]


class CountingGate:
    """A read gate that counts slots taken and the most held at once."""

    def __init__(self):
        self.taken = 0
        self.inside = 0
        self.peak = 0

    @contextlib.contextmanager
    def __call__(self):
        self.taken += 1
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        try:
            yield
        finally:
            self.inside -= 1


# ---- one client per URL and process -----------------------------------------------------------

def test_one_client_per_url_per_process(url, monkeypatch):
    from google.cloud.bigtable.table import Table

    checks = []
    real_exists = Table.exists
    monkeypatch.setattr(Table, "exists", lambda self: checks.append(1) or real_exists(self))
    first = open_store(url)
    assert first.meta.layer_count == 4 and first.round_trips == 1  # the meta row, read once
    second = open_store(url)
    assert second._client is first._client and second._table is first._table
    assert second.meta.layer_count == 4 and second.round_trips == 0, "the meta is not read again"
    assert second.meta is not first.meta, "each store has its own copy to change"
    assert len(checks) == 1, "the table is checked once per process"
    from raymesh.graph.bigtable import BigtableStore

    unpickled = BigtableStore(*url.removeprefix("bigtable://").split("/"))  # what __reduce__ makes
    assert unpickled._client is first._client


def test_a_closed_client_is_not_handed_out_again(url):
    first, second = open_store(url), open_store(url)
    client = first._client
    first.close()
    extra = open_store(url)
    assert extra._client is client, "another store still uses it"
    extra.close()
    second.close()
    second.close()  # closing twice does not count twice
    third = open_store(url)
    assert third._client is not client  # the last user closed it: a fresh one
    assert third.range_read_chunk(third.get_chunk_id(layer=2, x=0, y=0, z=0))


def test_a_forked_process_opens_its_own_client(url, monkeypatch):
    """tensorstore (and gRPC) forbid using a parent's state after fork(): the cache is keyed by
    process id, so a child opens its own client (simulated: fork() itself is unsafe here)."""
    import raymesh.graph.bigtable as bigtable

    parent = open_store(url)
    real_pid = bigtable.os.getpid()
    monkeypatch.setattr(bigtable.os, "getpid", lambda: real_pid + 100_000)
    child = open_store(url)
    assert child._client is not parent._client
    assert child.range_read_chunk(child.get_chunk_id(layer=2, x=0, y=0, z=0)) == \
        parent.range_read_chunk(parent.get_chunk_id(layer=2, x=0, y=0, z=0))
    bigtable.close_shared(url)
    monkeypatch.undo()


def test_create_stores_are_never_shared(bigtable_emulator):
    from raymesh.graph.bigtable import BigtableStore, close_shared

    builder = BigtableStore(PROJECT, INSTANCE, "never_shared", create=True)
    reader = open_store(f"bigtable://{PROJECT}/{INSTANCE}/never_shared")
    assert reader._client is not builder._client
    builder.close()
    assert reader.version.startswith("raymesh"), "closing the builder's client leaves readers alone"
    close_shared()


def test_a_meta_written_in_this_process_is_read_again(url):
    store = open_store(url)
    meta = store.meta
    meta.custom_data["probe"] = {"written": 1}
    store.update_meta(meta)
    other = open_store(url)
    assert other.meta.custom_data["probe"] == {"written": 1}
    assert store.meta.custom_data["probe"] == {"written": 1}


def test_the_emulator_warning_is_silenced_and_only_it(url):
    from raymesh.graph.bigtable import close_shared

    close_shared()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        store = open_store(url)
        store.range_read_chunk(store.get_chunk_id(layer=2, x=0, y=0, z=0))
        warnings.warn("a real problem", RuntimeWarning)
    messages = [str(w.message) for w in seen]
    assert "a real problem" in messages
    assert not [m for m in messages if "Bigtable emulator" in m], messages


# ---- the read gate -------------------------------------------------------------------------------

def test_each_store_keeps_its_own_read_gate(url):
    mine, theirs = open_store(url), open_store(url)
    mine.meta
    mine.round_trips = 0
    gate = CountingGate()
    mine.read_gate = gate
    chunk = mine.get_chunk_id(layer=2, x=0, y=0, z=0)
    theirs.range_read_chunk(chunk)
    assert gate.taken == 0, "another store's gate is not this one's"
    nodes = mine.range_read_chunk(chunk)
    mine.get_parents(list(nodes))
    assert gate.taken == mine.round_trips == 2 and gate.peak == 1


def test_a_reading_session_takes_one_slot_for_its_reads(url):
    from raymesh.layer2.remap import fetch_with_upper

    store = open_store(url)
    store.meta
    store.round_trips = 0
    gate = store.read_gate = CountingGate()
    with store.reading():
        with store.reading():  # nested: the outer one holds the slot
            store.range_read_chunk(store.get_chunk_id(layer=2, x=0, y=0, z=0))
        store.range_read_chunk(store.get_chunk_id(layer=2, x=1, y=0, z=0))
        assert gate.inside == 1
    assert gate.taken == 1 and gate.inside == 0 and store.round_trips == 2
    with store.reading():
        pass
    assert gate.taken == 1, "a session that reads nothing takes no slot"
    store.round_trips = 0
    fetch_with_upper(store, (0, 0, 0), time_stamp=TS)
    assert gate.taken == 2 and store.round_trips >= 2, "fetch_neighbourhoods reads in one session"


# ---- fewer requests, same answers ---------------------------------------------------------------

def test_a_chunks_nodes_come_with_their_parents_and_counters_in_one_request(url, graphs):
    store, sqlite = open_store(url), open_store(graphs["sqlite"])
    layout = store.layout
    for layer in (2, 3, 4):
        chunks = [int(layout.chunk_id(layer, *c)) for c in layout.iter_chunk_coords(layer)]
        chunks = chunks + chunks[:1]  # a chunk asked twice is answered twice
        store.round_trips = 0
        rows, parents = store.range_read_chunks_with_parents(chunks, time_stamp=TS)
        assert store.round_trips == 1, layer
        assert _plain(rows) == _plain([sqlite.range_read_chunk(c, time_stamp=TS) for c in chunks])
        assert _plain(rows) == _plain(store.range_read_chunks(chunks, time_stamp=TS))
        nodes = np.array(sorted({n for r in rows for n in r}), dtype=np.uint64)
        assert sorted(parents) == nodes.tolist()
        assert [parents[n] for n in nodes.tolist()] == \
            sqlite.get_parents(nodes, time_stamp=TS, fail_to_zero=True).tolist()
        assert all(list(r) == sorted(r) for r in rows), "nodes in id order, as before"


def test_known_parents_are_not_read_again_and_change_nothing(url):
    store = open_store(url)
    layout = store.layout
    chunks = [int(layout.chunk_id(2, *c)) for c in layout.iter_chunk_coords(2)]
    rows, parents = store.range_read_chunks_with_parents(chunks, time_stamp=TS)
    ids = np.array(sorted({n for r in rows for n in r}) + [0], dtype=np.uint64)
    store.round_trips = 0
    plain = store.get_ancestors(ids, [3, 4], time_stamp=TS)
    plain_trips, store.round_trips = store.round_trips, 0
    known = store.get_ancestors(ids, [3, 4], time_stamp=TS, parents=parents)
    assert all(np.array_equal(plain[s], known[s]) for s in (3, 4))
    assert store.round_trips == plain_trips - 1, "the layer-2 parents came with the range read"
    for stop in (3, 4):
        for ceil in (True, False):
            assert np.array_equal(store.get_roots(ids, stop_layer=stop, time_stamp=TS, ceil=ceil, fail_to_zero=True),
                                  store.get_roots(ids, stop_layer=stop, time_stamp=TS, ceil=ceil, fail_to_zero=True,
                                                  parents=parents))


def test_nodes_above_the_chunk_counter_are_not_listed(bigtable_emulator, synthetic, tmp_path):
    """PCG's range read stops at the chunk's counter (pcg-compat.md 2.6): a row with a higher
    segment id was never allocated (a stray write) and is not a node of the chunk."""
    from raymesh.graph.bigtable import FAMILY_HIERARCHY, _ids_value, pad

    labels, agg = synthetic
    url = build_graph(labels, str(tmp_path), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg,
                      store_url=f"bigtable://{PROJECT}/{INSTANCE}/stray_{tmp_path.name}").store_url
    store = open_store(url)
    chunk = store.get_chunk_id(layer=2, x=0, y=0, z=0)
    before = store.range_read_chunk(chunk)
    stray = chunk | (max(store.layout.get_segment_id(n) for n in before) + 5)
    store._write_rows([store._row(pad(stray), FAMILY_HIERARCHY, b"children",
                                  _ids_value(np.array([1], np.uint64)), None)])
    assert _plain([store.range_read_chunk(chunk)]) == _plain([before])
    rows, parents = store.range_read_chunks_with_parents([chunk])
    assert _plain(rows) == _plain([before]) and stray not in parents


# ---- a job's reads shared by its tasks ----------------------------------------------------------

def test_stores_given_one_token_share_their_reads(url, graphs):
    from raymesh.layer2.remap import fetch_with_upper

    first, second, alone = open_store(url), open_store(url), open_store(url)
    first.share_reads("job-1")
    second.share_reads("job-1")
    sqlite = open_store(graphs["sqlite"])
    for coords in sqlite.layout.iter_chunk_coords(2):
        want = _canon(fetch_with_upper(sqlite, coords, time_stamp=TS))
        assert _canon(fetch_with_upper(first, coords, time_stamp=TS)) == want
        assert _canon(fetch_with_upper(alone, coords, time_stamp=TS)) == want
    trips = second.round_trips
    for coords in sqlite.layout.iter_chunk_coords(2):
        assert _canon(fetch_with_upper(second, coords, time_stamp=TS)) == \
            _canon(fetch_with_upper(sqlite, coords, time_stamp=TS))
    assert second.round_trips == trips == 0, "everything was read by the first store of the job"
    assert first.rows_read < alone.rows_read / 2
    layout = first.layout
    rows = first.range_read_chunk(int(layout.chunk_id(2, 0, 0, 0)), time_stamp=TS)
    with pytest.raises(ValueError, match="read-only"):
        next(iter(rows.values()))[0] = 1  # shared arrays cannot be changed under other readers
    other_job = open_store(url)
    other_job.share_reads("job-2")
    other_job.range_read_chunk(int(layout.chunk_id(2, 0, 0, 0)), time_stamp=TS)
    assert other_job.round_trips == 1, "another job reads for itself"
    # The stitching plan's reads (children, parents of higher layers) are shared too.
    from raymesh.stitch import plan_chunk

    for coords in layout.iter_chunk_coords(3):
        chunk = int(layout.chunk_id(3, *coords))
        assert plan_chunk(first, 3, chunk, TS) == plan_chunk(sqlite, 3, chunk, TS)
    trips = second.round_trips
    for coords in layout.iter_chunk_coords(3):
        chunk = int(layout.chunk_id(3, *coords))
        assert plan_chunk(second, 3, chunk, TS) == plan_chunk(sqlite, 3, chunk, TS)
    assert second.round_trips == trips


def test_a_write_in_this_process_empties_what_was_shared(bigtable_emulator, synthetic, tmp_path):
    import datetime as dt

    labels, agg = synthetic
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    url = build_graph(labels, str(tmp_path), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg,
                      store_url=f"bigtable://{PROJECT}/{INSTANCE}/shared_{tmp_path.name}", time_stamp=t0).store_url
    reader, writer = open_store(url), open_store(url)
    reader.share_reads("job")
    layout = reader.layout
    root_chunk = int(layout.chunk_id(layout.n_layers, 0, 0, 0))
    later = t0 + dt.timedelta(minutes=5)
    before = reader.range_read_chunk(root_chunk, time_stamp=later)
    old_root = min(before)
    new_root = root_chunk | 0xFFFF00
    writer.write_nodes(np.array([new_root], np.uint64), [writer.get_children(old_root)], t0 + dt.timedelta(minutes=1))
    after = reader.range_read_chunk(root_chunk, time_stamp=later)
    assert new_root in after and new_root not in before


# ---- the old way of reading, for comparison --------------------------------------------------------

def _reference_fetch_neighbourhoods(store, coords_list, time_stamp=None):
    """``remap.fetch_neighbourhoods`` as it was before issue 19 (range read, then the whole
    ancestor walk): what the batched reads must still return."""
    from raymesh.layer2.remap import Neighbourhood

    layout = store.layout
    plans = [(layout.stop_layer(c), neighbour_chunks(layout, c), lower_neighbours(layout, c)) for c in coords_list]
    chunks = sorted({ch for _, near, below in plans
                     for ch in near + [int(layout.chunk_id(2, *c)) for _, c in below]})
    rows = dict(zip(chunks, (latest_l2_nodes(r) for r in store.range_read_chunks(chunks, time_stamp=time_stamp))))
    partial = []
    for stop, near, below in plans:
        own = dict(rows[near[0]])
        others = {n: svs for ch in near[1:] for n, svs in rows[ch].items()}
        lower = {axes: (layout.stop_layer(c), sorted(rows[int(layout.chunk_id(2, *c))]))
                 for axes, c in below} if own else {}
        partial.append((stop, own, others, lower))
    walk = sorted({n for _, own, others, lower in partial
                   for n in [*own, *others, *(m for _, nodes in lower.values() for m in nodes)]})
    stops = sorted({stop for stop, *_ in partial} | {s for *_, lower in partial for s, _ in lower.values()})
    anc = store.get_ancestors(np.array(walk, dtype=np.uint64), stops, time_stamp=time_stamp) if walk else {}
    ancestor_at = {s: dict(zip(walk, anc[s].tolist())) for s in stops} if walk else {s: {} for s in stops}
    out = []
    for stop, own, others, lower in partial:
        at = ancestor_at[stop]
        mine = {n: at[n] for n in [*own, *others]}
        used = {stop} | {s for s, _ in lower.values()}
        out.append(Neighbourhood(stop, own, others, mine, lower, {s: ancestor_at[s] for s in used}))
    return out


def _canon_hood(h):
    """A neighbourhood as plain values, dict orders included."""
    return (h.stop_layer, [(k, v.tolist()) for k, v in h.own.items()], [(k, v.tolist()) for k, v in h.others.items()],
            list(h.ancestor.items()), list(h.lower.items()), [(s, list(a.items())) for s, a in h.ancestor_at.items()])


def _canon(result):
    if isinstance(result, tuple):  # fetch_with_upper
        hood, upper = result
        return _canon_hood(hood), [(axis, list(c), _canon_hood(h)) for axis, c, h in upper]
    return [_canon_hood(h) for h in result]


@pytest.mark.parametrize("kind", ["sqlite", "bigtable", "bigtable_shared"])
def test_batched_neighbourhoods_equal_the_old_reads(graphs, kind):
    from raymesh.layer2.remap import fetch_neighbourhoods, upper_neighbours

    store = open_store(graphs["bigtable" if kind.startswith("bigtable") else "sqlite"])
    if kind == "bigtable_shared":
        store.share_reads("equal-the-old-reads")
    layout = store.layout
    for coords in layout.iter_chunk_coords(2):
        batch = [coords] + [up for _, up in upper_neighbours(layout, coords)]
        for ts in (TS, None):
            assert _canon(fetch_neighbourhoods(store, batch, time_stamp=ts)) == \
                _canon(_reference_fetch_neighbourhoods(store, batch, time_stamp=ts))


@pytest.mark.real_data
def test_batched_neighbourhoods_equal_the_old_reads_on_a_real_crop(bigtable_emulator, real_labels, tmp_path):
    """The same on 3x3x2 chunks of the real volume (many nodes per chunk, skip connections),
    Bigtable with and without shared reads against the old reads and against SQLite."""
    from raymesh.layer2.remap import fetch_neighbourhoods, fetch_with_upper, upper_neighbours

    crop = np.asfortranarray(real_labels[128:320, 128:320, 192:320])
    urls = {kind: build_graph(crop, str(tmp_path / kind), resolution=(8, 8, 40), chunk_size=(64, 64, 64),
                              graph_id="crop", store_url=f"bigtable://{PROJECT}/{INSTANCE}/crop_{tmp_path.name}"
                              if kind == "bigtable" else None).store_url
            for kind in ("sqlite", "bigtable")}
    sqlite, bigtable, shared = open_store(urls["sqlite"]), open_store(urls["bigtable"]), open_store(urls["bigtable"])
    shared.share_reads("real-crop")
    layout = sqlite.layout
    for coords in layout.iter_chunk_coords(2):
        batch = [coords] + [up for _, up in upper_neighbours(layout, coords)]
        want = _canon(_reference_fetch_neighbourhoods(sqlite, batch, time_stamp=TS))
        assert _canon(_reference_fetch_neighbourhoods(bigtable, batch, time_stamp=TS)) == want
        for store in (sqlite, bigtable, shared):
            assert _canon(fetch_neighbourhoods(store, batch, time_stamp=TS)) == want, coords
        assert _canon(fetch_with_upper(shared, coords, time_stamp=TS)) == _canon(fetch_with_upper(sqlite, coords, time_stamp=TS))
