"""Fixtures of the lock tests: journals, a controllable wall clock, a real etcd on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import trio

from node.errors import StoreError
from node.locks.journal import JournalRecord, MemoryLockJournal


class FlakyJournal(MemoryLockJournal):
    """A memory journal that can fail or stall its commits on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False
        self.delay_s = 0.0

    async def commit(self, records: Sequence[JournalRecord]) -> None:
        if self.delay_s:
            await trio.sleep(self.delay_s)
        if self.fail:
            raise StoreError("disk on fire")
        await super().commit(records)


@pytest.fixture
def journal() -> FlakyJournal:
    return FlakyJournal()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdProcess:
    """A single-member etcd on loopback ports with its data in a temp dir."""

    def __init__(self, binary: str, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.client_port = _free_port()
        self.peer_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = (self.data_dir / "etcd.log").open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--name",
                "t",
                "--data-dir",
                str(self.data_dir / "data"),
                "--listen-client-urls",
                self.endpoint,
                "--advertise-client-urls",
                self.endpoint,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"t={peer}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        import http.client
        import time

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, "etcd exited"
            conn = http.client.HTTPConnection("127.0.0.1", self.client_port, timeout=1)
            try:
                conn.request("GET", "/health")
                if b'"true"' in conn.getresponse().read():
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.05)
        raise RuntimeError("etcd did not become healthy")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def etcd(require_program: Callable[[str], str], tmp_path: Path) -> Iterator[EtcdProcess]:
    proc = EtcdProcess(require_program("etcd"), tmp_path)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()
