"""`python -m bench.relay`: see bench/relay/run.py."""

from bench.relay.run import main

main()
