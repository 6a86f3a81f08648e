"""LeaderElection without etcd (standalone) and with an unreachable etcd, on Trio's autojump clock."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from node.clock import WallClock
from node.mesh.election import LeaderElection
from node.mesh.settings import ElectionSettings


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_standalone_leads_itself_and_runs_its_duties(autojump_clock: trio.testing.MockClock) -> None:
    settings = ElectionSettings(housekeeping_interval_s=10.0)
    election = LeaderElection(settings, node_id="solo", cluster_id="home", clock=WallClock())
    terms: list[int | None] = []

    async def duty(term: int | None) -> None:
        terms.append(term)

    election.add_duty("record", duty)
    async with trio.open_nursery() as nursery:
        await nursery.start(election.run)
        status = election.status()
        assert (status["mode"], status["leader"], status["term"], status["is_leader"]) == (
            "standalone",
            "solo",
            None,
            True,
        )
        assert status["detail"] == "standalone: no etcd configured, this node is its own leader"
        assert election.is_leader() and election.term() is None
        await trio.sleep(35.0)
        assert terms == [None, None, None]
        election.apply_settings(settings.model_copy(update={"housekeeping_interval_s": 1.0}))
        await trio.sleep(10.0)  # the interval running at the change ends first, then 1 s each
        assert 3 + 5 <= len(terms) <= 3 + 10
        nursery.cancel_scope.cancel()
    history = election.status()["history"]
    assert [(c["leader"], c["term"]) for c in history] == [("solo", None)]


async def test_unreachable_etcd_means_no_leader_known(autojump_clock: trio.testing.MockClock) -> None:
    settings = ElectionSettings(
        etcd_endpoints=(f"http://127.0.0.1:{closed_port()}",),
        retry_s=1.0,
        housekeeping_interval_s=0.5,
    )
    election = LeaderElection(settings, node_id="n1", cluster_id="home", clock=WallClock())
    ran: list[int | None] = []

    async def duty(term: int | None) -> None:
        ran.append(term)

    election.add_duty("record", duty)
    async with trio.open_nursery() as nursery:
        await nursery.start(election.run)
        await trio.sleep(10.0)
        status = election.status()
        nursery.cancel_scope.cancel()
    assert status["mode"] == "etcd"
    assert (status["leader"], status["term"], status["is_leader"]) == (None, None, False)
    assert status["detail"].startswith("no leader known: etcd unreachable")
    assert status["failures"] >= 3 and status["campaigns"] == 0
    assert status["tenures"] == [] and ran == []  # the leader-only duty never ran


@pytest.mark.parametrize("prefix", ["/asgard/mesh/", "/x/"])
async def test_keys_live_under_the_cluster(prefix: str) -> None:
    settings = ElectionSettings(key_prefix=prefix)
    election = LeaderElection(settings, node_id="n", cluster_id="home", clock=WallClock())
    assert election.election_prefix == f"{prefix}home/leader/".encode()
    assert election.housekeeping_key == f"{prefix}home/housekeeping".encode()
