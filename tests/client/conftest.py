"""The client tests use the relay tests' live node fixtures."""

from tests.relay.conftest import env, jump_clock, start_relay

__all__ = ["env", "jump_clock", "start_relay"]
