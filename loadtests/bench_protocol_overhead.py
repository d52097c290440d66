"""What the HTTP protocol itself costs per request, without the noise of a whole server on a shared
machine: the fast path's protocol class (`protocol_for`) driven directly on a uvloop loop with a
stand-in transport and stand-in routes that answer at once, one keep-alive connection, the same
single-row OIP request `bench_gateway` sends. Two sources alternate, each run pinned to one core;
the process's CPU time per request is measured (so other load on the core counts little) and the
best of each source is kept: a change's cost is a difference measured in the same run.

    python -m loadtests.bench_protocol_overhead --baseline-ref REV [--ref REV] [--rounds 4] [--core 1]

Only what differs between the two sources' protocols shows (the parser, uvicorn's bookkeeping, the
fast cycle, limits and timers); decoding, batching and the forward pass are left out on purpose.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from loadtests.gateway_source import Source, checkout, verify, working_tree

DRIVER = r"""
import asyncio, sys, time
import uvloop
from uvicorn.config import Config
from uvicorn.server import ServerState
from inferloop.gateway.transport import http_protocol as hp
from inferloop.gateway.transport.inference import Reply

class Transport:
    closing = False
    def write(self, data): pass
    def close(self): self.closing = True
    def is_closing(self): return self.closing
    def pause_reading(self): pass
    def resume_reading(self): pass
    def can_write_eof(self): return True
    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name, default)

class Bodies:
    def watch(self, *args): pass
    def unwatch(self, *args): pass

class Routes:
    max_body = 8 << 20
    bodies = Bodies()
    async def answer(self, route, name, method, path, headers, read_body):
        await read_body(None)
        return Reply(200, [(b"x-model-version", b"1"), (b"x-request-id", b"abc")], b"application/json", b"{}")

async def app(scope, receive, send):
    pass

BODY = (b'{"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32",'
        b'"data":[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]}]}')
REQUEST = (b"POST /v2/models/bench/infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))

async def main(count):
    config = Config(app, loop="uvloop", http="httptools", log_level="warning")
    config.load()
    try:  # the protocol with connection limits takes their shared state
        from inferloop.gateway.settings import ServerSettings
        from inferloop.gateway.transport.http_guard import ConnectionGuard
        cls = hp.protocol_for(Routes(), ConnectionGuard(ServerSettings(max_connections=100)))
    except ImportError:
        cls = hp.protocol_for(Routes())
    protocol = cls(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(Transport())
    best = float("inf")
    for _ in range(3):
        started = time.process_time()  # CPU time: what other processes on the core take does not count
        for _ in range(count):
            protocol.data_received(REQUEST)
            await asyncio.sleep(0)  # the reply's task runs
        best = min(best, (time.process_time() - started) / count)
    print(best * 1e6)

uvloop.install()
asyncio.run(main(int(sys.argv[1])))
"""


def measure(source: Source, core: str, count: int) -> float:
    done = subprocess.run(["taskset", "-c", core, sys.executable, "-c", DRIVER, str(count)], cwd=source.cwd,
                          env=source.env(), capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", help="commit to measure (default: the working tree)")
    p.add_argument("--baseline-ref", required=True, help="commit to compare against")
    p.add_argument("--rounds", type=int, default=4, help="alternating runs of each (default 4)")
    p.add_argument("--requests", type=int, default=60_000, help="requests per timed pass (default 60000)")
    p.add_argument("--core", default="1", help="taskset CPU for every run (default 1)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="inferloop-protocol-") as tmp, ExitStack() as stack:
        this = stack.enter_context(checkout(args.ref, Path(tmp))) if args.ref else working_tree()
        base = stack.enter_context(checkout(args.baseline_ref, Path(tmp)))
        for source in (this, base):
            verify(source)
        samples: dict[str, list[float]] = {this.label: [], base.label: []}
        for _ in range(args.rounds):
            for source in (this, base):
                samples[source.label].append(measure(source, args.core, args.requests))
    ours, theirs = min(samples[this.label]), min(samples[base.label])
    command = "python -m loadtests.bench_protocol_overhead " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"Command: `{command}`\n")
    print("| protocol from | CPU µs per request (best of runs) | runs |\n|---|---:|---|")
    for label, values in samples.items():
        print(f"| {label} | {min(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    print(f"\nDifference: {ours - theirs:+.2f} µs per request ({this.label} against {base.label}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
