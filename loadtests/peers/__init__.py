"""Peer serving systems for `loadtests/bench_peers.py`.

`apps/` holds what runs inside each peer's own virtual environment (it imports nothing from
inferloop); the other modules are the driver's side: environments, processes, wrk, configurations.
"""
