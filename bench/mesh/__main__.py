"""`python -m bench.mesh`: see bench/mesh/run.py."""

from bench.mesh.run import main

main()
