"""``raymesh view``'s web server (aiohttp): stock Neuroglancer, and what its graphene datasource reads.

Routes (``docs/viewing.md`` lists where Neuroglancer and PCG define each):

    GET  /                                                   redirect to the viewer, roots selected
    GET  /v/raymesh/  /v/raymesh/<file>                      the Neuroglancer client (neuroglancer wheel)
    GET  /events/raymesh                                     the client's Python-server event stream (idle)
    GET  /segmentation/table/<t>/info                        graphene info (also /segmentation/1.0/<t>/info)
    GET  /meshing/api/v1/table/<t>/manifest/<node>:0         verified mesh manifest
    GET  /segmentation/api/v1/table/<t>/node/<id>/root       supervoxel -> root
    GET  /segmentation/api/v1/table/<t>/node/<id>/leaves     supervoxels of a node within bounds
    POST /segmentation/api/v1/table/<t>/node/leaves_many     the same for several nodes (and /leaves_many)
    POST /segmentation/api/v1/table/<t>/is_latest_roots      whether roots are current
    GET  /data/ws/<path>                                     the segmentation folder (chunks, mesh shards
                                                             with byte ranges, dynamic/ fragments)
    GET  /data/precomputed/<path>                            with --precomputed DIR: that export (info,
                                                             multi-resolution meshes), the segmentation's
                                                             chunks for what it does not hold

Everything is read-only: PCG's edit routes answer 403, other methods 405, unknown paths 404.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from aiohttp import web

from raymesh.errors import ConfigError
from raymesh.serve.graphene import ApiError, GrapheneAPI, parse_node
from raymesh.serve.state import TOKEN, client_dir, state_url, viewer_state

DATA_PREFIX = "/data/ws"
PRECOMPUTED_PREFIX = "/data/precomputed"
# PCG routes that change the graph or the meshes: refused by name, so a Neuroglancer user who
# tries to merge or split sees why.
EDIT_ROUTES = ("merge", "merge_admin", "split", "undo", "redo", "rollback_user")
LOOPBACK_NAMES = ("localhost",)
CONTENT_TYPES = {".js": "application/javascript", ".wasm": "application/wasm", ".css": "text/css",
                 ".html": "text/html", ".map": "application/json", ".json": "application/json"}

log = logging.getLogger("raymesh.view")


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def error_response(status: int, message: str) -> web.Response:
    """PCG's error body: ``{"code", "message"}``, Content-Type exactly ``application/json`` (what
    Neuroglancer's ``parseGrapheneError`` looks for before it shows the message)."""
    body = json.dumps({"code": status, "message": message}).encode()
    return web.Response(status=status, body=body, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def json_response(data) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def safe_file(root: str, rel: str) -> str | None:
    """``root/rel`` if ``rel`` names a path inside ``root`` (no ``..``, no absolute parts, no
    symlink leading out), else None. ``root`` must be a real path."""
    if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/"):
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    path = os.path.join(root, *parts)
    real = os.path.realpath(path)
    if real != root and not real.startswith(root + os.sep):
        return None
    return path


def _precomputed_folder(path: str) -> str:
    """An export folder ``raymesh export --format precomputed`` wrote: info naming a multi-LOD mesh dir."""
    root = os.path.realpath(path)
    try:
        with open(os.path.join(root, "info")) as f:
            mesh = json.load(f).get("mesh")
        with open(os.path.join(root, str(mesh), "info")) as f:
            kind = json.load(f).get("@type")
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"--precomputed {path}: not a folder `raymesh export --format precomputed` wrote "
                          f"({exc}); export one first") from None
    if kind != "neuroglancer_multilod_draco":
        raise ConfigError(f"--precomputed {path}: its mesh dir holds {kind!r} meshes, not neuroglancer_multilod_draco")
    return root


class ViewApp:
    """The handlers, over one graph (``GrapheneAPI``) and its local segmentation folder."""

    def __init__(self, graph: str, *, mesh_dir: str | None = None, roots: Iterable[int] | None = None,
                 top: int = 4, bind: str = "127.0.0.1", allow_origins: Iterable[str] = (),
                 log_requests: bool = False, precomputed: str | None = None):
        from raymesh.storage import local_path

        self.api = GrapheneAPI(graph, mesh_dir)
        self.graph = graph
        self.top = top
        self.bind = bind
        self.allow_origins = set(allow_origins)
        self.log_requests = log_requests
        self.port: int | None = None
        seg = self.api.meta.segmentation_path
        local = local_path(seg) if "://" in seg else seg
        # A segmentation elsewhere (gs://, s3://, https://) is left where it is: Neuroglancer reads
        # it directly, as it does from a PCG server's data_dir.
        self.data_root = os.path.realpath(local) if local else None
        self.remote_data_dir = None if local else seg
        self.client_root = os.path.realpath(client_dir())
        self.client_files = {name: os.path.join(self.client_root, name) for name in os.listdir(self.client_root)
                             if os.path.isfile(os.path.join(self.client_root, name))}
        self.roots = [self.api.meshes.check_node(r, min_layer=2) for r in roots] if roots else None
        for r in self.roots or []:
            if not self.api.meshes.exists(r):
                raise ConfigError(f"--roots {r}: no such node in graph {self.api.table}")
        # An export of `raymesh export --format precomputed` shown instead of the graphene source.
        self.precomputed_root = _precomputed_folder(precomputed) if precomputed else None
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="raymesh-view")
        self.closing: asyncio.Event | None = None

    # ---- plumbing -------------------------------------------------------------------------------
    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def allowed_host(self, host: str | None) -> bool:
        """Against DNS rebinding: on a loopback bind, only loopback names may be asked for."""
        if not is_loopback(self.bind):
            return True
        if not host:
            return False
        if host.startswith("["):
            name = host[1:host.find("]")] if "]" in host else host
        else:
            name = host.split(":", 1)[0]
        return is_loopback(name)

    def origin_allowed(self, origin: str, request: web.Request) -> bool:
        if origin in self.allow_origins or "*" in self.allow_origins:
            return True
        try:
            from yarl import URL

            url = URL(origin)
            return url.scheme == "http" and is_loopback(url.host or "") and url.port == self.port
        except ValueError:
            return False

    def base_url(self, request: web.Request) -> str:
        return f"http://{request.host}"

    def table_or_404(self, request: web.Request) -> None:
        if request.match_info["table"] != self.api.table:
            raise ApiError(404, f"no table {request.match_info['table']!r} here; this server serves {self.api.table!r}")

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        """Refuse other Host names (on a loopback bind), answer preflights, turn errors into
        ``{"code", "message"}`` JSON."""
        if not self.allowed_host(request.headers.get("Host")):
            return error_response(403, f"Host {request.headers.get('Host')!r} is not a loopback name; this "
                                  "server answers only requests for 127.0.0.1, localhost or [::1]")
        if request.method == "OPTIONS":
            return web.Response(status=204)
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message)
        except web.HTTPException as exc:  # the router's 404 and 405, and the redirects
            if exc.status < 400:
                return web.Response(status=exc.status, headers=exc.headers)
            response = error_response(exc.status, f"{exc.reason}: {request.method} {request.path}")
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except Exception as exc:  # a broken store or shard: the message, not a traceback page
            log.exception("error answering %s", request.path)
            return error_response(500, f"{type(exc).__name__}: {exc}")

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Headers every response gets: CORS for allowed origins, no content sniffing."""
        origin = request.headers.get("Origin")
        if origin and self.origin_allowed(origin, request):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Methods"] = "GET, HEAD, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Range, Content-Type"
            response.headers["Access-Control-Expose-Headers"] = "Content-Range, Content-Length, Content-Encoding"
        response.headers.setdefault("X-Content-Type-Options", "nosniff")

    # ---- the viewer -----------------------------------------------------------------------------
    def source_url(self, base: str) -> str:
        if self.precomputed_root:
            return f"precomputed://{base}{PRECOMPUTED_PREFIX}"
        return f"graphene://{base}/segmentation/table/{self.api.table}"

    def default_roots(self) -> list[int]:
        if self.roots:
            return list(self.roots)
        return [r for r, _ in self.api.meshes.largest_roots(self.top)]

    def viewer_url(self, base: str, roots: list[int]) -> str:
        return state_url(base, viewer_state(self.source_url(base), self.api.meta, roots))

    async def index(self, request: web.Request):
        """``/``: the viewer with ``?roots=ID,ID`` selected (default: the largest roots now)."""
        text = request.query.get("roots")
        if text:
            roots = [self.api.node(t.strip(), min_layer=2) for t in text.split(",") if t.strip()]
            for r in roots:
                if not await self.run(self.api.meshes.exists, r):
                    raise ApiError(404, f"root {r} is not in graph {self.api.table}")
        else:
            roots = await self.run(self.default_roots)
        raise web.HTTPFound(self.viewer_url(self.base_url(request), roots))

    async def client(self, request: web.Request):
        name = request.match_info.get("name") or "index.html"
        if request.match_info["token"] != TOKEN or name not in self.client_files:
            raise ApiError(404, f"no file {request.path}")
        ext = os.path.splitext(name)[1]
        response = web.FileResponse(self.client_files[name])
        if ext in CONTENT_TYPES:
            response.content_type = CONTENT_TYPES[ext]
        return response

    async def client_root_redirect(self, request: web.Request):
        if request.match_info["token"] != TOKEN:
            raise ApiError(404, f"no file {request.path}")
        raise web.HTTPFound(f"/v/{TOKEN}/")

    async def events(self, request: web.Request):
        """The event stream the wheel's client opens to its Python server. The state lives in the
        URL fragment, so nothing is ever sent: the stream only stays open (with keep-alives)."""
        if request.match_info["token"] != TOKEN:
            raise ApiError(404, f"no event stream {request.path}")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        try:
            while not self.closing.is_set():
                try:
                    await asyncio.wait_for(self.closing.wait(), timeout=15)
                except asyncio.TimeoutError:
                    await response.write(b": keep-alive\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def favicon(self, request: web.Request):
        return web.Response(status=204)

    # ---- graphene -------------------------------------------------------------------------------
    async def info(self, request: web.Request):
        self.table_or_404(request)
        data_dir = self.remote_data_dir or f"{self.base_url(request)}{DATA_PREFIX}"
        return json_response(await self.run(self.api.info, data_dir))

    async def manifest(self, request: web.Request):
        self.table_or_404(request)
        node, sep, lod = request.match_info["spec"].partition(":")
        if not sep or lod != "0":
            raise ApiError(400, f"manifest/{request.match_info['spec']}: ask for <node id>:0 (one level of detail)")
        return json_response(await self.run(self.api.manifest, node, request.query))

    async def root(self, request: web.Request):
        self.table_or_404(request)
        return json_response(await self.run(self.api.root, request.match_info["node"], request.query))

    async def leaves(self, request: web.Request):
        self.table_or_404(request)
        return json_response(await self.run(self.api.leaves, request.match_info["node"], request.query))

    async def leaves_many(self, request: web.Request):
        self.table_or_404(request)
        body = await request.read()
        return json_response(await self.run(self.api.leaves_many, body, request.query))

    async def is_latest_roots(self, request: web.Request):
        self.table_or_404(request)
        body = await request.read()
        return json_response(await self.run(self.api.is_latest_roots, body, request.query))

    async def read_only(self, request: web.Request):
        self.table_or_404(request)
        raise ApiError(403, f"{request.match_info['op']}: raymesh view is read-only; edit with `raymesh edit` "
                       "and remesh with `raymesh remesh`, then reload")

    async def node_get(self, request: web.Request):
        """Other ``node/<id>/...`` routes PCG has: the id is checked first (bad ids are 400s)."""
        self.table_or_404(request)
        parse_node(request.match_info["node"])
        raise ApiError(404, f"{request.path}: not served by raymesh view (see docs/viewing.md)")

    # ---- files ----------------------------------------------------------------------------------
    async def data(self, request: web.Request):
        if self.data_root is None:
            raise ApiError(404, f"the segmentation is at {self.remote_data_dir}; it is not served here")
        rel = request.match_info["path"]
        path = safe_file(self.data_root, rel)
        if path is None:
            raise ApiError(403, f"{request.path}: not a path inside the served segmentation folder")

        def find() -> str | None:
            for candidate in (path, path + ".gz", path + ".br"):  # CloudVolume's compressed chunk files
                if safe_file(self.data_root, os.path.relpath(candidate, self.data_root)) is None:
                    continue
                try:
                    if stat.S_ISREG(os.stat(candidate).st_mode):
                        return candidate
                except OSError:
                    continue
            return None

        found = await self.run(find)
        if found is None:
            raise ApiError(404, f"no file {request.path}")
        # aiohttp answers Range requests (206, or 416 for a range outside the file) and serves a
        # .gz/.br sibling with its Content-Encoding when the plain file is absent.
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    async def precomputed(self, request: web.Request):
        """The export folder; files it does not hold (the voxel chunks of its scales) come from the
        segmentation, so the 2D panels show the same data as the graphene view."""
        if self.precomputed_root is None:
            raise ApiError(404, "no precomputed export is served (raymesh view --precomputed DIR)")
        rel = request.match_info["path"]
        for root in (self.precomputed_root, self.data_root):
            if root is None:
                continue
            path = safe_file(root, rel)
            if path is None:
                raise ApiError(403, f"{request.path}: not a path inside the served folders")
            if await self.run(os.path.isfile, path):
                return web.FileResponse(path, headers={"Cache-Control": "no-cache"})
        raise ApiError(404, f"no file {request.path}")

    # ---- the application ------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware], client_max_size=2**20)
        seg = "/segmentation/api/v1/table/{table}"
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/favicon.ico", self.favicon)
        r.add_get("/v/{token}", self.client_root_redirect)
        r.add_get("/v/{token}/", self.client)
        r.add_get("/v/{token}/{name}", self.client)
        r.add_get("/events/{token}", self.events)
        r.add_get("/segmentation/table/{table}/info", self.info)
        r.add_get("/segmentation/1.0/{table}/info", self.info)
        r.add_get("/meshing/api/v1/table/{table}/manifest/{spec}", self.manifest)
        r.add_get(seg + "/node/{node}/root", self.root)
        r.add_get(seg + "/node/{node}/leaves", self.leaves)
        r.add_get(seg + "/node/{node}/{what}", self.node_get)
        r.add_post(seg + "/node/leaves_many", self.leaves_many)
        r.add_post(seg + "/leaves_many", self.leaves_many)
        r.add_post(seg + "/is_latest_roots", self.is_latest_roots)
        r.add_route("*", seg + "/{op:" + "|".join(EDIT_ROUTES) + "}", self.read_only)
        r.add_route("*", "/meshing/api/v1/table/{table}/{op:remeshing}", self.read_only)
        r.add_route("*", "/meshing/api/v1/table/{table}/{op:clear_manifest_cache}/{node}", self.read_only)
        r.add_get(DATA_PREFIX + "/{path:.+}", self.data)
        r.add_get(PRECOMPUTED_PREFIX + "/{path:.+}", self.precomputed)

        async def on_startup(app):
            self.closing = asyncio.Event()

        async def on_shutdown(app):
            self.closing.set()

        app.on_response_prepare.append(self.on_prepare)
        app.on_startup.append(on_startup)
        app.on_shutdown.append(on_shutdown)
        return app


__all__ = ["ViewApp", "safe_file", "is_loopback", "DATA_PREFIX"]
