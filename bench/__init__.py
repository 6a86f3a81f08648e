"""Load generators and head-to-head benchmarks (not part of the test run)."""
