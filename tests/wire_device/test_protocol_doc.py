"""docs/protocol.md stays true: every hex example decodes, re-encodes byte for byte, and has its type."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from wire.device import (
    DATA_TYPES,
    LOCK_MESSAGES,
    FrameType,
    capability_id,
    decode_control_untrusted,
    decode_frame_untrusted,
    decode_lock_untrusted,
    encode_control,
    group_id,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
EXAMPLE = re.compile(
    r"#### (\w+) \(0x([0-9A-F]{2})\)\n\n```\n[^\n]*\n([0-9a-f ]+)\n(?:payload, (UTF-8|hex):\n([^\n]*)\n)?```"
)


def examples() -> list[tuple[str, int, bytes]]:
    found = []
    for name, type_hex, header, kind, payload in EXAMPLE.findall(DOC.read_text()):
        raw = bytes.fromhex(header.replace(" ", ""))
        if kind == "UTF-8":
            raw += payload.encode("utf-8")
        elif kind == "hex":
            raw += bytes.fromhex(payload)
        found.append((name, int(type_hex, 16), raw))
    return found


def test_every_type_has_an_example() -> None:
    assert {t for _, t, _ in examples()} == {int(t) for t in FrameType} | set(LOCK_MESSAGES)


@pytest.mark.parametrize(("name", "ftype", "raw"), examples(), ids=[e[0] for e in examples()])
def test_example_decodes_and_reencodes(name: str, ftype: int, raw: bytes) -> None:
    view = decode_frame_untrusted(raw, max_payload=1 << 20)
    assert view.type == ftype
    if ftype in LOCK_MESSAGES:  # lock frames (§7): typed messages of their own
        assert LOCK_MESSAGES[ftype].__name__ == "Lock" + name.capitalize()
        message = decode_lock_untrusted(view)
    else:
        assert FrameType(ftype).name == name
        if ftype in DATA_TYPES:
            return
        message = decode_control_untrusted(view)
    again = encode_control(
        message,
        message_id=view.message_id,
        source=view.source,
        destination=view.destination,
        flags=view.flags,
    )
    assert again == raw


def test_derived_id_table() -> None:
    text = DOC.read_text()
    network = uuid.UUID("6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f")
    assert f'| group "kitchen" | `{group_id(network, "kitchen").hex()}` |' in text
    assert f'| capability "speaker" | `{capability_id("speaker").hex()}` |' in text
    assert f'| capability "tts" | `{capability_id("tts").hex()}` |' in text
