"""REST API benchmark (`python -m bench.api`): GET and POST /api/v1/devices on a node with 100k devices."""
