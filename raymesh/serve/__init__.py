"""``raymesh view``: a small read-only web server that makes stock Neuroglancer show a graph's meshes.

    from raymesh.serve import ViewServer
    with ViewServer("sqlite:///abs/graph.sqlite", port=0) as server:   # runs in a background thread
        print(server.url)                                                 # open it in a browser

``serve(...)`` runs the same in the foreground until Ctrl-C (the CLI). See docs/viewing.md.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import Iterable

from raymesh.errors import ConfigError
from raymesh.serve.app import ViewApp, is_loopback


def bind_warning(bind: str) -> str | None:
    if is_loopback(bind):
        return None
    return (f"WARNING: binding to {bind}: anyone who can reach this machine on that address can read this "
            "graph's ids, segmentation and meshes. The server has no authentication and no TLS; it only reads. "
            "Use the default 127.0.0.1 (and an SSH tunnel) unless that is what you want.")


class ViewServer:
    """The server on its own event loop in a background thread (for tests and notebooks)."""

    def __init__(self, graph: str, *, port: int = 0, bind: str = "127.0.0.1", mesh_dir: str | None = None,
                 roots: Iterable[int] | None = None, top: int = 4, allow_origins: Iterable[str] = (),
                 log_requests: bool = False, precomputed: str | None = None):
        if not 0 <= int(port) < 65536:
            raise ConfigError(f"--port {port}: a TCP port is 0 (any free port) .. 65535")
        self.view = ViewApp(graph, mesh_dir=mesh_dir, roots=roots, top=top, bind=bind,
                            allow_origins=allow_origins, log_requests=log_requests, precomputed=precomputed)
        self.bind = bind
        self.port = int(port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    # ---- addresses ------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        """The base URL to print: the bind address, or 127.0.0.1 for a wildcard bind."""
        host = self.bind
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The viewer URL: its state holds the segmentation layer and the selected roots."""
        return self.view.viewer_url(self.base, self.view.default_roots())

    # ---- lifecycle ------------------------------------------------------------------------------
    async def _start(self) -> None:
        from aiohttp import web

        access = None
        if self.view.log_requests:  # one line per request, with the status sent (206 for a range)
            access = logging.getLogger("raymesh.view.access")
            if not access.handlers:
                handler = logging.StreamHandler(sys.stderr)
                handler.setFormatter(logging.Formatter("%(message)s"))
                access.addHandler(handler)
                access.setLevel(logging.INFO)
                access.propagate = False
        self._runner = web.AppRunner(self.view.make_app(), access_log=access, shutdown_timeout=2.0,
                                     access_log_format='%r %s %b %Tf %{Range}i')
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.bind, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.bind}:{self.port}: {exc.strerror or exc}") from None
        self.port = int(self._runner.addresses[0][1])  # the port, when 0 (any free one) was asked
        self.view.port = self.port

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> "ViewServer":
        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:
                self._error = exc
                self._started.set()
                loop.close()
                return
            self._started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._stop())
                loop.close()

        self._thread = threading.Thread(target=main, name="raymesh-view", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self.view.pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "ViewServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(graph: str, *, port: int = 0, bind: str = "127.0.0.1", mesh_dir: str | None = None,
          roots: Iterable[int] | None = None, top: int = 4, allow_origins: Iterable[str] = (),
          log_requests: bool = False, open_browser: bool = False, out=None, precomputed: str | None = None) -> int:
    """Run the server in the foreground until Ctrl-C; prints the viewer URL first."""
    out = out or sys.stdout
    warning = bind_warning(bind)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    server = ViewServer(graph, port=port, bind=bind, mesh_dir=mesh_dir, roots=roots, top=top,
                        allow_origins=allow_origins, log_requests=log_requests, precomputed=precomputed)
    server.start()
    import signal

    def stop_on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop_on_term)
    try:
        url = server.url
        # the URL is the command's output (stdout); the rest is for people (stderr)
        print(f"serving graph {server.view.api.table} ({graph}) read-only on {server.base}", file=sys.stderr,
              flush=True)
        print(f"Neuroglancer: {url}", file=out, flush=True)
        print(f"(or {server.base}/ for the largest roots at the time you open it; Ctrl-C stops)", file=sys.stderr,
              flush=True)
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
    return 0


__all__ = ["ViewServer", "serve", "bind_warning"]
