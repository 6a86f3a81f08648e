"""Run the TURN service alone: `python -m node.turn [--config FILE] [options]`.

For benchmarks and manual tests; the node runs it inside its own nursery. Options override the
`[turn]` section of the TOML file. Stops on SIGINT/SIGTERM, after printing its statistics (relayed
datagrams, drops by reason) as one `stats {json}` line.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any

import trio

from node.turn.service import TurnService
from node.turn.settings import TurnSettings


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m node.turn", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML file; its [turn] section is used")
    parser.add_argument("--host", help="listen address")
    parser.add_argument("--port", type=int, help="UDP and TCP port")
    parser.add_argument("--realm")
    parser.add_argument("--relay-ipv4")
    parser.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD")
    parser.add_argument("--rest-secret", action="append", default=[], metavar="SECRET")
    parser.add_argument("--allow-loopback-peers", action="store_true")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="any [turn] field; VALUE as JSON"
    )
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> TurnSettings:
    """TurnSettings from the file's [turn] section and the command line."""
    data: dict[str, Any] = {}
    if args.config is not None:
        data = dict(tomllib.loads(args.config.read_text("utf-8")).get("turn", {}))
    for key in ("host", "port", "realm", "relay_ipv4"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.user:
        data["users"] = {**data.get("users", {}), **dict(u.split(":", 1) for u in args.user)}
    if args.rest_secret:
        data["rest_secrets"] = args.rest_secret
    if args.allow_loopback_peers:
        data["allow_loopback_peers"] = True
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            data[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            data[key.strip()] = value
    return TurnSettings.model_validate(data)


async def _main(settings: TurnSettings) -> None:
    service = TurnService(settings)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(service.serve)
        print(f"listening udp={addresses.udp} tcp={addresses.tcp} relay={addresses.relay}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                # The last line says what the service relayed and dropped (benchmarks read it).
                print("stats " + json.dumps(service.statistics().as_dict()), flush=True)
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = _arguments(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    trio.run(_main, settings_from(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
