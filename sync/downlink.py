"""The downlink: bundles of rules from central, validated whole, applied atomically.

``GET {central_url}/v1/stores/{store}/bundle`` every ``[sync] interval_s``
with ``If-None-Match: <ETag of the last good bundle>``.  A 304 changes
nothing.  A 200 body (JSON, or msgpack with ``Content-Type:
application/msgpack``) is ``{"version", "ts"?, "promotions"?, "profiles"?,
"inventory"?, "layout"?, "scores"?}``; a key that is missing means "unchanged"
(``scores``: central's model scores, which replace ``[offers] scores``' file).

The bundle is validated with the same parsers as the files
(:mod:`store_config.load`) against the rest of the configuration (promotions
must name fences of the layout in force, roles' zones must exist, ...).  Any
problem refuses the whole bundle: the problems are logged, counted in
``edge_bundles_total{result="refused"}``, and the running rules stay.  A good
bundle becomes a new :class:`StoreConfig` (``dataclasses.replace`` of the
files' config) that the host's ``install`` (``Agent.install``) swaps in at
once; inventory in a bundle is merged per sku with the bundle's ``ts`` (or its
receipt time) so the newest value wins, and ``Agent.install`` keeps a device's
own newer opt-out.

The last good bundle (every key received so far, newest value per key, with
its ETag) is written atomically to ``{data dir}/bundle.json`` (tmp file,
fsync, rename, fsync of the directory; profiles' raw device ids sealed, see
:class:`ProfileSealer`) and applied at start before the
agent serves, so a restart while central is down serves the latest rules.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import random
import secrets
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import aiohttp

from store_config.load import (  # the same validation as the files
    _cross_check_raw,
    config_version,
    cross_check,
    parse_inventory,
    parse_layout,
    parse_profiles,
    parse_promotions,
    parse_scores,
)
from store_config.model import ConfigError, Problem, StoreConfig

from .pseudonym import load_or_create_secret, write_atomically
from .uplink_http import backoff_delay
from .wire import decode

if TYPE_CHECKING:  # pragma: no cover
    from .host import SyncHost

log = logging.getLogger("sync.downlink")

BUNDLE_KEYS = ("layout", "promotions", "profiles", "inventory", "scores")
META_KEYS = frozenset({"version", "ts", "store"})
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
STATE_FILE = "bundle.json"
SEALED = "device_sealed"  # in bundle.json, a profile's raw device id, encrypted


class ProfileSealer:
    """Keeps the profiles' raw device ids out of ``bundle.json`` in clear:
    AES-256-GCM under a key derived from ``pseudonym.key`` (losing that key
    already makes every device new; the bundle then comes again from central)."""

    def __init__(self, secret: bytes):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        self._aead = AESGCM(hashlib.sha256(b"edge-agent bundle seal v1\x00" + secret).digest())

    def _map(self, merged: dict[str, Any], fn, key: str, new_key: str) -> dict[str, Any]:
        profiles = merged.get("profiles")
        if not isinstance(profiles, list):
            return merged
        out = [{(new_key if k == key else k): (fn(v) if k == key else v) for k, v in p.items()}
               if isinstance(p, dict) and isinstance(p.get(key), str) else p for p in profiles]
        return {**merged, "profiles": out}

    def seal(self, merged: dict[str, Any]) -> dict[str, Any]:
        def one(device: str) -> str:
            nonce = secrets.token_bytes(12)
            return base64.b64encode(nonce + self._aead.encrypt(nonce, device.encode(), b"profile")).decode()
        return self._map(merged, one, "device", SEALED)

    def open(self, merged: dict[str, Any]) -> dict[str, Any]:
        """The bundle as central sent it; ValueError when a sealed id does not open."""
        from cryptography.exceptions import InvalidTag

        def one(blob: str) -> str:
            try:
                raw = base64.b64decode(blob, validate=True)
                return self._aead.decrypt(raw[:12], raw[12:], b"profile").decode()
            except (ValueError, InvalidTag) as exc:
                raise ValueError("a sealed profile device does not open (pseudonym.key changed?)") from exc
        return self._map(merged, one, SEALED, "device")


def key_problems(obj: Any, where: str = "") -> list[Problem]:
    """Map keys that are not strings, by path (msgpack allows ``bin`` and other
    keys; JSON and the store's files never have them, and the parsers expect
    none).  Iterative, so a deeply nested body cannot exhaust the stack."""
    problems: list[Problem] = []
    stack: list[tuple[Any, str]] = [(obj, where)]
    while stack and len(problems) < 20:
        o, path = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                if not isinstance(k, str):
                    problems.append(Problem("bundle", path, "", f"map key {k!r} is not a string"))
                else:
                    stack.append((v, f"{path}.{k}" if path else k))
        elif isinstance(o, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(o))
    return problems


def build_config(base: StoreConfig, bundle: dict[str, Any]) -> StoreConfig:
    """``base`` with the bundle's keys replaced, validated whole; raises
    :class:`ConfigError` listing every problem."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    fences, beacons, outline = base.fences, base.beacons, base.outline
    promotions, profiles, inventory = base.promotions, base.profiles, base.inventory
    layout_ok = True

    def run(key: str, fn):
        try:
            return fn(bundle[key], f"bundle:{key}")
        except ConfigError as exc:
            problems.extend(exc.problems)
            return None

    if "layout" in bundle:
        res = run("layout", lambda o, f: parse_layout(o, file=f, anchor=base.anchor, strict=False,
                                                        warnings=warnings))
        if res is None:
            layout_ok = False
        else:
            fences, beacons, outline = res
    if "promotions" in bundle:
        res = run("promotions", lambda o, f: parse_promotions(o, file=f, timezone=base.timezone,
                                                               warnings=warnings, strict=False))
        promotions = res if res is not None else promotions
    if "profiles" in bundle:
        res = run("profiles", lambda o, f: parse_profiles(o, file=f, warnings=warnings, strict=False))
        if res is not None:
            profiles = MappingProxyType(res)
    scores = base.scores
    if "scores" in bundle:  # central's model scores: they replace [offers] scores' file
        res = run("scores", lambda o, f: parse_scores(o, file=f))
        scores = res if res is not None else scores
    if "inventory" in bundle:
        res = run("inventory", lambda o, f: parse_inventory(o, file=f))
        if res is not None:
            inventory = MappingProxyType(res)
    if layout_ok:
        ids = {f.id for f in fences}
        if isinstance(bundle.get("promotions"), list):
            # on the raw list, so references are checked even when a promotion has other errors
            problems.extend(_cross_check_raw(ids, bundle["promotions"], file="bundle:promotions"))
        else:
            problems.extend(cross_check(fences, promotions, file="bundle"))
        for role, zones in base.associates.roles.items():
            missing = [z for z in zones if z not in ids]
            if missing:
                problems.append(Problem("bundle:layout", "[associates.roles]", role,
                                        f"the layout drops fence(s) this role names: {', '.join(missing)}"))
    if problems:
        raise ConfigError(problems)
    for w in warnings:
        log.warning("bundle: %s", w)
    parts = {k: bundle[k] for k in BUNDLE_KEYS if k in bundle}
    return replace(base, fences=fences, beacons=beacons, outline=outline, promotions=promotions,
                   profiles=profiles, inventory=inventory, scores=scores,
                   version=config_version({"files": base.version, "bundle": parts}))


class Downlink:
    """Polls central for bundles and applies the good ones."""

    def __init__(self, sync: "SyncHost", *, rand=random.random):
        self.sync = sync
        self.rand = rand
        self.path = Path(sync.cfg.data_dir) / STATE_FILE
        self.base = sync.cfg  # the configuration from files, before any bundle
        self.merged: dict[str, Any] = {}  # every bundle key received so far, newest value per key
        self.key_ts: dict[str, float] = {}  # time of each key's value (bundle ts or receipt time)
        self.etag: str | None = None
        self.version: str | None = None
        self._refused: str | None = None  # fingerprint of the last refused bundle (log once)
        self.failures = 0
        self._saving: asyncio.Task | None = None  # the write of the last good bundle, if one is running
        self.sealer = ProfileSealer(load_or_create_secret(Path(sync.cfg.data_dir) / "pseudonym.key"))

    @property
    def url(self) -> str:
        cfg = self.sync.cfg
        return f"{cfg.sync.central_url.rstrip('/')}/v1/stores/{cfg.store_id}/bundle"

    # -- the last good bundle on disk
    def load_saved(self) -> bool:
        """Apply the saved last good bundle (at start, before serving)."""
        try:
            state = json.loads(self.path.read_bytes())
            merged, key_ts = state["bundle"], state["key_ts"]
            if not isinstance(merged, dict) or not isinstance(key_ts, dict):
                raise ValueError("bundle and key_ts must be objects")
            merged = self.sealer.open(merged)
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("saved bundle %s is unreadable (%s); serving the files' rules until central answers",
                      self.path, exc)
            self.sync.metrics.bundles.inc("refused")
            return False
        try:
            cfg = build_config(self.base, merged)
        except ConfigError as exc:
            self._log_refusal("saved bundle", exc.problems)
            self.sync.metrics.bundles.inc("refused")
            return False
        inv_ts = key_ts.get("inventory") if "inventory" in merged else None
        self.sync.install(cfg, inventory_ts=inv_ts)
        self.merged, self.key_ts = merged, {k: float(v) for k, v in key_ts.items()}
        self.etag, self.version = state.get("etag"), state.get("version")
        self.sync.metrics.bundles.inc("restored")
        if any(isinstance(p, dict) and "device" in p for p in state["bundle"].get("profiles") or ()):
            try:  # written by an older version: profile devices in clear
                write_atomically(self.path, self._state_bytes())
            except OSError as exc:
                log.error("cannot reseal the saved bundle %s: %s", self.path, exc)
        log.info("restored the last good bundle (version %s, ETag %s) from %s", self.version, self.etag,
                 self.path)
        return True

    def _state_bytes(self) -> bytes:
        # default=str: msgpack ``bin`` (or ext) values in fields the parsers ignore are saved as
        # config_version sees them, so the bundle restored at start has the same version
        return json.dumps({"etag": self.etag, "version": self.version, "bundle": self.sealer.seal(self.merged),
                           "key_ts": self.key_ts}, separators=(",", ":"), ensure_ascii=False,
                          default=str).encode()

    def overlay(self, files_cfg: StoreConfig) -> StoreConfig:
        """The bundle applied on a configuration freshly reloaded from files
        (raises ConfigError when they no longer fit together: then the files
        are refused and later bundles still build on the files in force)."""
        cfg = build_config(files_cfg, self.merged) if self.merged else files_cfg
        self.base = files_cfg
        return cfg

    # -- receiving
    def receive(self, obj: Any, *, etag: str | None, received_at: float) -> tuple[bool, list[str]]:
        """Validate a bundle whole and apply it; (applied, problems).  Synchronous, loop thread."""
        sync = self.sync
        problems: list[Problem] = []
        if not isinstance(obj, dict):
            problems.append(Problem("bundle", "", "", f"must be an object, not {type(obj).__name__}"))
            obj = {}
        ts = obj.get("ts")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
            problems.append(Problem("bundle", "", "ts", "must be a number (epoch seconds)"))
        version = obj.get("version")
        if version is not None and not isinstance(version, (str, int)):
            problems.append(Problem("bundle", "", "version", "must be a string"))
        unknown = sorted(str(k) for k in obj if k not in META_KEYS and k not in BUNDLE_KEYS)
        if unknown:
            log.warning("bundle: unknown key(s) ignored: %s", ", ".join(unknown))
        new = {k: obj[k] for k in BUNDLE_KEYS if k in obj}
        problems.extend(key_problems(new))
        merged = {**self.merged, **new}
        cfg = None
        if not problems:
            try:
                cfg = build_config(self.base, merged)
            except ConfigError as exc:
                problems = exc.problems
        if problems or cfg is None:
            fp = etag or json.dumps(obj, sort_keys=True, default=str)[:4096]
            if fp != self._refused:
                self._refused = fp
                self._log_refusal(f"bundle {version!r} (ETag {etag})", problems)
                sync.metrics.bundles.inc("refused")
            sync.notify("bundle", {"result": "refused", "problems": [str(p) for p in problems]})
            return False, [str(p) for p in problems]
        when = float(ts) if ts is not None else received_at
        inv_ts = when if "inventory" in new else None
        sync.install(cfg, inventory_ts=inv_ts)
        self.merged = merged
        self.key_ts.update({k: when for k in new})
        self.etag, self.version, self._refused = etag, None if version is None else str(version), None
        sync.metrics.bundles.inc("applied")
        log.info("bundle %s applied (%s); config version %s", self.version, ", ".join(new) or "no changes",
                 cfg.version)
        sync.notify("bundle", {"result": "applied", "version": self.version, "config_version": cfg.version})
        return True, []

    def _log_refusal(self, what: str, problems: list) -> None:
        for p in problems:
            log.error("%s refused: %s", what, p)
        log.error("%s refused with %d problem(s); config version %s keeps serving", what, len(problems),
                  self.sync.cfg.version)

    # -- polling
    async def poll(self, session: aiohttp.ClientSession) -> str:
        """One GET; returns "applied", "unchanged", "refused" or an error kind."""
        sync = self.sync
        sc = sync.cfg.sync
        headers = {"Accept": "application/json, application/msgpack"}
        if sc.token:
            headers["Authorization"] = f"Bearer {sc.token}"
        if self.etag:
            headers["If-None-Match"] = self.etag
        try:
            async with session.get(self.url, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=sc.timeout_s)) as resp:
                status = resp.status
                etag = resp.headers.get("ETag")
                ctype = resp.headers.get("Content-Type")
                body = await resp.content.read(MAX_BUNDLE_BYTES + 1) if status == 200 else b""
        except asyncio.TimeoutError:
            sync.metrics.sync_errors.inc("bundle_timeout")
            return "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            sync.metrics.sync_errors.inc("bundle_connection")
            log.debug("central unreachable for bundles: %s", exc)
            return "connection"
        if status == 304 or (status == 200 and etag is not None and etag == self.etag):
            # the same ETag is the same bundle, even from a central that ignores If-None-Match:
            # applying it again would stamp its inventory with a new receipt time
            sync.metrics.bundles.inc("unchanged")
            sync.metrics.last_sync.set(sync.clock())
            return "unchanged"
        if status != 200:
            sync.metrics.sync_errors.inc("bundle_http")
            log.warning("central answered %d to GET %s", status, self.url)
            return f"http_{status}"
        sync.metrics.last_sync.set(sync.clock())
        if len(body) > MAX_BUNDLE_BYTES:
            log.error("bundle body refused: too large (over %d bytes)", MAX_BUNDLE_BYTES)
            self.receive(None, etag=etag, received_at=sync.clock())
            return "refused"
        try:
            obj = decode(body, ctype)
        except ValueError as exc:
            obj = None
            log.error("bundle body refused: %s", exc)
        ok, _ = self.receive(obj, etag=etag, received_at=sync.clock())
        if ok:
            # shielded: a stop in the middle lets the write finish (see saved()), so the
            # bundle just applied is the one served after a restart
            self._saving = asyncio.ensure_future(asyncio.to_thread(write_atomically, self.path,
                                                                   self._state_bytes()))
            try:
                await asyncio.shield(self._saving)
            except OSError as exc:
                log.error("cannot save the last good bundle to %s: %s", self.path, exc)
            self._saving = None
        return "applied" if ok else "refused"

    async def saved(self) -> None:
        """Let a save of the last good bundle that a stop interrupted finish (``Sync.stop``)."""
        task, self._saving = self._saving, None
        if task is None:
            return
        try:
            await task
        except OSError as exc:
            log.error("cannot save the last good bundle to %s: %s", self.path, exc)

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            try:
                result = await self.poll(session)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception:
                log.exception("bundle poll failed")
                result = "error"
            interval = self.sync.cfg.sync.interval_s
            if result in ("applied", "unchanged", "refused"):
                self.failures = 0
                await asyncio.sleep(interval)
            else:
                self.failures += 1
                await asyncio.sleep(max(interval, backoff_delay(self.failures, self.rand())))
