"""``edge-agent`` — thin commands over the library.

Every command is one call into the library; the command reference (docs/cli.md) is
generated from ``--help`` (``python -m edge_agent.commands.cli --markdown-help``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("edge_agent.commands.cli")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("amqtt", "transitions", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _refused(path: str, exc) -> str:
    """The one line for a configuration `check` calls wrong: its first error, and where all are listed."""
    more = len(exc.problems) - 1
    return (f"edge-agent: configuration refused: {exc.problems[0]}" + (f" (and {more} more)" if more else "")
            + f"; `edge-agent check --config {path}` lists every error")


def _broker_url_refused(url: str) -> str | None:
    """The one line refusing ``--broker url`` as `[mqtt] url` would refuse it (None: it is a broker URL)."""
    from store_config._sections import mqtt_url_problem

    problem = mqtt_url_problem(url)
    return None if problem is None else f"edge-agent: --broker {url}: {problem}"


def _load(path: str):
    from store_config import ConfigError, load_store

    try:
        return load_store(path)
    except ConfigError as exc:
        print(_refused(path, exc), file=sys.stderr)
        raise SystemExit(2) from None
    except FileNotFoundError as exc:
        print(f"edge-agent: configuration not found: {exc.filename}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    """Run the edge agent for one store.  It refuses, in one line, a
    configuration `check` calls wrong (`check` lists every error).

    Example: edge-agent run --config /etc/edge-agent/store.toml --broker mqtt://127.0.0.1:1883
    """
    import dataclasses

    from store_config import ConfigError, load_store

    try:
        cfg = load_store(args.config)
    except ConfigError as exc:
        print(_refused(args.config, exc), file=sys.stderr)
        return 2
    if args.broker:
        if refused := _broker_url_refused(args.broker):
            print(refused, file=sys.stderr)
            return 2
        cfg = dataclasses.replace(cfg, mqtt=dataclasses.replace(cfg.mqtt, url=args.broker))
    if cfg.mqtt.url is None:
        print("[mqtt] url is required for `run` (an embedded broker is for `demo` only)", file=sys.stderr)
        return 2
    from edge_agent.runner import StartupError, serve

    try:
        return asyncio.run(serve(cfg))
    except StartupError as exc:
        if args.debug:
            raise
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 2


def cmd_where(args: argparse.Namespace) -> int:
    """Where a point lies: local metres and WGS84 lat/lon, and the zones it is in,
    innermost first (e.g. a position to emulate in a browser's sensors panel).

    Example: edge-agent where --config store.toml --x 16 --y 12
    """
    from store_config.where import describe, where

    cfg = _load(args.config)
    if args.x is not None and args.y is not None:
        w = where(cfg, x=args.x, y=args.y, floor=args.floor)
    elif args.lat is not None and args.lon is not None:
        w = where(cfg, lat=args.lat, lon=args.lon, floor=args.floor)
    else:
        print("give --x and --y (local metres) or --lat and --lon", file=sys.stderr)
        return 2
    print(json.dumps(w) if args.json else describe(w))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate and lint a store configuration; exit status 1 on errors.

    Example: edge-agent check --config store.toml --tech ble
    """
    from store_config import check

    cfg, problems = check(args.config, tech=args.tech)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity != "error"]
    for p in errors:
        print(f"error: {p}")
    for p in warnings:
        print(f"warning: {p}")
    if cfg is not None:
        print(f"{args.config}: store {cfg.store_id} ({cfg.name}), {len(cfg.fences)} fences, "
              f"{len(cfg.promotions)} promotions, {len(cfg.profiles)} profiles, version {cfg.version}: "
              f"{len(errors)} errors, {len(warnings)} warnings")
    else:
        print(f"{args.config}: {len(errors)} errors, {len(warnings)} warnings")
    return 1 if errors else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Everything in one process: an embedded broker, the sample store, simulated
    shoppers and the associates' page.  Stops on Ctrl-C or after --duration.

    Example: edge-agent demo --duration 60
    """
    from .demo import run_demo

    log_file = None
    if not args.verbose:  # the story only on the terminal; the logs go to a file the banner names
        log_file = Path(tempfile.gettempdir()) / "edge-agent-demo.log"
        handler = logging.FileHandler(log_file, mode="w")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        root.addHandler(handler)
        logging.captureWarnings(True)
    return asyncio.run(run_demo(duration=args.duration, shoppers=args.shoppers, port=args.port, log_file=log_file,
                                data_root=Path(args.data)))


def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate shoppers over a store and score its fences and positioning technology.

    Example: edge-agent simulate --config store.toml --shoppers 50 --duration 1800 --tech ble --out report/

    With --crowd, a rush at the tills instead: every shopper walks in within the
    first two minutes and heads for the checkouts; the report adds, per zone,
    the peak occupancy against `capacity` and when the crowding and queue alerts
    fired (learnt from {R}/floor and {R}/alert/#), so `capacity` and
    `queue_alert_at` can be set before opening.

    Example: edge-agent simulate --config store.toml --crowd --shoppers 40 --duration 900 --out rush/
    """
    try:
        import matplotlib  # noqa: F401 - the map; an extra, so a gateway's install stays lean
    except ImportError:
        print("edge-agent simulate needs matplotlib for its map: pip install 'store-edge-agent[sim]' "
              "(from a checkout: .venv/bin/pip install -e '.[sim]')", file=sys.stderr)
        return 2
    from .simulate import run_simulate

    return run_simulate(_load(args.config), args)


def cmd_audit(args: argparse.Namespace) -> int:
    """Print the decision audit trail (offered and suppressed, with reasons).

    Example: edge-agent audit --config store.toml --device phone-42 --since 2026-11-22T08:00
    """
    from .audit import run_audit

    return run_audit(args)


def cmd_qr(args: argparse.Namespace) -> int:
    """Write the QR codes a store prints: one per zone (a shelf check-in,
    {public_url}/shop?zone=ID) and one for the door ({public_url}/shop), plus
    index.html to print them all.  The URL is [http] public_url (or --base-url).

    Example: edge-agent qr --config store.toml --out qr/ --format png
    """
    from edge_agent.http.shop.qr import public_url, write_store_codes

    cfg = _load(args.config)
    base = args.base_url or public_url(cfg)
    if not args.base_url and not cfg.http.public_url:
        print(f"note: [http] public_url is not set; the codes point at {base} "
              "(set it to the address phones reach the gateway at)", file=sys.stderr)
    paths = write_store_codes(cfg, args.out, fmt=args.format, base=base)
    for p in paths:
        print(p)
    print(f"{len(paths)} codes for {base}/shop in {args.out} (print {args.out}/index.html)")
    return 0


def _broker(args: argparse.Namespace) -> tuple[str, str, object]:
    """(broker URL, the store's root topic, the store's [mqtt] or None: its login and
    TLS files) from --config, or --broker and --store."""
    mqtt = None
    if args.config:
        cfg = _load(args.config)
        url = args.broker or cfg.mqtt.url
        if url is None:
            print("the config has no [mqtt] url: give --broker mqtt://HOST:PORT", file=sys.stderr)
            raise SystemExit(2)
        root, mqtt = cfg.root_topic, cfg.mqtt
    elif not (args.broker and args.store):
        print("give --config store.toml, or --broker URL and --store ID", file=sys.stderr)
        raise SystemExit(2)
    else:
        url, root = args.broker, f"store/{args.store}"
    if args.broker and (refused := _broker_url_refused(args.broker)):
        print(refused, file=sys.stderr)
        raise SystemExit(2)
    return url, root, mqtt


def _broker_failed(args: argparse.Namespace, url: str, exc: Exception) -> int:
    """A broker that refuses or is not up: one line naming where its URL came from."""
    where = f"--broker {url}" if args.broker else f"[mqtt] url = \"{url}\" in {args.config}"
    print(f"edge-agent: {where}: {exc}", file=sys.stderr)
    return 2


def cmd_watch(args: argparse.Namespace) -> int:
    """Print what the store's topics carry, one line a message (Ctrl-C stops).

    Example: edge-agent watch --broker mqtt://127.0.0.1:1883 --store S042
    """
    from .tools import watch

    from edge_agent.transport.mqtt import MqttError

    url, root, mqtt = _broker(args)
    try:
        return watch(url, root, topics=args.topic or None, count=args.count,
                     banner=f"watching {root}/# on {url} (Ctrl-C stops)", mqtt=mqtt)
    except MqttError as exc:
        return _broker_failed(args, url, exc)


def cmd_ping(args: argparse.Namespace) -> int:
    """Publish one ping as a phone would (local metres, or --lat/--lon).

    Example: edge-agent ping --broker mqtt://127.0.0.1:1883 --store S042 --device my-phone --x 6 --y 10
    """
    from .tools import ping

    url, root, mqtt = _broker(args)
    if args.lat is not None and args.lon is not None:
        body = {"lat": args.lat, "lon": args.lon}
    elif args.x is not None and args.y is not None:
        body = {"x": args.x, "y": args.y}
    else:
        print("give --x and --y (local metres) or --lat and --lon", file=sys.stderr)
        return 2
    body["acc"] = args.acc
    if args.floor is not None:
        body["floor"] = args.floor
    from edge_agent.transport.mqtt import MqttError

    try:
        topic = ping(url, root, args.device, body, source=args.source, mqtt=mqtt)
    except MqttError as exc:
        return _broker_failed(args, url, exc)
    print(f"published {json.dumps(body)} to {topic}")
    return 0
def cmd_report(args: argparse.Namespace) -> int:
    """Campaign report per promotion and variant: offered, applied, redeemed, held
    out, conversion in treated and control, uplift with a 95 % interval; a
    Markdown table by default.

    Example: edge-agent report --config store.toml --since 2026-11-01 --json

    Across the chain, from central's event exports (JSON Lines, .gz allowed),
    stratified by store:
    edge-agent report --chain exports/*.jsonl.gz --promotions promotions.json --by-store

    What another scores file would have earned (inverse propensity weighting):
    edge-agent report --policy-eval scores.json exports/*.jsonl.gz
    """
    from .report import run_report

    return run_report(args)


def cmd_action(args: argparse.Namespace) -> int:
    """Apply or dismiss an offer as the phone's app would ({R}/action/{device}).

    Example: edge-agent action --broker mqtt://127.0.0.1:1883 --store S042 --device my-phone --offer o_1a2b apply
    """
    from .tools import publish

    url, root, mqtt = _broker(args)
    body = {"offer_id": args.offer, "action": args.action}
    from edge_agent.transport.mqtt import MqttError

    try:
        topic = publish(url, f"{root}/action/{args.device}", body, mqtt=mqtt)
    except MqttError as exc:
        return _broker_failed(args, url, exc)
    print(f"published {json.dumps(body)} to {topic}")
    return 0


def cmd_survey_fit(args: argparse.Namespace) -> int:
    """Fit the store's BLE radio from survey walks and print a report cross-validated
    by walk (error, coverage of the claimed accuracy, per-zone placement). Writes
    [sources.ble] model, default ble-model.json beside store.toml; the agent loads
    it at start and on reload. Survey lines: {"walk", "ts", "x", "y", "floor",
    "beacons": [{"id", "rssi"}, ...]} (lat/lon instead of x/y allowed). A line
    with "source" and "fix" (a Wi-Fi engine's or a phone's fix, as in a ping)
    instead of "beacons" calibrates that source: fit prints its
    [tracking.acc_scale] factor.

    Example: edge-agent survey fit --config store.toml tue-am.jsonl tue-pm.jsonl
    """
    from .survey import run_fit

    return run_fit(args)


def cmd_survey_report(args: argparse.Namespace) -> int:
    """The same report for the BLE model in place (the fitted one, else the
    no-survey defaults) on survey walks, and for surveyed Wi-Fi or phone fixes
    as the agent takes them now.

    Example: edge-agent survey report --config store.toml wed-am.jsonl
    """
    from .survey import run_report

    return run_report(args)


def _add_store_commands(sub: argparse._SubParsersAction) -> None:
    """``run``, ``where`` and ``check``: the service and its store configuration."""
    p = sub.add_parser("run", help="run the service", description=cmd_run.__doc__)
    p.add_argument("--config", required=True, help="path of store.toml")
    p.add_argument("--broker", default=None, help="broker URL, e.g. mqtt://127.0.0.1:1883 (overrides [mqtt] url)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("where", help="a point in both frames and the zones it lies in", description=cmd_where.__doc__)
    p.add_argument("--config", required=True, help="path of store.toml")
    p.add_argument("--x", type=float, help="local metres")
    p.add_argument("--y", type=float, help="local metres")
    p.add_argument("--lat", type=float)
    p.add_argument("--lon", type=float)
    p.add_argument("--floor", type=int, default=0, help="floor (default 0)")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.set_defaults(fn=cmd_where)

    p = sub.add_parser("check", help="validate and lint a store configuration", description=cmd_check.__doc__)
    p.add_argument("--config", required=True, help="path of store.toml")
    p.add_argument("--tech", choices=["exact", "uwb", "ble", "wifi", "html5"],
                   help="lint fences against this positioning technology (default: all)")
    p.set_defaults(fn=cmd_check)


def _add_simulation_commands(sub: argparse._SubParsersAction) -> None:
    """``demo`` and ``simulate``: simulated shoppers."""
    p = sub.add_parser("demo", help="embedded broker + sample store + simulated shoppers",
                       description=cmd_demo.__doc__)
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds (default: until Ctrl-C)")
    p.add_argument("--shoppers", type=int, default=6, help="number of simulated shoppers (default 6)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080; a free one if taken)")
    p.add_argument("--verbose", action="store_true", help="log to the terminal too (default: to a file)")
    p.add_argument("--data", default="demo-data",
                   help="directory for the demo's store copy and data, kept for `report` and `audit` "
                        "(default ./demo-data; replaced by the next demo)")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("simulate", help="simulate shoppers and score fences", description=cmd_simulate.__doc__)
    p.add_argument("--config", required=True, help="path of store.toml")
    p.add_argument("--shoppers", type=int, default=30, help="number of shoppers (default 30)")
    p.add_argument("--duration", type=float, default=900.0, help="simulated seconds (default 900)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--tech", default="exact", choices=["exact", "uwb", "ble", "wifi", "html5"])
    p.add_argument("--out", default="sim-report", help="output directory (default sim-report)")
    p.add_argument("--attach", action="store_true", help="drive the agent already serving the config's broker")
    p.add_argument("--broker", default=None, help="use this broker URL instead of the embedded one")
    p.add_argument("--speed", type=float, default=None,
                   help="simulated seconds per real second (0 = as fast as possible; default 0, or 10 with --crowd)")
    p.add_argument("--mac-randomisation", action="store_true", help="devices change id mid-visit")
    p.add_argument("--crowd", action="store_true",
                   help="a rush at the tills: report peak occupancy against capacity and when queue and "
                        "crowding alerts fired")
    p.add_argument("--compare-fusion", action="store_true",
                   help="run twice (single-fix rule, then fused tracker) and report both side by side")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_simulate)


def _add_tool_commands(sub: argparse._SubParsersAction) -> None:
    """``audit``, ``qr`` and the MQTT hand tools ``watch``, ``ping`` and ``action``."""
    p = sub.add_parser("audit", help="read the decision audit trail", description=cmd_audit.__doc__)
    p.add_argument("--config", required=True, help="path of store.toml")
    p.add_argument("--device", help="raw device id (looked up by its pseudonym)")
    p.add_argument("--since", default="0", help="epoch seconds or ISO 8601 (store time when no offset)")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(fn=cmd_audit)

    p = sub.add_parser("qr", help="write the shop page's QR codes (door and shelves)", description=cmd_qr.__doc__)
    p.add_argument("--config", required=True, help="path of store.toml")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default="svg", choices=["svg", "png"], help="image format (default svg)")
    p.add_argument("--base-url", default=None, help="URL of the gateway as phones reach it (default [http] public_url)")
    p.set_defaults(fn=cmd_qr)

    for name, fn, help_ in (("watch", cmd_watch, "print the store's MQTT messages as they come"),
                            ("ping", cmd_ping, "publish one ping by hand"),
                            ("action", cmd_action, "apply or dismiss an offer by hand")):
        p = sub.add_parser(name, help=help_, description=fn.__doc__)
        p.add_argument("--config", help="path of store.toml (its broker, login and store id)")
        p.add_argument("--broker", help="broker URL, e.g. mqtt://127.0.0.1:1883 (overrides the config's)")
        p.add_argument("--store", help="store id (without --config)")
        if name == "watch":
            p.add_argument("--topic", action="append", help="topic filter (repeatable; default {root}/#)")
            p.add_argument("--count", type=int, default=None, help="stop after N messages")
        elif name == "action":
            p.add_argument("--device", required=True, help="the phone's device id")
            p.add_argument("--offer", required=True, help="the offer_id")
            p.add_argument("action", choices=["apply", "dismiss"])
        else:
            p.add_argument("--device", required=True, help="the phone's device id")
            p.add_argument("--source", default="uwb", choices=["uwb", "ble", "wifi", "gps", "html5"])
            p.add_argument("--x", type=float, help="local metres")
            p.add_argument("--y", type=float, help="local metres")
            p.add_argument("--lat", type=float)
            p.add_argument("--lon", type=float)
            p.add_argument("--acc", type=float, default=0.5, help="accuracy in metres (default 0.5)")
            p.add_argument("--floor", type=int, default=None)
        p.set_defaults(fn=fn)


def _add_report_commands(sub: argparse._SubParsersAction) -> None:
    """``report`` and ``survey``: campaign reports and the BLE site survey."""
    p = sub.add_parser("report", help="campaign report: conversion and uplift per promotion and variant",
                       description=cmd_report.__doc__)
    p.add_argument("--config", help="path of store.toml (one store's report)")
    p.add_argument("--since", default=None, help="epoch seconds or ISO 8601 (store time when no offset); "
                                                 "default: from the start")
    p.add_argument("--json", action="store_true", help="JSON instead of a Markdown table")
    p.add_argument("--chain", nargs="+", metavar="EVENTS", default=None,
                   help="central's event exports (JSON Lines, .gz allowed): the report across the chain")
    p.add_argument("--by-store", action="store_true", help="with --chain: each store's table too")
    p.add_argument("--promotions", default=None,
                   help="with --chain or --policy-eval: promotions.json (discount, margin_pct, priority)")
    p.add_argument("--policy-eval", nargs="+", metavar=("SCORES", "EXPORT"), default=None,
                   help="scores.json then exports: the inverse-propensity value of that scores file")
    p.add_argument("--explore-pct", type=float, default=0.0, help="with --policy-eval: the new policy's "
                                                                  "explore_pct (default 0)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("survey", help="fit and check the store's BLE radio from labelled walks",
                       description="Site survey: fit the BLE model from labelled walks, or report on the model "
                                   "in place.")
    ssub = p.add_subparsers(dest="survey_command", required=True, metavar="SUBCOMMAND")
    for name, fn, help_ in (("fit", cmd_survey_fit, "fit the BLE model and print a cross-validated report"),
                            ("report", cmd_survey_report, "report on the model in place")):
        sp = ssub.add_parser(name, help=help_, description=fn.__doc__)
        sp.add_argument("--config", required=True, help="path of store.toml")
        sp.add_argument("files", nargs="+", metavar="survey.jsonl", help="survey files (one scan per line)")
        if name == "fit":
            sp.add_argument("--out", default=None, help="model file (default: [sources.ble] model, else "
                                                        "ble-model.json beside store.toml)")
        sp.add_argument("--json", action="store_true", help="print the report as JSON")
        sp.set_defaults(fn=fn)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="In-store geofencing edge service.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    parser.add_argument("--debug", action="store_true", help="debug logging and full tracebacks on failures")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_store_commands(sub)
    _add_simulation_commands(sub)
    _add_tool_commands(sub)
    _add_report_commands(sub)
    return parser


def markdown_help() -> str:
    parser = build_parser()
    out = ["```", parser.format_help().rstrip(), "```"]
    for action in parser._subparsers._group_actions:  # noqa: SLF001 - argparse has no public walk
        for name, sp in action.choices.items():
            out += ["", f"### `edge-agent {name}`", "", "```", sp.format_help().rstrip(), "```"]
            for sub in sp._subparsers._group_actions if sp._subparsers else ():  # noqa: SLF001
                for sname, ssp in getattr(sub, "choices", {}).items():
                    out += ["", f"### `edge-agent {name} {sname}`", "", "```", ssp.format_help().rstrip(), "```"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--markdown-help"]:
        sys.stdout.write(markdown_help())
        return 0
    args = build_parser().parse_args(argv)
    setup_logging("debug" if args.debug else args.log_level, args.log_format)
    try:
        return args.fn(args) or 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
