"""`inferloop serve`: run the gateway under uvicorn (uvloop + httptools).

Kept light at import: `inferloop --help` imports this module for its flags, and torch, Litestar
and uvicorn load only when the server starts.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
from pathlib import Path

from inferloop.registry.commandline import REGISTRY_HELP

DEFAULT_GRPC_PORT = 8001  # Triton's; `--grpc-port` without a value


def register_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve models over HTTP with hot swap (Open Inference Protocol v2)",
                       description="Serve the production version of each --model; swap versions when the "
                                   "registry pointer moves. Flags override INFERLOOP_* environment variables.")
    p.add_argument("--registry", help=REGISTRY_HELP)
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (env AWS_ENDPOINT_URL)")
    p.add_argument("--model", action="append", metavar="NAME",
                   help="model to serve; repeat for several (env INFERLOOP_MODELS, comma-separated)")
    p.add_argument("--host", help="interface (env INFERLOOP_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (env INFERLOOP_PORT, default 8000)")
    p.add_argument("--fd", type=int, help="serve on this already-bound socket file descriptor (env INFERLOOP_FD)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (env INFERLOOP_DEVICE, default auto)")
    p.add_argument("--poll-interval", type=float, metavar="S",
                   help="seconds between pointer polls (env INFERLOOP_POLL_INTERVAL, default 2)")
    p.add_argument("--max-batch-size", type=int, metavar="N",
                   help="rows per forward pass at most (env INFERLOOP_MAX_BATCH_SIZE, default 64)")
    p.add_argument("--max-batch-delay-ms", type=float, metavar="D",
                   help="longest wait for a batch to fill (env INFERLOOP_MAX_BATCH_DELAY_MS, default 2)")
    p.add_argument("--inline-forward-max-ms", type=float, metavar="T",
                   help="at low concurrency, a CPU forward measured shorter than this runs on the event loop, not "
                        "the device thread (0: never; env INFERLOOP_INLINE_FORWARD_MAX_MS, default 2)")
    p.add_argument("--batching", choices=["on", "off"], help="micro-batching (env INFERLOOP_BATCHING, default on)")
    p.add_argument("--cache-versions", type=int, metavar="N",
                   help="versions kept loaded for instant rollback (env INFERLOOP_CACHE_VERSIONS, default 2)")
    p.add_argument("--cache-dir", help="local verified blob copies ('none' to keep none; env INFERLOOP_CACHE_DIR, "
                                       "default .inferloop/gateway-cache)")
    p.add_argument("--max-body-bytes", type=int, metavar="N",
                   help="largest request body (env INFERLOOP_MAX_BODY_BYTES, default 8 MiB)")
    p.add_argument("--max-request-rows", type=int, metavar="N",
                   help="most rows per request (env INFERLOOP_MAX_REQUEST_ROWS, default 1024)")
    p.add_argument("--body-timeout", type=float, metavar="S",
                   help="seconds a client may take to send a request body, else 408 (env INFERLOOP_BODY_TIMEOUT, "
                        "default 30)")
    p.add_argument("--max-header-bytes", type=int, metavar="N",
                   help="request line + headers at most, else 431 (env INFERLOOP_MAX_HEADER_BYTES, default 64 KiB)")
    p.add_argument("--max-headers", type=int, metavar="N",
                   help="header fields per request at most, else 431 (env INFERLOOP_MAX_HEADERS, default 100)")
    p.add_argument("--header-timeout", type=float, metavar="S",
                   help="seconds a client may take to send its request headers, else 408 and closed "
                        "(env INFERLOOP_HEADER_TIMEOUT, default 10)")
    p.add_argument("--keepalive-timeout", type=float, metavar="S",
                   help="idle keep-alive connections are closed after this (env INFERLOOP_KEEPALIVE_TIMEOUT, default 5)")
    p.add_argument("--send-timeout", type=float, metavar="S",
                   help="a client reading none of a reply for this long is disconnected (env INFERLOOP_SEND_TIMEOUT, "
                        "default 30)")
    p.add_argument("--max-connections", type=int, metavar="N",
                   help="open client connections at most (env INFERLOOP_MAX_CONNECTIONS, default: the descriptor "
                        "limit minus --fd-reserve)")
    p.add_argument("--fd-reserve", type=int, metavar="N",
                   help="descriptors kept for the registry poller, files and the admin listener "
                        "(env INFERLOOP_FD_RESERVE, default 128)")
    p.add_argument("--max-pipeline", type=int, metavar="N",
                   help="pipelined requests queued per connection before it is no longer read "
                        "(env INFERLOOP_MAX_PIPELINE, default 16)")
    p.add_argument("--admin-port", type=int, metavar="PORT",
                   help="serve /admin only on this port, its own listener (env INFERLOOP_ADMIN_PORT; default: "
                        "the public port)")
    p.add_argument("--admin-host", metavar="HOST",
                   help="interface of the --admin-port listener (env INFERLOOP_ADMIN_HOST, default: --host)")
    p.add_argument("--torch-threads", type=int, metavar="N", help="torch intra-op threads (env INFERLOOP_TORCH_THREADS)")
    p.add_argument("--admin-token-file", type=Path, metavar="FILE",
                   help="file holding the admin bearer token (else env INFERLOOP_ADMIN_TOKEN; none: admin disabled)")
    p.add_argument("--graceful-timeout", type=float, metavar="S",
                   help="on SIGTERM, time allowed for in-flight requests (env INFERLOOP_GRACEFUL_TIMEOUT, default 30)")
    p.add_argument("--poll-jitter", type=float, metavar="F",
                   help="each poll wait is interval × (1 ± F) (env INFERLOOP_POLL_JITTER, default 0.2)")
    p.add_argument("--retry-initial", type=float, metavar="S",
                   help="first back-off after a failed load or poll (env INFERLOOP_RETRY_INITIAL, default 1)")
    p.add_argument("--retry-max", type=float, metavar="S", help="longest back-off (env INFERLOOP_RETRY_MAX, default 60)")
    p.add_argument("--change-record", choices=["on", "off"],
                   help="follow the registry's change record: one poll per interval whatever the number of models "
                        "(env INFERLOOP_CHANGE_RECORD, default on)")
    p.add_argument("--full-scan-interval", type=float, metavar="S",
                   help="with the change record, read every pointer this often as a safety net "
                        "(env INFERLOOP_FULL_SCAN_INTERVAL, default 300)")
    p.add_argument("--registry-watch", choices=["on", "off"],
                   help="on a file:// registry, re-read the change record as soon as it is replaced (inotify) "
                        "(env INFERLOOP_REGISTRY_WATCH, default on)")
    p.add_argument("--max-concurrent-polls", type=int, metavar="N",
                   help="pointer reads in flight at once (env INFERLOOP_MAX_CONCURRENT_POLLS, default 16)")
    p.add_argument("--swap-wait", type=float, metavar="S",
                   help="how long requests wait during a memory-safe swap (env INFERLOOP_SWAP_WAIT, default 30)")
    p.add_argument("--admin-wait", type=float, metavar="S",
                   help="how long an admin move waits for this gateway to serve it (env INFERLOOP_ADMIN_WAIT, "
                        "default 30)")
    p.add_argument("--cache-max-bytes", type=int, metavar="N",
                   help="size bound of --cache-dir (env INFERLOOP_CACHE_MAX_BYTES, default 2 GiB)")
    p.add_argument("--load-headroom-bytes", type=int, metavar="N",
                   help="GPU memory wanted beyond a model's weights to load it beside the serving one "
                        "(env INFERLOOP_LOAD_HEADROOM_BYTES, default 64 MiB)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"],
                   help="env INFERLOOP_LOG_LEVEL, default info")
    p.add_argument("--access-log", action="store_const", const=True, help="log every request (env INFERLOOP_ACCESS_LOG)")
    p.add_argument("--policies", metavar="DIR",
                   help="directory of model policies: shadow: and monitor: sections (env INFERLOOP_POLICIES)")
    p.add_argument("--trainer-url", metavar="URL",
                   help="trainer service for drift-triggered retraining (env INFERLOOP_TRAINER_URL)")
    p.add_argument("--shadow", choices=["on", "off"], help="serve shadow versions and mirror traffic "
                                                           "(env INFERLOOP_SHADOW, default on)")
    p.add_argument("--shadow-budget", type=float, metavar="F",
                   help="largest share of inference time the shadow may use (env INFERLOOP_SHADOW_BUDGET, "
                        "default 0.25)")
    p.add_argument("--shadow-queue-rows", type=int, metavar="N",
                   help="rows waiting for the shadow at most (env INFERLOOP_SHADOW_QUEUE_ROWS, default 4096)")
    p.add_argument("--shadow-timeout", type=float, metavar="S",
                   help="a shadow batch longer than this is an error (env INFERLOOP_SHADOW_TIMEOUT, default 5)")
    p.add_argument("--shadow-interval", type=float, metavar="S",
                   help="shadow report evaluation period (env INFERLOOP_SHADOW_INTERVAL, default 5)")
    p.add_argument("--prediction-log", metavar="DIR|URI",
                   help="joined prediction records: a directory or s3://BUCKET/PREFIX (env INFERLOOP_PREDICTION_LOG)")
    p.add_argument("--log-sample-rate", type=float, metavar="F",
                   help="share of non-mirrored requests logged (env INFERLOOP_LOG_SAMPLE_RATE, default 0)")
    p.add_argument("--drift", choices=["on", "off"], help="streaming PSI drift monitoring (env INFERLOOP_DRIFT, "
                                                          "default on)")
    p.add_argument("--http-fast-path", choices=["on", "off"],
                   help="answer inference requests in the HTTP protocol, without ASGI (env INFERLOOP_HTTP_FAST_PATH, "
                        "default on; off: everything through ASGI)")
    p.add_argument("--grpc-port", type=int, nargs="?", const=DEFAULT_GRPC_PORT, metavar="PORT",
                   help="also serve the OIP v2 gRPC service (inference.GRPCInferenceService) on this port; the flag "
                        f"alone: {DEFAULT_GRPC_PORT}, as Triton (env INFERLOOP_GRPC_PORT; default: no gRPC)")
    p.add_argument("--grpc-host", metavar="HOST", help="interface of the gRPC listener (env INFERLOOP_GRPC_HOST, "
                                                        "default: --host)")
    p.add_argument("--grpc-max-streams", type=int, metavar="N",
                   help="concurrent RPCs per gRPC connection (env INFERLOOP_GRPC_MAX_STREAMS, default 100)")
    p.add_argument("--grpc-max-rpcs", type=int, metavar="N",
                   help="RPCs in progress at most, beyond: RESOURCE_EXHAUSTED (env INFERLOOP_GRPC_MAX_RPCS, "
                        "default 4096)")
    p.add_argument("--grpc-keepalive", type=float, metavar="S",
                   help="ping gRPC connections idle this long (env INFERLOOP_GRPC_KEEPALIVE, default 60)")
    p.add_argument("--grpc-min-ping-interval", type=float, metavar="S",
                   help="clients pinging more often get GOAWAY (env INFERLOOP_GRPC_MIN_PING_INTERVAL, default 10)")
    p.add_argument("--no-gc-freeze", dest="gc_freeze", action="store_const", const=False,
                   help="do not freeze start-up objects out of the garbage collector (env INFERLOOP_GC_FREEZE=0)")


def _flags(args: argparse.Namespace) -> dict[str, object]:
    from inferloop.registry.commandline import UsageError

    flags = dict(vars(args))
    for switch in ("batching", "shadow", "drift", "http_fast_path"):
        if flags.get(switch) is not None:
            flags[switch] = flags[switch] == "on"
    token_file = flags.pop("admin_token_file", None)
    if token_file is not None:
        try:
            flags["admin_token"] = Path(token_file).read_text().strip() or None
        except OSError as exc:
            raise UsageError(f"cannot read --admin-token-file: {exc}") from None
    return flags


def run(args: argparse.Namespace) -> int:
    from inferloop.gateway.settings import SettingsError, resolve_settings
    from inferloop.registry import AsyncRegistry
    from inferloop.registry.commandline import UsageError
    from inferloop.registry.names import check_model_name

    try:
        settings = resolve_settings(_flags(args))
    except SettingsError as exc:
        raise UsageError(str(exc)) from None
    if not settings.models:
        raise UsageError("nothing to serve: pass --model NAME (or set INFERLOOP_MODELS)")
    for name in settings.models:
        check_model_name(name)
    AsyncRegistry.open(settings.registry.uri, s3_endpoint=settings.registry.s3_endpoint)  # a bad URI fails here

    import msgspec
    import uvicorn

    from inferloop.gateway.app import create_app, uvicorn_config
    from inferloop.gateway.serving.device import DeviceUnavailable, resolve_device, return_large_frees_to_os

    try:
        resolve_device(settings.runtime.device)
    except DeviceUnavailable as exc:
        raise UsageError(str(exc)) from None
    return_large_frees_to_os()
    logging.basicConfig(level=settings.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = settings.server
    # an inherited listening socket (socket activation, tests): its family is read from the descriptor
    sockets = [socket.socket(fileno=server.fd)] if server.fd is not None else None
    if server.admin_port is not None:  # two listeners: both bound here, so a port taken is one clear error
        sockets = sockets or [_listen(server.host, server.port, "--port")]
        admin = _listen(server.admin_host or server.host, server.admin_port, "--admin-port")
        sockets.append(admin)
        host, port = admin.getsockname()[:2]
        settings = msgspec.structs.replace(settings, server=msgspec.structs.replace(server, admin_port=port))
        logging.getLogger("inferloop.gateway").info("admin API on http://%s:%d/admin (not on the public port)",
                                                    host, port)
    config = uvicorn_config(create_app(settings), settings, host=server.host, port=server.port, log_config=None)
    # uvicorn finishes in-flight requests on SIGTERM, then re-raises the signal; this handler turns
    # that re-raise into a normal exit (status 0) instead of death by signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uv = uvicorn.Server(config)
    uv.run(sockets=sockets)
    return 0 if uv.started else 1


def _listen(host: str, port: int, flag: str) -> socket.socket:
    from inferloop.registry.commandline import UsageError

    try:
        return socket.create_server((host, port), backlog=2048)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} ({flag}): {exc.strerror or exc}") from None
