"""Serve an agent: the HTTP site, signals, graceful shutdown."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
import ssl

from aiohttp import web

from store_config.model import StoreConfig

from .http.app import make_app
from .instance import InstanceLocked
from .service import Agent, freeze_heap
from .storage.store import StorageUnwritable
from .transport.mqtt import MqttError

log = logging.getLogger("edge_agent")


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return (host.strip("[]") or "127.0.0.1"), int(port)


class Server:
    """An agent with its HTTP application, started and stopped as one."""

    def __init__(self, cfg: StoreConfig, *, agent: Agent | None = None, listen: str | None = None, extra=None):
        self.cfg = cfg
        self.agent = agent or Agent(cfg)
        self.app = make_app(self.agent, extra=extra)
        self.listen = listen or cfg.http.listen
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        # keepalive_timeout also bounds a new connection's wait for its first request's headers
        # (aiohttp closes an idle handler then): half-open sockets cannot pile up to the file limit.
        self.runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                                    keepalive_timeout=self.cfg.http.header_timeout_s)
        self._accept_errors = AcceptErrors(self.agent.metrics)
        self._accept_errors.install(asyncio.get_running_loop())
        await self.runner.setup()
        host, port = parse_listen(self.listen)
        ctx = None
        if self.cfg.http.tls_cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                ctx.load_cert_chain(self.cfg.http.tls_cert, self.cfg.http.tls_key)
            except OSError as exc:  # ssl.SSLError included: say which file, not only OpenSSL's words
                raise StartupError(f"[http] tls_cert {self.cfg.http.tls_cert} / tls_key {self.cfg.http.tls_key}: "
                                   f"cannot load them ({exc})") from exc
        site = (TLSSite(self.runner, host, port, ssl_context=ctx, handshake_s=self.cfg.http.header_timeout_s)
                if ctx else web.TCPSite(self.runner, host, port))
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the bound port for port 0
        scheme = "https" if ctx else "http"
        self.url = f"{scheme}://{host}:{self.port}"
        log.info("HTTP on %s (metrics at %s/metrics)", self.url, self.url)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if getattr(self, "_accept_errors", None) is not None:
            self._accept_errors.uninstall()
            self._accept_errors = None


class TLSSite(web.TCPSite):
    """aiohttp's TCP site with the TLS handshake bounded by ``[http] header_timeout_s``: the
    header deadline (``keepalive_timeout``) starts only once a handshake is done, and asyncio
    gives a handshake 60 s, so a client that never finishes one held its socket that long."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, ssl_context: ssl.SSLContext,
                 handshake_s: float):
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self._handshake_s = handshake_s

    async def start(self) -> None:
        await web.BaseSite.start(self)  # TCPSite.start, with ssl_handshake_timeout
        self._server = await asyncio.get_running_loop().create_server(
            self._runner.server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            ssl_handshake_timeout=self._handshake_s)


class AcceptErrors:
    """The loop's exception handler, less one flood: asyncio reports every
    refused ``accept()`` (out of file descriptors) with a traceback, many times
    a second.  Those are counted (``edge_http_accept_errors_total``) and said
    once a minute in one line; everything else goes to the handler before."""

    EVERY_S = 60.0

    def __init__(self, metrics):
        self.metrics = metrics
        self.loop: asyncio.AbstractEventLoop | None = None
        self.before = None
        self.count = 0
        self.said = float("-inf")

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.before = loop, loop.get_exception_handler()
        loop.set_exception_handler(self)

    def uninstall(self) -> None:
        if self.loop is not None and self.loop.get_exception_handler() is self:
            self.loop.set_exception_handler(self.before)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and str(context.get("message", "")).startswith("socket.accept()"):
            self.count += 1
            self.metrics.http_accept_errors.inc(errno.errorcode.get(exc.errno or 0, "OSError"))
            now = loop.time()
            if now - self.said >= self.EVERY_S:
                log.error("HTTP: cannot accept connections: %s (%d refused since last said); idle clients hold "
                          "the descriptors until [http] header_timeout_s closes them; raise LimitNOFILE if it "
                          "lasts", exc.strerror or exc, self.count)
                self.said, self.count = now, 0
            return
        if self.before is not None:
            self.before(loop, context)
        else:
            loop.default_exception_handler(context)


class StartupError(Exception):
    """The agent cannot start: one line for the operator (exit status 2)."""


def check_port_free(listen: str) -> None:
    """Refuse a taken HTTP port before the agent touches the broker."""
    host, port = parse_listen(listen)
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise StartupError(f"cannot listen on {host}:{port} ([http] listen): {exc.strerror or exc}; "
                               f"is another edge-agent running?") from exc


async def serve(cfg: StoreConfig) -> int:
    """Run until SIGINT/SIGTERM; SIGHUP reloads the configuration files.
    A start-up failure (the data dir locked by another agent, the HTTP port
    taken, unreadable TLS files) raises :class:`StartupError`."""
    check_port_free(cfg.http.listen)
    server = Server(cfg)
    try:
        await server.start()
    except StartupError:
        await server.stop()
        raise
    except (InstanceLocked, StorageUnwritable, OSError, ssl.SSLError, MqttError) as exc:
        await server.stop()
        raise StartupError(str(exc)) from exc
    freeze_heap()  # what start-up built lives as long as the process: out of every collection's way
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        reload = getattr(server.agent, "reload_from_files", None)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, reload)
        await stop.wait()
        log.info("shutting down: draining, flushing the outbox, publishing offline")
        try:
            await asyncio.wait_for(server.stop(), timeout=20)
        except asyncio.TimeoutError:
            log.error("shutdown took longer than 20 s; exiting anyway")
            return 1
        return 0
    finally:
        gc.unfreeze()  # serve() run inside another program (a test) leaves its collector as it was
