"""The generated package is current, and the settings refuse inconsistent values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from node.rpc import RpcSettings
from node.rpc.settings import LIVE, NeighbourSettings

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-protos"), "--check"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_tls_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="set together"):
        RpcSettings(tls_cert_path=tmp_path / "cert.pem")
    with pytest.raises(ValidationError, match="needs tls_cert_path"):
        RpcSettings(tls_client_ca_path=tmp_path / "ca.pem")


@pytest.mark.parametrize("address", ["localhost", ":7702", "host:", "host:99999", "host:http"])
def test_neighbour_addresses_need_a_port(address: str) -> None:
    with pytest.raises(ValidationError, match="host:port"):
        NeighbourSettings(address=address)


def test_neighbour_address_parts() -> None:
    assert NeighbourSettings(address="[::1]:7790").host_port() == ("::1", 7790)
    assert NeighbourSettings(address="odin.local:7790").host_port() == ("odin.local", 7790)


def test_every_field_is_described_and_live_fields_are_marked() -> None:
    for name, field in RpcSettings.model_fields.items():
        assert field.description, name
    live = {n for n, f in RpcSettings.model_fields.items() if f.json_schema_extra == LIVE}
    assert live == {
        "max_message_bytes",
        "max_in_flight",
        "max_connections",
        "handshake_timeout_s",
        "default_call_timeout_s",
        "shutdown_grace_s",
        "auth_cache_ttl_s",
        "auth_cache_max_entries",
        "public_health",
    }
    with pytest.raises(ValidationError):
        RpcSettings(unknown_key=1)  # type: ignore[call-arg]
