"""The first hour of a new user (issue 22): help texts with defaults, messages that say how to fix
the input, YAML that takes what the flags take, a range clipped to the volume, output streams as
Unix tools keep them (people: stderr; JSON: stdout), ``--version`` and ``python -m raymesh``.

Everything runs in this process or in a subprocess without Ray (the unit layer never starts it).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from raymesh.cli import build_parser, main
from raymesh.cli_mesh import config_from_args
from raymesh.config import MeshConfig, load_config
from raymesh.errors import ConfigError

BIN = Path(sys.executable).parent
# The commands this issue covers (view and export document their own flags).
COMMANDS = ["build-graph", "synth", "demo", "mesh", "info", "verify", "edit", "remesh", "watch"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo dataset's graph (built, not meshed), as `raymesh demo` builds it."""
    from raymesh.builder import build_graph
    from raymesh.demo import DEMO_CHUNK, DEMO_RESOLUTION
    from raymesh.synthetic import branching_tubes

    labels, agg = branching_tubes()
    out = tmp_path_factory.mktemp("first_hour")
    return build_graph(labels, str(out / "demo"), resolution=DEMO_RESOLUTION, chunk_size=DEMO_CHUNK,
                       agglomeration=agg, graph_id="demo")


# ---- help ---------------------------------------------------------------------------------------

def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_help_and_says_its_default(command):
    parser = _subparsers()[command]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help is not argparse.SUPPRESS, f"{command} {name} has no help"
        takes_value = action.nargs != 0
        if action.option_strings and takes_value:
            text = action.help.lower()
            assert "default" in text or "required" in text or "with --" in text, \
                f"{command} {name}: the help states no default: {action.help!r}"


def test_help_shows_the_real_defaults(capsys):
    assert main(["mesh", "-h"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("--max-error NM", "(default: 40, PCG's)", "(default: graphene_meshes, PCG's)",
                     "(default: auto)", "(default: 32)", "RAY_AUTH_TOKEN", "--chunk-start X Y Z",
                     "default: the mip the graph's custom_data['mesh'] records, else 0"):
        assert fragment in text, fragment
    defaults = MeshConfig.model_fields
    assert defaults["max_error"].default == 40 and defaults["mesh_dir"].default == "graphene_meshes"
    assert defaults["max_graph_reads"].default == 32 and defaults["executor"].default == "auto"


def test_version_comes_from_the_package_metadata(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"raymesh {version('raymesh')}"


def test_python_dash_m_is_the_console_script(demo):
    script = BIN / "raymesh"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    for argv in (["--version"], ["info", "--graph", demo.store_url], ["mesh", "--layers", "4-2"]):
        a = subprocess.run([sys.executable, "-m", "raymesh", *argv], capture_output=True, text=True, timeout=120)
        b = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=120)
        assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), argv
    assert a.returncode == 2 and "runs backwards" in a.stderr


# ---- messages -----------------------------------------------------------------------------------
# (each one-line refusal of the command line is in test_cli_errors; here the wording and the API)

@pytest.mark.parametrize("flags, message", [
    ({"layers": "4-2"}, "--layers 4-2: the range runs backwards: write the lower layer first (2-4)"),
    ({"layers": "1-3"}, "--layers 1-3: there are no meshes below layer 2 (layer 1 is the supervoxels): start "
                        "at 2, e.g. 2-3"),
    ({"layers": "x"}, "--layers x: not a layer, a range like 2-7 or a list like 2,3,5"),
    ({"chunk_start": [0, 0, 0]}, "--chunk-start needs --chunk-end too: a chunk range is two corners in chunks "
                                 "of the first layer meshed"),
    ({"chunk_start": [2, 0, 0], "chunk_end": [1, 1, 1]}, "--chunk-end 1 1 1 must be greater than --chunk-start "
                                                         "2 0 0 on every axis"),
    ({"memory_budget": "lots"}, "--memory-budget lots: 'lots' is not a size"),
])
def test_flag_messages_name_the_flag_and_the_fix(flags, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, from_flags=True, graph="sqlite:///x.sqlite", **flags)
    assert str(err.value).startswith(message), str(err.value)
    assert "(top level)" not in str(err.value) and "Value error" not in str(err.value)


def test_config_file_messages_name_the_key_and_the_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("graph: sqlite:///x.sqlite\nchunk_end: [1, 1, 1]\n")
    with pytest.raises(ConfigError, match=r"chunk_end needs chunk_start too.*\(in .*job.yaml\)"):
        load_config(str(path))
    path.write_text("graph: sqlite:///x.sqlite\nlayers: 4-2\n")
    with pytest.raises(ConfigError, match=r"'layers: 4-2' in .*job.yaml: the range runs backwards"):
        load_config(str(path))


# ---- YAML takes what the flags take -------------------------------------------------------------

PAIRS = [
    (["--layers", "2-3"], "layers: 2-3"),
    (["--layers", "2,3"], 'layers: "2,3"'),
    (["--layers", "2,4"], "layers: [2, 4]"),
    (["--layer", "3"], "layer: 3"),
    (["--layers", "3"], "layers: 3"),
    (["--max-layer", "5"], "max_layer: 5"),
    (["--chunk-start", "0", "0", "0", "--chunk-end", "2", "2", "1"], "chunk_start: 0 0 0\nchunk_end: [2, 2, 1]"),
    (["--mip", "1", "--max-error", "10", "--mesh-dir", "m"], "mip: 1\nmax_error: 10\nmesh_dir: m"),
    (["--time-stamp", "1700000000", "--dust-threshold", "5"], "time_stamp: 1700000000\ndust_threshold: 5"),
    (["--memory-budget", "512MiB", "--max-stitch-bytes", "1MiB"], "memory_budget: 512MiB\nmax_stitch_bytes: 1MiB"),
    (["--workers", "3", "--address", "auto", "--executor", "ray"], "workers: 3\naddress: auto\nexecutor: ray"),
    (["--graph-meta", "skip", "--max-graph-reads", "4"], "graph_meta: skip\nmax_graph_reads: 4"),
    (["--chunks-per-task", "2", "--highmem-layer", "5", "--placement-timeout", "9"],
     "chunks_per_task: 2\nhighmem_layer: 5\nplacement_timeout: 9"),
    (["--force"], "force: true"),
    (["--no-lod-chain", "--lod-error", "12"], "lod_chain: false\nlod_error: 12"),
    (["--lod-chain"], "lod_chain: true"),
    (["--simplifier", "meshopt"], "simplifier: meshopt"),
]


@pytest.mark.parametrize("flags, yaml_text", PAIRS, ids=[" ".join(f) for f, _ in PAIRS])
def test_yaml_takes_what_the_flags_take(tmp_path, flags, yaml_text):
    path = tmp_path / "job.yaml"
    path.write_text(f"graph: sqlite:///x.sqlite\n{yaml_text}\n")
    from_yaml = load_config(str(path))
    from_flags = config_from_args(build_parser().parse_args(["mesh", "--graph", "sqlite:///x.sqlite", *flags]))
    assert from_yaml == from_flags


def test_every_mesh_flag_has_a_yaml_pair():
    parser = _subparsers()["mesh"]
    covered = {a for flags, _ in PAIRS for a in flags if a.startswith("--")}
    cli_only = {"--help", "--config", "--graph", "--repair", "--json", "--summary-json", "--quiet"}
    options = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    assert options - cli_only <= covered, options - cli_only - covered


def test_a_layer_flag_replaces_the_files_layers(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("graph: sqlite:///x.sqlite\nmax_layer: 6\n")
    assert load_config(str(path)).layers == [2, 3, 4, 5, 6]
    args = build_parser().parse_args(["mesh", "--config", str(path), "--layer", "3"])
    assert config_from_args(args).layers == [3]


# ---- a chunk range partly outside the volume ----------------------------------------------------

def test_a_range_reaching_outside_is_clipped_with_a_note(demo, capsys):
    code = main(["mesh", "--graph", demo.store_url, "--layer", "2", "--chunk-start", "-1", "0", "0",
                 "--chunk-end", "9", "9", "1", "--executor", "serial", "--mesh-dir", "clipped", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "note: chunk range -1 0 0 .. 9 9 1 reaches outside layer 2 (chunks 0 0 0 .. 3 3 3); meshing the part " \
           "inside, 0 0 0 .. 3 3 1" in err
    assert json.loads(out)["layers"][0]["chunks"] == 9


def test_a_range_wholly_outside_is_refused(demo):
    from raymesh.driver import run

    config = MeshConfig(graph=demo.store_url, chunk_start=[3, 3, 3], chunk_end=[5, 5, 5], executor="serial",
                        mesh_dir="outside")
    with pytest.raises(ConfigError, match=r"chunk range 3 3 3 \.\. 5 5 5 is outside layer 2, whose chunks are "
                                          r"0 0 0 \.\. 3 3 3 \(end not included\)"):
        run(config, progress=False)


# ---- streams ------------------------------------------------------------------------------------

def test_mesh_json_alone_on_stdout_people_on_stderr(demo, capsys):
    assert main(["mesh", "--graph", demo.store_url, "--layers", "2-4", "--executor", "serial",
                 "--mesh-dir", "streams", "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)  # nothing but the JSON
    assert [layer["layer"] for layer in summary["layers"]] == [2, 3, 4]
    assert "layer 4: 1 chunks" in err and "meshes: " in err and '"layers": [' not in err

    assert main(["mesh", "--graph", demo.store_url, "--layers", "2-4", "--executor", "serial",
                 "--mesh-dir", "streams", "--summary-json", "-"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["layers"][0]["chunks_skipped"] == 27 and "already done" in err


def test_mesh_without_json_leaves_stdout_empty_and_quiet_leaves_nothing(demo, capsys, tmp_path):
    assert main(["mesh", "--graph", demo.store_url, "--executor", "serial", "--mesh-dir", "quiet"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "layer 2: 27 chunks" in err
    assert "\r" not in err, "no progress bar in a log: its carriage returns read as blank lines there"
    path = tmp_path / "summary.json"
    assert main(["mesh", "--graph", demo.store_url, "--executor", "serial", "--mesh-dir", "quiet", "--quiet",
                 "--summary-json", str(path)]) == 0
    assert capsys.readouterr() == ("", "")
    assert json.loads(path.read_text())["layers"][0]["chunks"] == 27


def test_errors_reach_stderr_even_when_quiet(demo, capsys):
    assert main(["mesh", "--graph", demo.store_url, "--layers", "9", "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "this graph has layers 2..4" in err


def test_build_graph_info_and_verify_streams(demo, capsys, tmp_path):
    from raymesh.synthetic import branching_tubes

    import numpy as np

    labels, agg = branching_tubes()
    np.save(tmp_path / "labels.npy", labels)
    argv = ["build-graph", "--labels", str(tmp_path / "labels.npy"), "--resolution", "16", "16", "40",
            "--chunk-size", "32", "32", "16", "--out", str(tmp_path / "g")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out == "" and "graph built" in err
    assert main(argv + ["--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["already_built"] is True and "already built" in err

    assert main(["info", "--graph", demo.store_url]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["app"]["supported_api_versions"] and err == ""

    assert main(["mesh", "--graph", demo.store_url, "--layers", "2-4", "--executor", "serial", "-q"]) == 0
    assert main(["verify", "--graph", demo.store_url, "--executor", "serial", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["ok"] is True and "is complete and sound" in err
    assert main(["verify", "--graph", demo.store_url, "--executor", "serial", "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")


def test_demo_prints_a_short_summary_on_stderr_only(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "raymesh", "demo", "--out", str(tmp_path / "demo_out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) <= 7 and all(line.strip() for line in lines), proc.stderr
    assert lines[0].startswith("graph: sqlite://") and any(line.startswith("layer 4: ") for line in lines)
    assert not any(word in proc.stderr for word in ("WARNING", "INFO", "Token", "{"))


def test_rays_token_notice_is_dropped_and_its_warnings_kept():
    """Ray >= 2.59 logs "Token authentication is enabled for this Ray cluster" on every new local
    cluster (ray._private.authentication.authentication_token_setup); raymesh's own local Ray needs
    nothing from the user, so the line is dropped. Ray's other warnings still show."""
    from ray._private.authentication import authentication_token_setup as setup

    from raymesh.driver import quiet_ray_logs

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = logging.getLogger(setup.__name__)
    handler = Keep()
    logger.addHandler(handler)
    try:
        quiet_ray_logs()
        quiet_ray_logs()  # idempotent
        setup._warn_token_auth_enabled()
        setup._warn_token_auth_disabled()
    finally:
        logger.removeHandler(handler)
    assert not any("is enabled" in m for m in seen)
    assert any("is disabled" in m for m in seen), "a warning a user can act on stays"


# ---- a Ray cluster that refuses the client (token authentication) -------------------------------

@pytest.fixture
def grpc_server():
    """A gRPC server on 127.0.0.1 answering every call with the given status, as a Ray head with
    token authentication answers a client without the token (UNAUTHENTICATED)."""
    from concurrent import futures

    import grpc

    servers = []

    def start(code):
        class Answer(grpc.GenericRpcHandler):
            def service(self, handler_call_details):
                def unary(request, context):
                    context.abort(code, "Invalid or missing authentication token")

                return grpc.unary_unary_rpc_method_handler(unary)

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        server.add_generic_rpc_handlers((Answer(),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return port

    yield start
    for server in servers:
        server.stop(0)


def test_a_refusing_cluster_is_named_with_the_variables_to_set(grpc_server, monkeypatch):
    import time

    import grpc

    from actors.ray_executor import RayExecutor

    from actors import ray_auth

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(ray_auth, "_token_auth_on", lambda: False)  # as in a shell without RAY_AUTH_MODE
    port = grpc_server(grpc.StatusCode.UNAUTHENTICATED)
    for address in (f"ray://127.0.0.1:{port}", f"127.0.0.1:{port}"):
        t0 = time.monotonic()
        with pytest.raises(ConfigError) as err:
            RayExecutor(address=address)
        assert time.monotonic() - t0 < 10
        text = str(err.value)
        assert text.startswith(f"the Ray cluster at {address} requires token authentication and this client sent "
                               "no token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=")
        assert "`ray get-auth-token` on the head node prints it" in text


def test_a_wrong_token_is_named_as_such(grpc_server, monkeypatch):
    import grpc

    from actors import ray_auth

    monkeypatch.setattr(ray_auth, "_token_auth_on", lambda: True)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x" * 32)
    port = grpc_server(grpc.StatusCode.UNAUTHENTICATED)
    assert ray_auth.refused(f"ray://127.0.0.1:{port}").startswith(
        f"the Ray cluster at ray://127.0.0.1:{port} refused this client's token (from RAY_AUTH_TOKEN): set "
        "RAY_AUTH_TOKEN to the cluster's token")


def test_other_answers_are_left_to_ray(grpc_server):
    import grpc

    from actors.ray_auth import refusal

    assert refusal(f"ray://127.0.0.1:{grpc_server(grpc.StatusCode.UNIMPLEMENTED)}") is None


def test_a_dashboard_address_is_not_a_ray_address():
    from actors.ray_executor import RayExecutor

    with pytest.raises(ConfigError, match=r"'http://127.0.0.1:8265' is a dashboard \(jobs API\) address, for `ray "
                                          r"job submit --address`; --address takes auto, HEAD:6379 or ray://HEAD:10001"):
        RayExecutor(address="http://127.0.0.1:8265")


def test_an_error_mid_layer_starts_a_line_of_its_own(demo, capsys, monkeypatch):
    """On a terminal the layer's bar is closed (ended with a newline) however the layer ends, so
    the error printed next is not glued to the bar."""
    from raymesh import driver
    from raymesh.errors import MeshingError
    from raymesh.executors import SerialExecutor

    class Failing(SerialExecutor):
        def run_layer(self, job, layer):
            yield from list(super().run_layer(job, layer))[:2]
            raise MeshingError("layer 2 chunk (1, 0, 0): the shard is corrupt")

    monkeypatch.setattr(driver, "_isatty", lambda stream: True)
    with pytest.raises(MeshingError):
        driver.run(MeshConfig(graph=demo.store_url, mesh_dir="mid_layer"), executor=Failing())
    err = capsys.readouterr().err
    assert "layer 2:" in err and "2/27" in err and err.endswith("\n"), repr(err[-200:])
