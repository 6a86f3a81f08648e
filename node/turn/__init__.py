"""STUN/TURN service (RFC 8489, RFC 8656): server, credentials, peer policy and STUN probe."""

from node.turn.credentials import (
    ChainedUsers,
    ConfigUsers,
    KeyMaterial,
    TurnCredential,
    UserHashSource,
    UserSource,
    derive_keys,
    issue_rest_credential,
    rest_password,
    turn_uris,
)
from node.turn.policy import DEFAULT_DENY, PeerPolicy
from node.turn.probe import ProbeReport, StunProber, format_report, parse_server, probe_nat
from node.turn.service import TurnAddresses, TurnService, TurnStatistics, serve_turn
from node.turn.settings import TurnSettings

__all__ = [
    "DEFAULT_DENY",
    "ChainedUsers",
    "ConfigUsers",
    "KeyMaterial",
    "PeerPolicy",
    "ProbeReport",
    "StunProber",
    "TurnAddresses",
    "TurnCredential",
    "TurnService",
    "TurnSettings",
    "TurnStatistics",
    "UserHashSource",
    "UserSource",
    "derive_keys",
    "format_report",
    "issue_rest_credential",
    "parse_server",
    "probe_nat",
    "rest_password",
    "serve_turn",
    "turn_uris",
]
