"""Load tests and benchmarks (results in BENCHMARKS.md)."""
