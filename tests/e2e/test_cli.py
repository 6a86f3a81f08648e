"""The `asgard` command: init, token create|list|revoke against a running node, migrate, --help on
every subcommand, and a graceful exit on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import json
import re
import signal
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import trio

from node.cli import _parser, main
from node.config import load_settings
from store import latest_version, migrate, open_db, schema_version
from tests.e2e.conftest import Spawn
from tests.e2e.nodeproc import GRACE_S, CliResult, run_cli, start_node_process


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every (sub)command of the parser, found by walking it, so new subcommands are covered too."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += command_paths(sub, (*prefix, name))
    return paths


SUBCOMMANDS = [list(path) for path in command_paths(_parser())]


def test_the_walk_finds_the_documented_commands() -> None:
    found = {" ".join(words) for words in SUBCOMMANDS}
    expected = {
        "",
        "serve",
        "init",
        "token",
        "token create",
        "token list",
        "token revoke",
        "backup",
        "restore",
    }
    assert found >= expected | {"migrate"}


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "asgard")
def test_help_on_every_subcommand(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*words, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: asgard {' '.join(words)}".rstrip())
    assert "-h, --help" in out


async def test_the_installed_command_answers_help_and_version(env: dict[str, str], tmp_path: Path) -> None:
    results: dict[str, CliResult] = {}

    async def run(*args: str) -> None:
        results[" ".join(args)] = await run_cli(*args, env=env, cwd=tmp_path)

    async with trio.open_nursery() as nursery:
        for args in (("--help",), ("--version",), ("token", "rename")):
            nursery.start_soon(run, *args)
    helped = results["--help"]
    assert helped.returncode == 0
    for command in ("serve", "init", "token", "backup", "restore", "migrate"):
        assert command in helped.stdout
    assert (results["--version"].returncode, results["--version"].stdout.strip()) == (0, "asgard 0.1.0")
    wrong = results["token rename"]
    assert wrong.returncode == 2
    assert "invalid choice: 'rename'" in wrong.stderr


def test_init_writes_a_config_that_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "asgard.toml"
    assert main(["init", str(path)]) == 0
    assert capsys.readouterr().out == f"wrote {path}\n"
    loaded = load_settings(path, environ={}).settings
    assert loaded.api.port == 7700
    assert "[api]" in path.read_text()
    assert main(["init", str(path)]) == 1
    assert "exists; pass --force" in capsys.readouterr().err
    path.write_text("broken")
    assert main(["init", str(path), "--force"]) == 0
    assert load_settings(path, environ={}).settings == loaded


def test_migrate_a_new_and_an_older_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    latest = latest_version()
    fresh = tmp_path / "fresh.toml"
    fresh.write_text(f'[server]\ndata_dir = "{tmp_path / "fresh"}"\n')
    assert main(["--config", str(fresh), "migrate"]) == 0
    applied = ", ".join(str(v) for v in range(1, latest + 1))
    assert capsys.readouterr().out == f"applied migrations {applied}; schema version {latest}\n"
    assert main(["--config", str(fresh), "migrate"]) == 0
    assert capsys.readouterr().out == f"schema is up to date (version {latest})\n"

    older = tmp_path / "older"
    older.mkdir()
    conn = open_db(older / "asgard.db")
    migrate(conn, target=1)
    conn.close()
    config = tmp_path / "older.toml"
    config.write_text(f'[server]\ndata_dir = "{older}"\n')
    assert main(["--config", str(config), "migrate"]) == 0
    if latest > 1:
        pending = ", ".join(str(v) for v in range(2, latest + 1))
        assert capsys.readouterr().out == f"applied migrations {pending}; schema version {latest}\n"
    conn = open_db(older / "asgard.db")
    assert schema_version(conn) == latest
    conn.close()


@pytest.mark.slow
async def test_token_commands_work_while_the_node_runs(
    spawn: Spawn,
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "asgard.toml"
    assert main(["init", str(config)]) == 0
    node = await spawn(env, config=config)  # the environment overrides the file's ports and data_dir
    cli = ("--config", str(config), "token")

    created = await run_cli(
        *cli, "create", "--name", "ops", "--role", "viewer", "--expires-in", "90m", env=env, cwd=tmp_path
    )
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)
    assert token["role"] == "viewer"
    admin_token = node.announcement["admin_token"]
    admin = httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {admin_token}"})
    viewer = httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {token['token']}"})
    async with admin, viewer:
        assert (await viewer.get("/api/v1/networks")).status_code == 200
        row = (await admin.get(f"/api/v1/tokens/{token['token_id']}")).json()
        expires_in = datetime.fromisoformat(row["expires_at"]).timestamp() - time.time()
        assert 5300 < expires_in <= 5400

        listed = await run_cli(*cli, "list", env=env, cwd=tmp_path)
        assert f"{token['token_id']}\tviewer\tlive\tops" in listed.stdout.splitlines()
        assert token["token"] not in listed.stdout

        revoked = await run_cli(*cli, "revoke", token["token_id"], env=env, cwd=tmp_path)
        assert (revoked.returncode, revoked.stdout.strip()) == (0, f"revoked {token['token_id']}")
        r = await viewer.get("/api/v1/networks")  # the same keep-alive connection
        assert (r.status_code, r.json()["detail"]) == (401, "token revoked")

    # The refusals, in-process (the same `main` the command runs) on the running node's store.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    assert main([*cli, "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"{token['token_id']}\tviewer\trevoked\tops" in lines
    [bootstrap] = [line.split("\t")[0] for line in lines if "\tadmin\t" in line]
    refusals = {
        ("create", "--name", "d", "--role", "device"): "a device token needs device_id",
        (
            "create",
            "--name",
            "d",
            "--role",
            "viewer",
            "--expires-in",
            "soon",
        ): "--expires-in: expected a duration",
        ("create", "--name", "d", "--role", "viewer", "--network", "home"): "network: expected a UUID",
        ("revoke", "tok_ffffffffffffffff"): "token tok_ffffffffffffffff not found",
        ("revoke", bootstrap): "last live admin token",
    }
    for args, message in refusals.items():
        assert main([*cli, *args]) == 1, args
        assert message in capsys.readouterr().err, args

    node.signal(signal.SIGINT)
    assert await node.wait(GRACE_S + 10) == 0, node.stderr()


@pytest.mark.slow
async def test_the_served_node_freezes_its_start_up_objects(spawn: Spawn, env: dict[str, str]) -> None:
    """`asgard serve` keeps the cyclic collector off what start-up made (admin stats show it)."""
    node = await spawn(env)
    headers = {"Authorization": f"Bearer {node.announcement['admin_token']}"}
    async with httpx.AsyncClient(base_url=node.url, headers=headers) as client:
        process = (await client.get("/api/v1/admin/stats")).json()["services"]["process"]
    assert process["gc_frozen_objects"] > 10_000
    assert len(process["gc_collections"]) == 3


async def test_sigterm_drains_and_exits_0_within_the_grace_period(spawn: Spawn, env: dict[str, str]) -> None:
    node = await spawn(env)
    async with httpx.AsyncClient(
        base_url=node.url, headers={"Authorization": f"Bearer {node.announcement['admin_token']}"}
    ) as client:
        assert (
            await client.get("/api/v1/devices")
        ).status_code == 200  # leaves an idle keep-alive connection
        started = trio.current_time()
        node.signal(signal.SIGTERM)
        code = await node.wait(GRACE_S + 10)
        took = trio.current_time() - started
    assert code == 0, node.stderr()
    assert took < GRACE_S + 3, f"exit took {took:.1f} s with a grace period of {GRACE_S} s"
    assert "node stopping" in node.stderr()


@pytest.mark.slow
async def test_serve_ephemeral_announces_itself_and_leaves_no_store(
    env: dict[str, str], tmp_path: Path
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    ephemeral_env = {k: v for k, v in env.items() if not k.startswith("ASGARD_")} | {"TMPDIR": str(scratch)}
    async with trio.open_nursery() as nursery:
        node = await start_node_process(
            nursery, ephemeral_env, tmp_path, name="ephemeral", args=("--ephemeral",)
        )
        try:
            line = node.announcement
            assert line["pid"] == node.pid
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", line["api"])
            assert re.fullmatch(r"asg_[0-9A-Za-z]{49}", line["admin_token"])
            assert str(uuid.UUID(line["node_id"])) == line["node_id"]
            [store] = scratch.glob("asgard-ephemeral-*/asgard.db")
            headers = {"Authorization": f"Bearer {line['admin_token']}"}
            async with httpx.AsyncClient(base_url=line["api"], headers=headers) as client:
                assert (await client.get("/api/v1/devices")).status_code == 200
            node.signal(signal.SIGTERM)
            assert await node.wait(GRACE_S + 10) == 0, node.stderr()
        finally:
            node.kill_group()
    assert f"shown only now: {line['admin_token']}" in node.stderr()
    assert not store.parent.exists(), "the temporary store outlived the node"
