"""``raymesh view``'s server: what Neuroglancer's graphene datasource reads, and bad requests.

The graph has had a merge remeshed into ``dynamic/``, so manifests mix initial shards and dynamic
files. Requests go through http.client, which sends paths exactly as written (no normalisation),
so traversal attempts reach the server as an attacker would send them.
"""

from __future__ import annotations

import http.client
import json
import os

import numpy as np
import pytest

from raymesh.formats.draco import decode
from raymesh.graph import open_store
from raymesh.serve import ViewServer
from support import meshed_with_a_merge


@pytest.fixture(scope="module")
def graph(synthetic, tmp_path_factory):
    folder = tmp_path_factory.mktemp("view_graph")
    url = meshed_with_a_merge(synthetic, folder)
    # A file beside the served folder, and a symlink inside it pointing there: neither may be served.
    (folder / "secret.txt").write_text("not for the web")
    os.symlink(folder / "secret.txt", folder / "ws" / "link-out")
    return url, folder


@pytest.fixture(scope="module")
def server(graph):
    with ViewServer(graph[0], port=0) as s:
        yield s


def request(server, path: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def get_json(server, path: str, **kw):
    status, headers, body = request(server, path, **kw)
    assert status == 200, (path, status, body[:300])
    return json.loads(body)


def error(server, path: str, **kw) -> tuple[int, str]:
    status, headers, body = request(server, path, **kw)
    assert 400 <= status < 500, (path, status, body[:200])
    assert headers["Content-Type"] == "application/json", headers  # what Neuroglancer shows the message of
    data = json.loads(body)
    assert data["code"] == status and data["message"]
    return status, data["message"]


def roots_of(url: str) -> list[int]:
    from raymesh.export import ViewerMeshes

    return ViewerMeshes(url).current_roots()


SEG = "/segmentation/api/v1/table/{t}"


def test_info_is_pcg_shaped_and_points_at_this_server(server):
    table = server.view.api.table
    info = get_json(server, f"/segmentation/table/{table}/info")
    assert info["data_dir"] == f"http://127.0.0.1:{server.port}/data/ws"
    assert 1 in info["app"]["supported_api_versions"]
    assert info["graph"]["chunk_size"] and info["graph"]["n_bits_for_layer_id"] == 8
    assert info["mesh"] == "graphene_meshes" and info["sharded_mesh"] is True
    assert info["scales"] and info["type"] == "segmentation"
    assert get_json(server, f"/segmentation/1.0/{table}/info") == info  # the legacy link style
    mesh_info = get_json(server, "/data/ws/graphene_meshes/info")
    assert mesh_info["@type"] == "neuroglancer_legacy_mesh" and mesh_info["sharding"]


def test_manifests_are_byte_ranges_neuroglancer_can_read(server, graph):
    """Every fragment of every root: the manifest entry, read the way Neuroglancer's graphene
    backend reads it (``~layer/shard:offset:size`` as a Range of ``initial/``, anything else as a
    file in ``dynamic/``), decodes as Draco; the merged root has dynamic fragments."""
    table = server.view.api.table
    kinds = set()
    for root in roots_of(graph[0]):
        man = get_json(server, f"/meshing/api/v1/table/{table}/manifest/{root}:0?verify=1&prepend_seg_ids=1")
        assert man["fragments"], root
        for entry in man["fragments"]:
            assert entry.startswith("~")
            node, _, fragment = entry[1:].partition(":")
            assert int(node) > 0
            if fragment.startswith("~"):
                path, offset, size = fragment[1:].split(":")
                offset, size = int(offset), int(size)
                status, headers, data = request(server, f"/data/ws/graphene_meshes/initial/{path}",
                                                headers={"Range": f"bytes={offset}-{offset + size - 1}"})
                assert status == 206 and headers["Content-Range"].startswith(f"bytes {offset}-")
                kinds.add("initial")
            else:
                status, _, data = request(server, f"/data/ws/graphene_meshes/dynamic/{fragment}")
                assert status == 200
                kinds.add("dynamic")
            assert len(decode(data).faces) > 0
    assert kinds == {"initial", "dynamic"}
    plain = get_json(server, f"/meshing/api/v1/table/{table}/manifest/{root}:0?verify=1&return_seg_ids=1")
    assert len(plain["seg_ids"]) == len(plain["fragments"]) and not plain["fragments"][0].startswith(f"~{root}")


def test_supervoxel_lookups_match_the_graph(server, graph):
    table = server.view.api.table
    store = open_store(graph[0])
    seg = SEG.format(t=table)
    chunk = np.asarray(store.meta.chunk_size)
    for root in roots_of(graph[0])[:3]:
        leaves = [int(x) for x in get_json(server, f"{seg}/node/{root}/leaves?int64_as_str=1")["leaf_ids"]]
        assert leaves and all(store.layout.get_chunk_layer(sv) == 1 for sv in leaves)
        assert {int(r) for r in store.get_roots(np.array(leaves, dtype=np.uint64))} == {root}
        sv = leaves[0]
        assert get_json(server, f"{seg}/node/{sv}/root?int64_as_str=1") == {"root_id": str(root)}
        assert get_json(server, f"{seg}/node/{sv}/root") == {"root_id": root}
        # within one chunk's bounds (what Neuroglancer asks per chunk): the leaves in that chunk
        coords = store.layout.get_chunk_coordinates(sv)
        lo, hi = coords * chunk, (coords + 1) * chunk
        bounds = "_".join(f"{a}-{b}" for a, b in zip(lo, hi))
        answer = get_json(server, f"{seg}/node/{root}/leaves?int64_as_str=1&bounds={bounds}")
        inside = [int(x) for x in answer["leaf_ids"]]
        assert sv in inside and set(inside) <= set(leaves)
        assert all((store.layout.get_chunk_coordinates(x) == coords).all() for x in inside)
        many = get_json(server, f"{seg}/node/leaves_many?int64_as_str=1&bounds={bounds}", method="POST",
                        body=json.dumps({"node_ids": [str(root)]}).encode())
        assert many == {str(root): [str(x) for x in inside]}
    latest = get_json(server, f"{seg}/is_latest_roots", method="POST",
                      body=json.dumps({"node_ids": [str(r) for r in roots_of(graph[0])]}).encode())
    assert all(latest["is_latest"])


def test_the_viewer_page_and_its_state(server):
    status, headers, body = request(server, "/v/raymesh/")
    assert status == 200 and b"<script" in body and headers["Content-Type"].startswith("text/html")
    status, headers, _ = request(server, "/")
    assert status == 302 and "/v/raymesh/#!" in headers["Location"]
    assert server.view.api.table in server.url and "graphene://http://127.0.0.1:" in server.url
    wasm = [n for n in server.view.client_files if n.endswith(".wasm")][0]
    status, headers, _ = request(server, f"/v/raymesh/{wasm}")
    assert status == 200 and headers["Content-Type"] == "application/wasm"


@pytest.mark.parametrize("path", [
    "/data/ws/../secret.txt",
    "/data/ws/../graph.sqlite",
    "/data/ws/%2e%2e/graph.sqlite",
    "/data/ws/..%2fgraph.sqlite",
    "/data/ws/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/data/ws//etc/passwd",
    "/data/ws/graphene_meshes/../../secret.txt",
    "/data/ws/link-out",
    "/data/ws/./info",
    "/data/ws/info%00",
    "/data/ws/..\\secret.txt",
    "/data/ws/",
    "/data/ws/graphene_meshes",
    "/data/ws/graphene_meshes/dynamic/nope",
    "/data/graph.sqlite",
    "/v/raymesh/../../../../etc/passwd",
    "/v/raymesh/%2e%2e/%2e%2e/secret.txt",
    "/v/other-token/",
    "/static/../graph.sqlite",
    "/graph.sqlite",
])
def test_no_file_outside_the_served_folders(server, path):
    status, _, body = request(server, path)
    assert 400 <= status < 500, (path, status)
    assert b"not for the web" not in body and b"SQLite format" not in body and b"root:" not in body


@pytest.mark.parametrize("path,status", [
    ("/meshing/api/v1/table/{t}/manifest/abc:0", 400),
    ("/meshing/api/v1/table/{t}/manifest/0:0", 400),
    ("/meshing/api/v1/table/{t}/manifest/-5:0", 400),
    ("/meshing/api/v1/table/{t}/manifest/18446744073709551616:0", 400),
    ("/meshing/api/v1/table/{t}/manifest/{root}:1", 400),
    ("/meshing/api/v1/table/{t}/manifest/{root}", 400),
    ("/meshing/api/v1/table/{t}/manifest/{sv}:0", 400),
    ("/meshing/api/v1/table/{t}/manifest/{missing}:0", 404),
    ("/meshing/api/v1/table/{t}/manifest/18446744073709551615:0", 400),
    ("/meshing/api/v1/table/{t}/manifest/{root}:0?bounds=0-1_0-1_0-1", 400),
    ("/meshing/api/v1/table/other/manifest/{root}:0", 404),
    ("/segmentation/api/v1/table/{t}/node/abc/root", 400),
    ("/segmentation/api/v1/table/{t}/node/{missing_sv}/root", 404),
    ("/segmentation/api/v1/table/{t}/node/{sv}/root?timestamp=nan", 400),
    ("/segmentation/api/v1/table/{t}/node/{sv}/root?stop_layer=99", 400),
    ("/segmentation/api/v1/table/{t}/node/{root}/leaves?bounds=1-2_3", 400),
    ("/segmentation/api/v1/table/{t}/node/{root}/leaves?bounds=5-1_0-1_0-1", 400),
    ("/segmentation/api/v1/table/{t}/node/{root}/leaves?bounds=a-b_0-1_0-1", 400),
    ("/segmentation/api/v1/table/{t}/node/{missing}/leaves", 404),
    ("/segmentation/api/v1/table/{t}/node/x/subgraph", 400),
    ("/segmentation/api/v1/table/{t}/node/{root}/subgraph", 404),
    ("/segmentation/table/other/info", 404),
    ("/nothing/here", 404),
    ("/segmentation/api/v1/table/{t}/info", 404),
])
def test_bad_ids_and_unknown_routes_are_4xx(server, graph, path, status):
    store = open_store(graph[0])
    root = roots_of(graph[0])[0]
    sv = int(store.get_children(int(store.get_children(root)[0]))[0])
    while store.layout.get_chunk_layer(sv) > 1:
        sv = int(store.get_children(sv)[0])
    layout = store.layout
    missing = int(layout.node_id(layout.get_chunk_id(root), layout.segment_id_limit(layout.n_layers) - 1))
    missing_sv = int(layout.node_id(layout.get_chunk_id(sv), layout.segment_id_limit(1) - 1))
    path = path.format(t=server.view.api.table, root=root, sv=sv, missing=missing, missing_sv=missing_sv)
    assert error(server, path)[0] == status


def test_bad_ranges_methods_bodies_and_hosts(server):
    table = server.view.api.table
    seg = SEG.format(t=table)
    size = len(request(server, "/data/ws/info")[2])
    assert request(server, "/data/ws/info", headers={"Range": f"bytes={size + 10}-{size + 20}"})[0] == 416
    assert request(server, "/data/ws/info", headers={"Range": "bytes=9-2"})[0] in (200, 416)
    assert request(server, "/data/ws/info", headers={"Range": "lines=1-2"})[0] in (200, 416)
    # read-only: other methods, and PCG's edit routes by name
    assert error(server, "/data/ws/info", method="PUT", body=b"x")[0] == 405
    assert error(server, "/data/ws/info", method="DELETE")[0] == 405
    assert error(server, f"/segmentation/table/{table}/info", method="POST", body=b"{}")[0] == 405
    for op in ("merge", "split", "undo", "redo"):
        status, message = error(server, f"{seg}/{op}?int64_as_str=1", method="POST", body=b"{}")
        assert status == 403 and "read-only" in message
    for path in (f"/meshing/api/v1/table/{table}/remeshing", f"/meshing/api/v1/table/{table}/clear_manifest_cache/5"):
        assert error(server, path, method="POST", body=b"{}")[0] == 403
    # POST bodies
    for body in (b"not json", b"[1, 2]", b'{"node_ids": 5}', b'{"node_ids": ["abc"]}', b'{"node_ids": [true]}',
                 b'{"node_ids": [0]}', json.dumps({"node_ids": list(range(1, 10_002))}).encode()):
        assert error(server, f"{seg}/node/leaves_many", method="POST", body=body)[0] == 400
        assert error(server, f"{seg}/is_latest_roots", method="POST", body=body)[0] == 400
    assert request(server, f"{seg}/node/leaves_many", method="POST", body=b"x" * (2**20 + 10))[0] == 413
    # DNS rebinding: a loopback server answers only for loopback names
    status, message = error(server, f"/segmentation/table/{table}/info", headers={"Host": "evil.example:80"})
    assert status == 403 and "loopback" in message
    assert request(server, "/data/ws/info", headers={"Host": f"localhost:{server.port}"})[0] == 200


def test_cors_only_for_own_and_allowed_origins(server, graph):
    own = f"http://127.0.0.1:{server.port}"
    _, headers, _ = request(server, "/data/ws/info", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in headers
    _, headers, _ = request(server, "/data/ws/info", headers={"Origin": own.replace("127.0.0.1", "localhost")})
    assert headers["Access-Control-Allow-Origin"] == own.replace("127.0.0.1", "localhost")
    with ViewServer(graph[0], port=0, allow_origins=["https://viewer.example"]) as other:
        _, headers, _ = request(other, "/data/ws/info", headers={"Origin": "https://viewer.example"})
        assert headers["Access-Control-Allow-Origin"] == "https://viewer.example"
        status, headers, _ = request(other, "/data/ws/info", method="OPTIONS",
                                     headers={"Origin": "https://viewer.example",
                                              "Access-Control-Request-Headers": "range"})
        assert status == 204 and "Range" in headers["Access-Control-Allow-Headers"]


def test_view_command_errors(graph, capsys, tmp_path):
    from raymesh.cli import main

    assert main(["view", "--graph", graph[0], "--roots", "123"]) == 2
    assert "123" in capsys.readouterr().err
    assert main(["view", "--graph", graph[0], "--port", "70000"]) == 2
    capsys.readouterr()
    assert main(["view", "--graph", f"sqlite:///{tmp_path}/none.sqlite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err


def test_bind_warning():
    from raymesh.serve import bind_warning

    assert bind_warning("127.0.0.1") is None and bind_warning("::1") is None and bind_warning("localhost") is None
    assert "WARNING" in bind_warning("0.0.0.0") and "no authentication" in bind_warning("192.0.2.7")
