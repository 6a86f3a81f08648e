"""Pure-Python unmasking of client frames (RFC 6455 §5.3), the fallback when no C helper is injected.

Measured on this machine (µs per call, 64 B / 4 KiB / 64 KiB): `websockets.speedups.apply_mask`
(C) 0.25 / 0.43 / 2.9; big-int XOR 1.5 / 15.7 / 228; four strided `bytes.translate` passes
3.2 / 11.5 / 141. So the node injects the C helper when it is installed, and this module picks the
faster pure-Python method by size when it is not.
"""

from __future__ import annotations

from collections.abc import Callable

BytesLike = bytes | bytearray | memoryview
Unmasker = Callable[[BytesLike, bytes], bytes]

# One translation table per mask byte value: table[k][b] == b ^ k.
_XOR_TABLES = tuple(bytes(b ^ k for b in range(256)) for k in range(256))
_TRANSLATE_FROM_BYTES = 2048


def unmask_python(data: BytesLike, mask: bytes) -> bytes:
    """Return `data` XOR the repeated 4-byte `mask`."""
    view = memoryview(data)
    n = view.nbytes
    if n < _TRANSLATE_FROM_BYTES:
        key = int.from_bytes((mask * ((n >> 2) + 1))[:n], "little")
        return (int.from_bytes(view, "little") ^ key).to_bytes(n, "little")
    src = view.tobytes()
    out = bytearray(n)
    for i in range(4):
        out[i::4] = src[i::4].translate(_XOR_TABLES[mask[i]])
    return bytes(out)
