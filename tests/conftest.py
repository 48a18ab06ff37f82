"""Fixtures shared by both test layers: the synthetic dataset, built graphs, the real volume."""

from __future__ import annotations

import numpy as np
import pytest

from support import REAL_VOLUME, SYNTH_CHUNK, SYNTH_RES


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def synthetic():
    from raymesh.synthetic import branching_tubes

    return branching_tubes()


@pytest.fixture(scope="session")
def synthetic_graph(synthetic, tmp_path_factory):
    """The synthetic dataset built into SQLite (with one downsampled mip)."""
    from raymesh.builder import build_graph

    labels, agg = synthetic
    out = tmp_path_factory.mktemp("synthetic_graph")
    summary = build_graph(labels, str(out), resolution=SYNTH_RES, chunk_size=SYNTH_CHUNK, agglomeration=agg)
    return summary


@pytest.fixture(scope="session")
def real_labels():
    if not REAL_VOLUME.exists():
        pytest.skip(f"real volume not present at {REAL_VOLUME} (only in the project's shared data)")
    from raymesh.volume import load_labels

    return np.asarray(load_labels(str(REAL_VOLUME)))


@pytest.fixture(scope="session")
def real_graph(real_labels, tmp_path_factory):
    """The full real volume built at 64^3 chunks, 8x8x40 nm (about 40 s on 2 cores)."""
    from raymesh.builder import build_graph

    out = tmp_path_factory.mktemp("real_graph")
    return build_graph(real_labels, str(out), resolution=(8, 8, 40), chunk_size=(64, 64, 64))


@pytest.fixture(scope="session")
def bigtable_emulator():
    """The real Bigtable emulator on 127.0.0.1 (a free port), for the whole session.

    Sets BIGTABLE_EMULATOR_HOST, which google-cloud-bigtable (and processes started later, such
    as spawned readers) use instead of the service.
    """
    import os
    import socket
    import subprocess
    import time

    from support import find_cbtemulator

    running = os.environ.get("BIGTABLE_EMULATOR_HOST")
    if running:  # .ci/run (or the developer) started one on loopback: use it
        host, _, port = running.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            yield running
            return
        except (OSError, ValueError):
            pass
    binary = find_cbtemulator()
    if binary is None:
        pytest.skip("Bigtable emulator (cbtemulator from the Google Cloud CLI) not found; "
                    "install the CLI's bigtable component or set CBTEMULATOR")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "-host", "127.0.0.1", "-port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"the Bigtable emulator did not start on 127.0.0.1:{port}")
            time.sleep(0.1)
    previous = os.environ.get("BIGTABLE_EMULATOR_HOST")
    os.environ["BIGTABLE_EMULATOR_HOST"] = f"127.0.0.1:{port}"
    yield f"127.0.0.1:{port}"
    if previous is None:
        os.environ.pop("BIGTABLE_EMULATOR_HOST", None)
    else:
        os.environ["BIGTABLE_EMULATOR_HOST"] = previous
    proc.terminate()
    proc.wait(timeout=10)
