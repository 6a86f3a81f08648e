"""Starting and stopping the router: clean start/stop cycles, draining, TLS, bind errors."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
import trio
import trustme

from node.rpc import RpcServer, RpcSettings
from node.rpc.testing import MemoryBackend, StaticAuthenticator
from tests.rpc.conftest import ADMIN_MD, CALL_TIMEOUT_S, DEVICE, Client


def _socket_fds() -> set[str]:
    """Inodes of this process's open sockets."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def _sockets_on_port(port: int) -> set[str]:
    """This process's sockets whose local port is `port` (listening or accepted)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    return inodes & _socket_fds()


def _trio_tasks() -> int:
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

    return count(trio.lowlevel.current_root_task())


def _island_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "asgard-rpc"]


def _libuv_threads() -> int:
    """libuv's pool threads (C-level, invisible to `threading`), e.g. started by a DNS lookup.

    Other C-level threads of the process come and go with grpcio's client and are not counted.
    """
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                count += comm.read().strip() == "libuv-worker"
        except (FileNotFoundError, ProcessLookupError):  # the thread ended while we looked
            continue
    return count


async def _one_cycle(stubs: SimpleNamespace, backend: MemoryBackend, auth: StaticAuthenticator) -> int:
    settings = RpcSettings(host="127.0.0.1", port=0, shutdown_grace_s=1.0)
    server = RpcServer(settings, backend, auth)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve)
        assert len(_island_threads()) == 1
        channel = grpc.insecure_channel(f"{address[0]}:{address[1]}")
        client = Client(channel, stubs)
        health = await client.call(client.health.Check, stubs.health.HealthCheckRequest())
        assert health.status == stubs.health.HealthCheckResponse.SERVING
        await client.call(client.registry.ListDevices, stubs.registry.ListDevicesRequest(), metadata=ADMIN_MD)
        assert len(_sockets_on_port(address[1])) == 2  # listening + the accepted connection
        nursery.cancel_scope.cancel()
    # The server closed its side although the client still holds its connection open.
    assert _sockets_on_port(address[1]) == set()
    channel.close()
    island = server.island
    assert island is not None
    assert island.loop.is_closed()
    return island.tasks_left_at_stop


@pytest.mark.slow
async def test_twenty_start_stop_cycles_leave_no_thread_socket_or_task(
    stubs: SimpleNamespace, backend: MemoryBackend, authenticator: StaticAuthenticator
) -> None:
    # One warm-up cycle lets grpcio and Trio create their long-lived helpers (thread caches).
    await _one_cycle(stubs, backend, authenticator)
    sockets, tasks = _socket_fds(), _trio_tasks()
    threads = {t.ident for t in threading.enumerate()}
    libuv_threads = _libuv_threads()
    for _ in range(20):
        assert await _one_cycle(stubs, backend, authenticator) == 0
    assert _island_threads() == []
    assert _socket_fds() == sockets
    assert _trio_tasks() == tasks
    assert {t.ident for t in threading.enumerate() if not t.name.startswith("Trio thread")} <= threads
    assert _libuv_threads() == libuv_threads


async def test_shutdown_lets_unary_calls_finish_and_ends_streams(
    stubs: SimpleNamespace, backend: MemoryBackend, authenticator: StaticAuthenticator
) -> None:
    settings = RpcSettings(host="127.0.0.1", port=0, shutdown_grace_s=5.0)
    server = RpcServer(settings, backend, authenticator)
    r, h = stubs.registry, stubs.health
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve)
        channel = grpc.insecure_channel(f"{address[0]}:{address[1]}")
        client = Client(channel, stubs)
        try:
            await client.call(client.registry.ListDevices, r.ListDevicesRequest(), metadata=ADMIN_MD)
            status = client.registry.WatchStatus(r.WatchStatusRequest(), metadata=ADMIN_MD, timeout=10)
            health = client.health.Watch(h.HealthCheckRequest(service=""), timeout=10)
            assert (await client.call(next, health)).status == h.HealthCheckResponse.SERVING
            backend.delay_s = 0.5
            slow = client.registry.GetDevice.future(
                r.GetDeviceRequest(device_id=DEVICE), metadata=ADMIN_MD, timeout=10
            )
            with trio.fail_after(5):
                await backend.wait_until_waiting(1)
            nursery.cancel_scope.cancel()  # the node shuts down; serve() drains in its finally
            with trio.CancelScope(shield=True):
                assert (await client.call(next, health)).status == h.HealthCheckResponse.NOT_SERVING
                refused = await _first_refusal(client, r)
                assert refused.code() == grpc.StatusCode.UNAVAILABLE
                watch_end = await client.error(next, status)
                assert watch_end.code() == grpc.StatusCode.UNAVAILABLE
                error = await client.call(slow.exception, timeout=CALL_TIMEOUT_S)
                assert error is not None
                assert error.code() == grpc.StatusCode.NOT_FOUND  # it ran to its end: no such device
        finally:
            channel.close()
    assert backend.cancelled_calls == 0


async def _first_refusal(client: Client, r: SimpleNamespace) -> grpc.RpcError:
    """Calls made once draining started are refused; one made just before may still be served."""
    with trio.fail_after(5):
        while True:
            try:
                await client.call(client.registry.ListDevices, r.ListDevicesRequest(), metadata=ADMIN_MD)
            except grpc.RpcError as exc:
                return exc


def _write_tls(tmp_path: Path, ca: trustme.CA) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(key_path))
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(cert_path), append=True)
    return cert_path, key_path


async def test_tls_with_trustme_certificates(
    tmp_path: Path, stubs: SimpleNamespace, backend: MemoryBackend, authenticator: StaticAuthenticator
) -> None:
    ca = trustme.CA()
    cert_path, key_path = _write_tls(tmp_path, ca)
    settings = RpcSettings(host="127.0.0.1", port=0, tls_cert_path=cert_path, tls_key_path=key_path)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(RpcServer(settings, backend, authenticator).serve)
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            client = Client(channel, stubs)
            reply = await client.call(
                client.registry.ListDevices, stubs.registry.ListDevicesRequest(), metadata=ADMIN_MD
            )
            assert list(reply.devices) == []
        with grpc.insecure_channel(f"{host}:{port}") as plain:
            client = Client(plain, stubs)
            error = await client.error(client.health.Check, stubs.health.HealthCheckRequest(), timeout=2)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        stranger = grpc.ssl_channel_credentials(root_certificates=trustme.CA().cert_pem.bytes())
        with grpc.secure_channel(f"localhost:{port}", stranger) as untrusted:
            client = Client(untrusted, stubs)
            error = await client.error(client.health.Check, stubs.health.HealthCheckRequest(), timeout=2)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        nursery.cancel_scope.cancel()


async def test_mutual_tls_requires_a_client_certificate(
    tmp_path: Path, stubs: SimpleNamespace, backend: MemoryBackend, authenticator: StaticAuthenticator
) -> None:
    ca = trustme.CA()
    cert_path, key_path = _write_tls(tmp_path, ca)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    settings = RpcSettings(
        host="127.0.0.1", port=0, tls_cert_path=cert_path, tls_key_path=key_path, tls_client_ca_path=ca_path
    )
    client_cert = ca.issue_cert("peer-node.asgard.test")
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(RpcServer(settings, backend, authenticator).serve)
        anonymous = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        with grpc.secure_channel(f"localhost:{port}", anonymous) as channel:
            client = Client(channel, stubs)
            error = await client.error(client.health.Check, stubs.health.HealthCheckRequest(), timeout=2)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        known = grpc.ssl_channel_credentials(
            root_certificates=ca.cert_pem.bytes(),
            private_key=client_cert.private_key_pem.bytes(),
            certificate_chain=b"".join(p.bytes() for p in client_cert.cert_chain_pems),
        )
        with grpc.secure_channel(f"localhost:{port}", known) as channel:
            client = Client(channel, stubs)
            reply = await client.call(client.health.Check, stubs.health.HealthCheckRequest())
            assert reply.status == stubs.health.HealthCheckResponse.SERVING
        nursery.cancel_scope.cancel()


async def test_a_port_in_use_fails_the_start_and_stops_the_thread(
    backend: MemoryBackend, authenticator: StaticAuthenticator
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = RpcSettings(host="127.0.0.1", port=port)
        async with trio.open_nursery() as nursery:
            with pytest.raises(OSError, match=r"(?i)address already in use"):
                await nursery.start(RpcServer(settings, backend, authenticator).serve)
    assert _island_threads() == []


_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS


async def _h2_connection(port: int) -> trio.SocketStream:
    """A raw client connection the server took: it answered the preface with its SETTINGS."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(_PREFACE)
    head = b""
    while len(head) < 9:
        more = await stream.receive_some(9 - len(head))
        assert more, "the server closed an admitted connection"
        head += more
    assert head[3] == 4  # frame type SETTINGS
    return stream


async def _closed_at_once(port: int) -> bool:
    """Connect, say the preface, and tell whether the server closed without a byte of HTTP/2."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        with trio.fail_after(CALL_TIMEOUT_S):
            try:
                await stream.send_all(_PREFACE)
                return await stream.receive_some(9) == b""
            except trio.BrokenResourceError:  # reset: closed as well
                return True
    finally:
        await stream.aclose()


async def _on_island() -> None:
    return None


async def test_connections_over_the_limit_are_closed_on_arrival(
    stubs: SimpleNamespace, backend: MemoryBackend, authenticator: StaticAuthenticator
) -> None:
    settings = RpcSettings(host="127.0.0.1", port=0, max_connections=2, shutdown_grace_s=1.0)
    server = RpcServer(settings, backend, authenticator)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve)
        held = [await _h2_connection(port), await _h2_connection(port)]
        assert await _closed_at_once(port)
        stats = server.statistics()
        assert (stats["connections_open"], stats["connections_refused"]) == (2, 1)

        await held.pop().aclose()  # a slot frees once the server has seen the close
        with trio.fail_after(CALL_TIMEOUT_S):
            while server.statistics()["connections_open"] != 1:
                await trio.sleep(0.01)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            client = Client(channel, stubs)
            health = await client.call(client.health.Check, stubs.health.HealthCheckRequest())
            assert health.status == stubs.health.HealthCheckResponse.SERVING
            assert await _closed_at_once(port)  # the gRPC client holds the second slot

            server.apply_settings(settings.model_copy(update={"max_connections": 3}))  # live
            assert server.island is not None
            await server.island.run(_on_island)  # the island has taken the new limit
            held.append(await _h2_connection(port))
            assert await _closed_at_once(port)
            assert server.statistics()["connections_refused"] == 3
        finally:
            channel.close()
            for stream in held:
                await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_connection_that_says_nothing_is_closed_after_the_handshake_timeout(
    backend: MemoryBackend, authenticator: StaticAuthenticator
) -> None:
    settings = RpcSettings(host="127.0.0.1", port=0, handshake_timeout_s=0.2, shutdown_grace_s=1.0)
    server = RpcServer(settings, backend, authenticator)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve)
        talker = await _h2_connection(port)  # sent the preface and SETTINGS: past the handshake
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        half = await trio.open_tcp_stream("127.0.0.1", port)
        await half.send_all(_PREFACE[:20])  # most of the preface, then nothing
        with trio.fail_after(CALL_TIMEOUT_S):
            for stream in (silent, half):
                try:
                    while await stream.receive_some(1 << 16):  # `half` gets the server's SETTINGS
                        pass
                except trio.BrokenResourceError:
                    pass
        assert server.statistics()["handshake_timeouts"] == 2
        # The talker's own timer ran out before the silent ones' did: it is still served.
        await talker.send_all(bytes([0, 0, 8, 6, 0, 0, 0, 0, 0]) + b"pingpong")  # PING
        with trio.fail_after(CALL_TIMEOUT_S):
            answer = b""
            while b"pingpong" not in answer:
                more = await talker.receive_some(1 << 16)
                assert more, "the server closed a connection that had finished its handshake"
                answer += more
        for stream in (talker, silent, half):
            await stream.aclose()
        nursery.cancel_scope.cancel()
