"""A Trio device client for the relay: connect, register, send, receive, confirm, reconnect, lock."""

from node.client._client import FINAL_CLOSE_CODES, ClientSettings, DeviceClient, open_device_client
from node.client._locks import LockCalls, LockNotice, LockRefusedError
from node.client._types import (
    Ack,
    ClientError,
    ConnectionLost,
    Message,
    NackError,
    SeenIds,
    SessionEnded,
)

__all__ = [
    "FINAL_CLOSE_CODES",
    "Ack",
    "ClientError",
    "ClientSettings",
    "ConnectionLost",
    "DeviceClient",
    "LockCalls",
    "LockNotice",
    "LockRefusedError",
    "Message",
    "NackError",
    "SeenIds",
    "SessionEnded",
    "open_device_client",
]
