"""TURN benchmark: Asgard's TURN service against coturn, side by side (`python -m bench.turn`)."""
