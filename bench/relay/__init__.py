"""Benchmark of the WebSocket relay against the anchor relay (`python -m bench.relay`)."""
