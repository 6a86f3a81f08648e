"""The `asgard` command."""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

import node
from node.config import Settings, SettingsError, load_settings, render_default_config
from node.errors import NodeError

DEFAULT_CONFIG = Path("asgard.toml")
DURATION = re.compile(r"^(\d+)([smhdw]?)$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asgard", description="Asgard homeserver node.")
    p.add_argument("--version", action="version", version=f"asgard {node.__version__}")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (default: $ASGARD_CONFIG, else ./asgard.toml when it exists)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the node", description="Run the node until SIGINT/SIGTERM.")
    serve.add_argument(
        "--ephemeral",
        action="store_true",
        help="try-it-out/test mode: temporary store, every listener on 127.0.0.1 with a free port, "
        "one JSON line with the addresses and an admin token on stdout",
    )

    init = sub.add_parser("init", help="write a commented default config file")
    init.add_argument("path", nargs="?", type=Path, default=DEFAULT_CONFIG)
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    token = sub.add_parser("token", help="manage API tokens").add_subparsers(
        dest="token_command", required=True, metavar="ACTION"
    )
    create = token.add_parser("create", help="create a token and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=["admin", "service", "device", "viewer"])
    create.add_argument("--device-id", help="device tokens: the device they act for")
    create.add_argument("--network", action="append", default=[], help="restrict to a network (repeatable)")
    create.add_argument("--expires-in", help="lifetime like 3600, 90m, 12h, 30d, 2w")
    token.add_parser("list", help="list tokens (never their secrets)")
    revoke = token.add_parser("revoke", help="revoke a token by id (tok_...)")
    revoke.add_argument("token_id")

    backup = sub.add_parser("backup", help="copy the live store to PATH (online backup)")
    backup.add_argument("path", type=Path)
    backup.add_argument("--force", action="store_true", help="overwrite PATH")
    restore = sub.add_parser("restore", help="replace the store with a verified backup (node stopped)")
    restore.add_argument("path", type=Path)
    sub.add_parser("migrate", help="apply pending store migrations and print the schema version")
    probe = sub.add_parser(
        "stun-probe", help="ask a STUN server for this host's public address and NAT behaviour (RFC 5780)"
    )
    probe.add_argument("server", help="HOST[:PORT] (default port 3478)")
    probe.add_argument("--timeout", type=float, default=3.0, help="seconds per request (default 3)")
    probe.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def config_path(arg: Path | None) -> Path | None:
    if arg is not None:
        return arg
    env = os.environ.get("ASGARD_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    except NodeError as exc:
        print(f"asgard: {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "init":
        return _init(args.path, args.force)
    if args.command == "stun-probe":
        return _stun_probe(args.server, args.timeout, args.json)
    path = config_path(args.config)
    if args.command == "serve":
        return _serve(path, args.ephemeral)
    settings = load_settings(path).settings
    if args.command == "token":
        return _token(settings, args)
    if args.command == "backup":
        from node.backup import backup

        version = backup(settings.store_path(), args.path, force=args.force)
        print(f"backup written to {args.path} (schema version {version})")
        return 0
    if args.command == "restore":
        from node.backup import restore

        kept = restore(settings.store_path(), args.path)
        print(
            f"restored {args.path} into {settings.store_path()}"
            + (f"; previous store kept at {kept}" if kept else "")
        )
        return 0
    if args.command == "migrate":
        return _migrate(settings)
    raise AssertionError(args.command)


def _init(path: Path, force: bool) -> int:
    if path.exists() and not force:
        print(f"asgard: {path} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    path.write_text(render_default_config(), encoding="utf-8")
    print(f"wrote {path}")
    return 0


def _serve(path: Path | None, ephemeral: bool) -> int:
    from node.app import ephemeral_overrides, temporary_data_dir

    async def main() -> None:
        if ephemeral:
            async with temporary_data_dir() as tmp:
                overrides = ephemeral_overrides(tmp)
                settings = load_settings(path, overrides=overrides).settings
                await _run_and_announce(settings, path, overrides)
        else:
            await _run_and_announce(load_settings(path).settings, path, None)

    trio.run(main)
    return 0


async def _run_and_announce(settings: Settings, path: Path | None, overrides: dict[str, Any] | None) -> None:
    from node.app import run_node

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            lambda task_status: run_node(
                settings, config_path=path, overrides=overrides, task_status=task_status
            )
        )
        # Everything made during start-up (modules, schemas, settings, the services) lives as long
        # as the process: keep the cyclic collector from walking it again. A full collection of
        # that heap stalled the Trio thread for 72-124 ms on a mesh node (gc callbacks); after the
        # freeze it walks only what was made since.
        gc.collect()
        gc.freeze()
        print(json.dumps(handle.announcement()), flush=True)
        if handle.admin_token:
            print(
                "asgard: first start: an admin token was created and is shown only now: "
                f"{handle.admin_token}",
                file=sys.stderr,
                flush=True,
            )


def _open_store(settings: Settings) -> Any:
    from node.storage import prepare_database
    from store import open_db

    prepare_database(settings.store_path(), settings.store)
    return open_db(settings.store_path(), busy_timeout_ms=settings.store.busy_timeout_ms)


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from node.auth import Role, make_token_row
    from node.registry import _validate as v
    from node.tokens import _revoke
    from store import tokens

    conn = _open_store(settings)
    try:
        now = time.time()
        if args.token_command == "create":
            expires = now + _duration(args.expires_in) if args.expires_in else None
            secret, row = make_token_row(
                name=args.name,
                role=Role(args.role),
                device_id=v.uuid_id(args.device_id, "device-id") if args.device_id else None,
                networks=v.uuid_list(args.network, "network"),
                now=now,
                expires_at=expires,
            )
            with conn:
                tokens.insert_token(conn, row)
            print(json.dumps({"token_id": row.token_id, "role": row.role, "token": secret}))
        elif args.token_command == "list":
            for t in tokens.list_tokens(conn):
                state = (
                    "revoked"
                    if t.revoked_at
                    else "expired"
                    if t.expires_at and t.expires_at <= now
                    else "live"
                )
                print(f"{t.token_id}\t{t.role}\t{state}\t{t.name}")
        else:
            with conn:
                _revoke(conn, args.token_id, now)
            print(f"revoked {args.token_id}")
        return 0
    finally:
        conn.close()


def _duration(text: str) -> float:
    from node.errors import InvalidInput

    match = DURATION.match(text.strip())
    if not match:
        raise InvalidInput(f"--expires-in: expected a duration like 3600, 90m, 12h, 30d; got {text!r}")
    return int(match[1]) * UNITS[match[2]]


def _migrate(settings: Settings) -> int:
    from node.storage import prepare_database
    from store import latest_version

    applied = prepare_database(settings.store_path(), settings.store)
    if applied:
        print(f"applied migrations {', '.join(map(str, applied))}; schema version {latest_version()}")
    else:
        print(f"schema is up to date (version {latest_version()})")
    return 0


def _stun_probe(server: str, timeout: float, as_json: bool) -> int:
    from node.turn import format_report, probe_nat

    report = trio.run(lambda: probe_nat(server, timeout_s=timeout))
    print(json.dumps(report.as_dict()) if as_json else format_report(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
