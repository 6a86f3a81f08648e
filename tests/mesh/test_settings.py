"""`[mesh]` settings: the listener's address and the addresses of peers are checked with errors that
say what is wrong."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from node.mesh.settings import MeshSettings


def test_defaults_name_the_mesh_listener() -> None:
    settings = MeshSettings()
    assert (settings.host, settings.port, settings.max_connections) == (None, 7703, 64)
    assert settings.link.max_message_bytes == 4 << 20


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"peers": ["node-b"]},
            "expected host:port with a port 1-65535, got 'node-b' (a peer's mesh listener)",
        ),
        ({"peers": ["10.0.0.2:0"]}, "got '10.0.0.2:0'"),
        ({"advertise_address": "0.0.0.0:7703"}, "0.0.0.0 is not an address peers can dial"),
        ({"advertise_address": "[::]:7703"}, ":: is not an address peers can dial"),
        ({"advertise_address": "node-a"}, "expected host:port"),
        ({"host": "a b"}, "expected an IP address or host name, got 'a b'"),
        ({"port": 65536}, "less than or equal to 65535"),
        ({"max_connections": 0}, "greater than or equal to 1"),
    ],
)
def test_invalid_values_are_refused_with_a_reason(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        MeshSettings.model_validate(fields)
    assert message in str(error.value)


def test_valid_addresses() -> None:
    settings = MeshSettings(peers=("10.0.0.2:7703", "[fe80::1]:7703", "node-b.local:1"),
                            advertise_address="192.168.1.10:7703", host="::")  # fmt: skip
    assert settings.peers[1] == "[fe80::1]:7703" and settings.host == "::"
