"""Registry convergence across a cut and restored link, and refusal of a node without the secret.

The cut: node B's config is rewritten (hot reload) to allow no peer, so B drops its links and
refuses the others; both sides change the registry meanwhile — including the same device id
registered on A and on B with different names, and a deletion — then B's config is restored. After
anti-entropy every node holds the same records, one version of the doubly registered device.
"""

from __future__ import annotations

import signal
import uuid

import trio

from tests.mesh.conftest import SECRET, MeshNode, StartNode, linked, until
from tests.mesh.test_three_nodes import shared_network, start_three

TEST_TIMEOUT_S = 60


async def same_registry(nodes: list[MeshNode]) -> bool:
    views = [await n.devices() for n in nodes]
    return all(view == views[0] for view in views)


async def test_registry_converges_after_a_link_is_cut_and_restored(start_node: StartNode) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        a, b, c = nodes = await start_three(start_node)
        network = await shared_network(nodes)
        doomed, _ = await a.register(network, "doomed")
        await until(lambda: same_registry(nodes), "the first device everywhere")

        b.write_mesh([a.mesh], allowed=["no-such-node"])
        await until(lambda: linked([a, c], 1), "A and C linked only to each other")
        await until(lambda: linked([b], 0), "B alone")

        twice = str(uuid.uuid4())
        for node, name in ((a, "twice-on-a"), (b, "twice-on-b")):
            await node.post("/api/v1/devices", {"device_id": twice, "network_id": network, "name": name,
                                                "world_type": "physical"})  # fmt: skip
        only_b, _ = await b.register(network, "only-on-b")
        only_c, _ = await c.register(network, "only-on-c")
        assert (await a.http.delete(f"/api/v1/devices/{doomed}")).status_code == 204
        await until(lambda: same_registry([a, c]), "A and C agree while B is cut off")
        assert not await same_registry(nodes)

        b.write_mesh([a.mesh])
        await until(lambda: linked(nodes, 2), "the links are back")
        await until(lambda: same_registry(nodes), "one registry everywhere after the partition")
        final = await a.devices()
        ids = {d for d, _, _ in final}
        assert {only_b, only_c, twice} <= ids and doomed not in ids
        names = {name for d, name, _ in final if d == twice}
        assert len(names) == 1 and names <= {"twice-on-a", "twice-on-b"}
        stats = [(await n.mesh_stats())["sync"] for n in nodes]
        assert len({s["records"] for s in stats}) == 1  # the tombstone is everywhere too
        assert sum(s["pushed"] for s in stats) > 0  # anti-entropy did the repair


async def test_a_node_without_the_cluster_secret_is_refused(start_node: StartNode) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        a = await start_node("a")
        intruder = await start_node("x", [a.mesh], secret="not-" + SECRET)

        async def refused() -> bool:
            return int((await a.mesh_stats())["security_events"]) >= 1

        await until(refused, "A reports a security event")
        assert (await intruder.mesh_stats())["refused"] >= 1
        assert (await a.cluster())["links"] == [] and (await intruder.cluster())["links"] == []
        for role, status in (("viewer", 200), ("service", 403)):
            token = (await a.post("/api/v1/tokens", {"name": role, "role": role}))["token"]
            seen = await a.http.get("/api/v1/cluster", headers={"Authorization": f"Bearer {token}"})
            assert seen.status_code == status, seen.text
        audit = (await a.get("/api/v1/admin/audit?action=mesh.link"))["items"]
        assert audit and audit[0]["outcome"] == "denied"
        assert audit[0]["actor"] == f"node:{intruder.node_id}"

        # a peer list that names the node itself (one list for every node) is no security event
        intruder.process.signal(signal.SIGTERM)
        await intruder.process.wait(10)
        before = await a.mesh_stats()
        a.write_mesh([a.mesh])

        async def self_refused() -> bool:
            return int((await a.mesh_stats())["refused"]) > before["refused"]

        await until(self_refused, "A refuses to link to itself")
        assert (await a.mesh_stats())["security_events"] == before["security_events"]


async def test_a_killed_node_rejoins_and_catches_up(start_node: StartNode) -> None:
    """kill -9 C; the others drop its links and change the registry; C restarts on its store,
    dials again, and anti-entropy brings it up to date."""
    with trio.fail_after(TEST_TIMEOUT_S):
        a, b, c = nodes = await start_three(start_node)
        network = await shared_network(nodes)
        c.process.kill_group()
        await c.process.wait(10)
        await until(lambda: linked([a, b], 1), "A and B notice that C is gone")
        added, _ = await a.register(network, "while-c-was-dead")
        await c.http.aclose()
        again = await start_node("c", [a.mesh, b.mesh])
        assert again.node_id == c.node_id  # the same node, on its own store
        await until(lambda: linked([a, b, again], 2), "C linked again")
        await until(lambda: same_registry([a, b, again]), "C caught up")
        assert added in {d for d, _, _ in await again.devices()}
