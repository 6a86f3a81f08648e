"""Where datagrams were lost: kernel receive-buffer drops per UDP socket, by the role of its owner.

Linux counts, per socket, the datagrams it dropped because the receive buffer was full (last column
of /proc/net/udp and /proc/net/udp6). A sampler thread reads those counters every 100 ms while a
run lasts and keeps each socket's highest value (sockets of ended allocations disappear from the
table, so the last sample before that is what counts), attributed to the process that owns it: the
TURN server, the echo peer (turnutils_peer) or the load client (turnutils_uclient).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

ROLES = {"turnserver": "server", "turnutils_peer": "peer", "turnutils_uclie": "client"}
INTERVAL_S = 0.1


def _socket_owners(server_pid: int | None) -> dict[int, str]:
    """inode -> role for every socket of the processes we care about."""
    owners: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            comm = (entry / "comm").read_text().strip()
            role = "server" if pid == server_pid else ROLES.get(comm)
            if role is None:
                continue
            for fd in (entry / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owners[int(target[8:-1])] = role
        except OSError:  # the process or the fd went away meanwhile
            continue
    return owners


def _drops_by_inode() -> dict[int, int]:
    counts: dict[int, int] = {}
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            counts[int(fields[9])] = int(fields[-1])
    return counts


class DropSampler:
    """Samples per-socket drops in a thread between `start()` and `stop()`; `by_role()` sums them."""

    def __init__(self, server_pid: int | None) -> None:
        self._server_pid = server_pid
        self._baseline = _drops_by_inode()  # sockets that existed before the run count from here
        self._peak: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drop-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()
        return self.by_role()

    def by_role(self) -> dict[str, int]:
        totals = {"server": 0, "peer": 0, "client": 0}
        for role, drops in self._peak.values():
            totals[role] += drops
        return totals

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            self._sample()

    def _sample(self) -> None:
        drops = _drops_by_inode()
        owners = _socket_owners(self._server_pid)
        for inode, count in drops.items():
            role = owners.get(inode) or (self._peak.get(inode, ("", 0))[0] or None)
            if role is None:
                continue
            counted = count - self._baseline.get(inode, 0)
            if counted > self._peak.get(inode, (role, 0))[1]:
                self._peak[inode] = (role, counted)
