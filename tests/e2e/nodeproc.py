"""Running `asgard` as a real process: the node (`asgard serve`) on a store in a test directory, and
one-shot CLI commands. Every process gets its own session, so a kill reaches the whole group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from node.app import ephemeral_overrides

START_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 30.0
GRACE_S = 2.0


def asgard_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m node`."""
    script = Path(sys.executable).with_name("asgard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "node"]


def node_env(data_dir: Path, **settings: Any) -> dict[str, str]:
    """The environment of a node on `data_dir`: every listener on 127.0.0.1 port 0, and `settings`
    (dotted keys, e.g. `{"server.shutdown_grace_s": 1}`) as ASGARD_SECTION__KEY variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASGARD_")}
    values = ephemeral_overrides(data_dir) | {
        "logging.console": True,
        "logging.file": "node.log",
        "server.shutdown_grace_s": GRACE_S,
    }
    for key, value in (values | settings).items():
        text = json.dumps(value) if isinstance(value, list | dict | bool) else str(value)
        env["ASGARD_" + key.replace(".", "__").upper()] = text
    return env


@dataclass
class NodeProcess:
    """A running `asgard serve` and what it announced."""

    process: trio.Process
    announcement: dict[str, Any]
    stderr_path: Path
    exited: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return str(self.announcement["api"])

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill_group(self) -> None:
        """SIGKILL the node and anything it started."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    async def wait(self, timeout_s: float) -> int:
        with trio.fail_after(timeout_s):
            return await self.process.wait()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


async def read_line(stream: trio.abc.ReceiveStream, limit: int = 65536) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise AssertionError(f"no line within {limit} bytes: {data[:200]!r}")
    return data.split(b"\n", 1)[0]


async def start_node_process(
    nursery: trio.Nursery,
    env: dict[str, str],
    cwd: Path,
    *,
    name: str = "node",
    config: Path | None = None,
    args: tuple[str, ...] = (),
) -> NodeProcess:
    """Start `asgard [--config PATH] serve [ARGS]` and wait for its JSON line; raises with its stderr
    if it does not come."""
    options = ["--config", str(config)] if config else []
    stderr_path = cwd / f"{name}.stderr"
    with stderr_path.open("ab") as stderr:
        process = await trio.lowlevel.open_process(
            [*asgard_command(), *options, "serve", *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    assert process.stdout is not None
    try:
        with trio.fail_after(START_TIMEOUT_S):
            line = await read_line(process.stdout)
        announcement = json.loads(line)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise AssertionError(f"the node did not announce itself:\n{stderr_path.read_text()}") from None
    node = NodeProcess(process, announcement, stderr_path)
    nursery.start_soon(_drain, process.stdout)
    return node


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    """Keep reading the node's stdout so that it can never block on a full pipe."""
    async with stream:
        while await stream.receive_some(4096):
            pass


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(*args: str, env: dict[str, str], cwd: Path) -> CliResult:
    """Run one `asgard` command to completion."""
    with trio.fail_after(CLI_TIMEOUT_S):
        done = await trio.run_process(
            [*asgard_command(), *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return CliResult(done.returncode, done.stdout.decode(), done.stderr.decode())
