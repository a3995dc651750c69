"""Brokers started for one run: the embedded MQTT 3.1.1 broker (amqtt) for
`demo`, and for the self-contained simulator a throw-away Mosquitto (the
production broker) when one is installed, amqtt otherwise."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

for _name in ("amqtt", "transitions"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """``async with EmbeddedBroker() as url:`` — an anonymous broker on loopback."""

    name = "amqtt"

    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.url = f"mqtt://{host}:{self.port}"
        self._broker = None

    async def start(self) -> str:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 10000}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = Broker(config)
        await self._broker.start()
        return self.url

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()


def find_mosquitto() -> str | None:
    """The ``mosquitto`` binary: ``$MOSQUITTO`` when set (empty: none), else on
    the PATH, else ``/usr/sbin/mosquitto`` (Debian installs it there, off a
    user's PATH)."""
    exe = os.environ.get("MOSQUITTO")
    if exe is not None:
        return exe if exe and Path(exe).is_file() else None
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None


class LocalMosquitto:
    """A Mosquitto on a free loopback port, its config in a temporary
    directory removed on ``stop`` (anonymous, no persistence)."""

    name = "mosquitto"

    def __init__(self, exe: str, host: str = "127.0.0.1"):
        self.exe = exe
        self.host = host
        self.port = free_port(host)
        self.url = f"mqtt://{host}:{self.port}"
        self._dir: Path | None = None
        self._proc: subprocess.Popen | None = None

    async def start(self, timeout: float = 10.0) -> str:
        self._dir = Path(tempfile.mkdtemp(prefix="edge-mosquitto-"))
        conf = self._dir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} {self.host}\nallow_anonymous true\nset_tcp_nodelay true\n"
                        f"max_queued_messages 100000\nlog_dest none\n")
        err = open(self._dir / "stderr.log", "wb")
        try:
            self._proc = subprocess.Popen([self.exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err)
        finally:
            err.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self._proc.poll() is not None:
                msg = (self._dir / "stderr.log").read_text(errors="replace").strip().splitlines()
                await self.stop()
                raise RuntimeError(f"mosquitto exited: {msg[-1] if msg else 'no output'}")
            try:
                _, w = await asyncio.open_connection(self.host, self.port)
                w.close()
                return self.url
            except OSError:
                await asyncio.sleep(0.02)  # polling the port until it accepts is the readiness signal
        await self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout:g} s")

    async def stop(self) -> None:
        p, self._proc = self._proc, None
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                await asyncio.to_thread(p.wait, 5)
            except subprocess.TimeoutExpired:
                p.kill()
                await asyncio.to_thread(p.wait)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def run_broker():
    """The broker for a self-contained run: :class:`LocalMosquitto` when
    Mosquitto is installed, else :class:`EmbeddedBroker` (``.name`` says which)."""
    exe = find_mosquitto()
    return LocalMosquitto(exe) if exe else EmbeddedBroker()
