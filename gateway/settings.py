"""Gateway settings: one frozen struct per concern, resolved in one place.

Every value comes from its command-line flag, else its `INFERLOOP_*` environment variable, else the
struct's default (`resolve_settings`). The registry URI alone has one more source between the
environment and the default: the project config `.inferloop/config.json` (`inferloop demo` writes
it), read by the same function as every other command's (`inferloop.registry.project_config`). Structs forbid unknown fields, so a typo in a settings file
or a test is an error, not a silently ignored knob.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from inferloop.registry import DEFAULT_REGISTRY_URI
from inferloop.registry.project_config import CONFIG_PATH, ProjectConfigError, configured_registry

Positive = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every settings struct."""


class ServerSettings(Settings, frozen=True):
    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    """TCP port (0: any free port)."""
    fd: int | None = None
    """Serve on an already bound listening socket with this file descriptor (socket activation, tests)."""
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    """Largest request body accepted; larger gets 413 before it is read in full."""
    max_request_rows: PositiveInt = 1024
    """Most rows one inference request may carry."""
    body_timeout_s: Positive = 30.0
    """How long a client may take to send a request body; a slower one gets 408 (slow-loris)."""
    admin_token: str | None = None
    """Bearer token for /admin; unset disables every admin endpoint (they answer 403)."""
    admin_wait_s: Positive = 30.0
    """How long an admin promote/rollback waits for this gateway to serve the new version."""
    admin_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    """Serve /admin on this port only (its own listener, so it can be firewalled); unset: on the public port."""
    admin_host: str | None = None
    """Interface of the admin listener (default: `host`)."""
    max_header_bytes: PositiveInt = 64 * 1024
    """Request line plus headers (and chunked trailers) at most; more gets 431 (414 for the line alone)."""
    max_headers: PositiveInt = 100
    """Header fields (and trailers) per request at most; more gets 431."""
    header_timeout_s: Positive = 10.0
    """How long a client may take to send a request's line and headers (from its first byte, or from
    connecting); a slower one gets 408 and the connection is closed."""
    keepalive_timeout_s: Positive = 5.0
    """An idle keep-alive connection is closed after this long."""
    send_timeout_s: Positive = 30.0
    """A client that reads none of a reply for this long (its buffers full) is disconnected."""
    max_connections: PositiveInt | None = None
    """Open client connections at most (both inference paths); None: the descriptor limit minus `fd_reserve`.
    At the limit an idle connection is closed to make room, else the new one gets 503."""
    fd_reserve: NonNegativeInt = 128
    """File descriptors kept for everything but client connections (registry polls, artifact
    files, the admin listener), when `max_connections` is derived from the descriptor limit."""
    max_pipeline: PositiveInt = 16
    """Pipelined requests waiting behind the one being answered, per connection; beyond it the
    connection is not read until they are answered."""
    graceful_timeout_s: Positive = 30.0
    """On SIGTERM, how long in-flight requests may take before connections are closed."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = False
    """Per-request access log lines (off by default: they cost throughput)."""
    http_fast_path: bool = True
    """Answer plain inference requests in uvicorn's HTTP protocol, without ASGI (inferloop.gateway.transport.http_protocol);
    off: every request goes through ASGI (same answers, about half the throughput on one core)."""
    grpc_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    """Serve the OIP v2 gRPC service (inference.GRPCInferenceService) on this port too (0: any free
    port); unset: no gRPC listener. `inferloop serve --grpc-port` alone means 8001, as Triton."""
    grpc_host: str | None = None
    """Interface of the gRPC listener (default: `host`)."""
    grpc_max_streams: PositiveInt = 100
    """Concurrent RPCs (HTTP/2 streams) per gRPC connection at most (HTTP/2 MAX_CONCURRENT_STREAMS).
    Well-behaved clients queue further calls until a stream frees; a stream opened beyond the limit is
    refused (REFUSED_STREAM, seen as UNAVAILABLE: never processed, safe to retry)."""
    grpc_max_rpcs: PositiveInt = 4096
    """RPCs in progress on the gRPC listener at most; beyond it new ones get RESOURCE_EXHAUSTED."""
    grpc_keepalive_s: Positive = 60.0
    """The gRPC listener pings a connection idle this long, and drops it if no answer comes in 20 s."""
    grpc_min_ping_interval_s: Positive = 10.0
    """Clients pinging more often than this (without calls) get GOAWAY (too_many_pings)."""
    gc_freeze: bool = True
    """Move start-up objects (torch's ~200k) out of the collector's reach, so full collections stay
    short and do not stall queued requests (measured: p99 87 ms -> 9 ms)."""


class RegistrySettings(Settings, frozen=True):
    uri: str = DEFAULT_REGISTRY_URI
    s3_endpoint: str | None = None
    poll_interval_s: Positive = 2.0
    """Seconds between conditional GETs of each stage pointer."""
    poll_jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.2
    """Each wait is poll_interval_s × (1 ± jitter), so replicas do not poll in lockstep."""
    retry_initial_s: Positive = 1.0
    """First back-off after a failed load or poll; doubles up to retry_max_s."""
    retry_max_s: Positive = 60.0
    change_record: bool = True
    """Follow the registry's change record (one conditional GET per poll interval, whatever the number
    of models) and read a pointer only when it names it; off, or on a registry without a record:
    every pointer is polled at poll_interval_s."""
    full_scan_interval_s: Positive = 300.0
    """While the change record is followed, every pointer is still read this often (a safety net)."""
    max_concurrent_polls: PositiveInt = 16
    """Pointer reads in flight at once over all models (spreads start-up and full scans)."""
    watch: bool = True
    """On a file:// registry (Linux), re-read the change record as soon as a writer replaces it
    (inotify), besides polling it: promotions arrive in milliseconds instead of up to one interval."""


class BatchingSettings(Settings, frozen=True):
    enabled: bool = True
    """Off: every request runs its own forward pass (where: as for a batch, see `inline_max_ms`)."""
    max_batch_size: PositiveInt = 64
    """Rows per forward pass at most (a single larger request still runs as one batch)."""
    max_delay_ms: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    """The longest a batch is held back for company: an upper bound, used only when measurements say
    waiting pays (`serving/batch_wait.py`)."""
    inline_max_ms: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    """At low concurrency (single-request batches), a CPU forward predicted to take at most this long
    runs on the event loop instead of the device thread, whose hand-off costs more than such a
    forward (0: always the device thread)."""
    swap_wait_s: Positive = 30.0
    """How long queued requests wait while a model is switched in the memory-safe order."""


class RuntimeSettings(Settings, frozen=True):
    device: str = "auto"
    """auto (cuda when present), cpu, cuda or cuda:N."""
    cache_versions: NonNegativeInt = 2
    """Versions kept loaded besides the serving one, so a rollback swaps back without reloading."""
    cache_dir: str | None = ".inferloop/gateway-cache"
    """Verified local copies of artifact blobs ('', 'none' or 'off': keep none on disk)."""
    cache_max_bytes: PositiveInt = 2 * 1024**3
    torch_threads: PositiveInt | None = None
    """torch intra-op threads (None: torch's default)."""
    load_headroom_bytes: NonNegativeInt = 64 * 1024**2
    """GPU memory wanted on top of a model's weights before loading it beside the serving one."""


Share = Annotated[float, msgspec.Meta(ge=0, le=1)]


class ShadowSettings(Settings, frozen=True):
    enabled: bool = True
    """Load each model's `shadow` version and mirror sampled live requests to it."""
    budget: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.25
    """Most of all inference time the shadow may use; beyond it mirrored batches are dropped and counted."""
    queue_rows: PositiveInt = 4096
    """Rows waiting for the shadow at most; overflow drops and counts."""
    max_batch_rows: PositiveInt = 256
    """Rows per shadow forward pass at most."""
    timeout_s: Positive = 5.0
    """A shadow batch running longer counts as an error (and blocks new ones until it ends)."""
    report_window: PositiveInt = 20_000
    """Paired predictions the rolling shadow report keeps per version pair."""
    evaluate_interval_s: Positive = 5.0
    """How often the shadow report is published to metrics and the promotion rules are checked."""
    prediction_log: str | None = None
    """Where joined prediction records go: a directory, file://DIR or s3://BUCKET/PREFIX (unset: no log)."""
    log_sample_rate: Share = 0.0
    """Share of requests not mirrored that are logged too (primary output only)."""


class DriftSettings(Settings, frozen=True):
    enabled: bool = True
    """Count live inputs against the production version's reference bins and evaluate PSI."""
    policies: str | None = None
    """Directory of model policies (YAML); a model's `shadow:` and `monitor:` sections come from there."""
    trainer_url: str | None = None
    """Base URL of `inferloop trainer serve` for `on_trigger: {action: retrain}` without its own `url`."""
    evaluate_interval_s: Positive = 1.0
    """How often windows are checked for closing."""


class GatewaySettings(Settings, frozen=True):
    models: tuple[str, ...] = ()
    """Model names to serve from their `production` pointers."""
    server: ServerSettings = ServerSettings()
    registry: RegistrySettings = RegistrySettings()
    batching: BatchingSettings = BatchingSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    shadow: ShadowSettings = ShadowSettings()
    drift: DriftSettings = DriftSettings()


class SettingsError(ValueError):
    """A value that cannot be used; the message names the flag and the variable."""


# (section, field) -> (flag destination in argparse, environment variable). One table, one order.
SOURCES: dict[tuple[str, str], tuple[str, str]] = {
    ("", "models"): ("model", "INFERLOOP_MODELS"),
    ("server", "host"): ("host", "INFERLOOP_HOST"),
    ("server", "port"): ("port", "INFERLOOP_PORT"),
    ("server", "fd"): ("fd", "INFERLOOP_FD"),
    ("server", "max_body_bytes"): ("max_body_bytes", "INFERLOOP_MAX_BODY_BYTES"),
    ("server", "max_request_rows"): ("max_request_rows", "INFERLOOP_MAX_REQUEST_ROWS"),
    ("server", "body_timeout_s"): ("body_timeout", "INFERLOOP_BODY_TIMEOUT"),
    ("server", "admin_token"): ("admin_token", "INFERLOOP_ADMIN_TOKEN"),
    ("server", "admin_wait_s"): ("admin_wait", "INFERLOOP_ADMIN_WAIT"),
    ("server", "admin_port"): ("admin_port", "INFERLOOP_ADMIN_PORT"),
    ("server", "admin_host"): ("admin_host", "INFERLOOP_ADMIN_HOST"),
    ("server", "max_header_bytes"): ("max_header_bytes", "INFERLOOP_MAX_HEADER_BYTES"),
    ("server", "max_headers"): ("max_headers", "INFERLOOP_MAX_HEADERS"),
    ("server", "header_timeout_s"): ("header_timeout", "INFERLOOP_HEADER_TIMEOUT"),
    ("server", "keepalive_timeout_s"): ("keepalive_timeout", "INFERLOOP_KEEPALIVE_TIMEOUT"),
    ("server", "send_timeout_s"): ("send_timeout", "INFERLOOP_SEND_TIMEOUT"),
    ("server", "max_connections"): ("max_connections", "INFERLOOP_MAX_CONNECTIONS"),
    ("server", "fd_reserve"): ("fd_reserve", "INFERLOOP_FD_RESERVE"),
    ("server", "max_pipeline"): ("max_pipeline", "INFERLOOP_MAX_PIPELINE"),
    ("server", "graceful_timeout_s"): ("graceful_timeout", "INFERLOOP_GRACEFUL_TIMEOUT"),
    ("server", "log_level"): ("log_level", "INFERLOOP_LOG_LEVEL"),
    ("server", "access_log"): ("access_log", "INFERLOOP_ACCESS_LOG"),
    ("server", "gc_freeze"): ("gc_freeze", "INFERLOOP_GC_FREEZE"),
    ("server", "grpc_port"): ("grpc_port", "INFERLOOP_GRPC_PORT"),
    ("server", "grpc_host"): ("grpc_host", "INFERLOOP_GRPC_HOST"),
    ("server", "grpc_max_streams"): ("grpc_max_streams", "INFERLOOP_GRPC_MAX_STREAMS"),
    ("server", "grpc_max_rpcs"): ("grpc_max_rpcs", "INFERLOOP_GRPC_MAX_RPCS"),
    ("server", "grpc_keepalive_s"): ("grpc_keepalive", "INFERLOOP_GRPC_KEEPALIVE"),
    ("server", "grpc_min_ping_interval_s"): ("grpc_min_ping_interval", "INFERLOOP_GRPC_MIN_PING_INTERVAL"),
    ("server", "http_fast_path"): ("http_fast_path", "INFERLOOP_HTTP_FAST_PATH"),
    ("registry", "uri"): ("registry", "INFERLOOP_REGISTRY"),
    ("registry", "s3_endpoint"): ("s3_endpoint", "AWS_ENDPOINT_URL"),
    ("registry", "poll_interval_s"): ("poll_interval", "INFERLOOP_POLL_INTERVAL"),
    ("registry", "poll_jitter"): ("poll_jitter", "INFERLOOP_POLL_JITTER"),
    ("registry", "retry_initial_s"): ("retry_initial", "INFERLOOP_RETRY_INITIAL"),
    ("registry", "retry_max_s"): ("retry_max", "INFERLOOP_RETRY_MAX"),
    ("registry", "change_record"): ("change_record", "INFERLOOP_CHANGE_RECORD"),
    ("registry", "full_scan_interval_s"): ("full_scan_interval", "INFERLOOP_FULL_SCAN_INTERVAL"),
    ("registry", "max_concurrent_polls"): ("max_concurrent_polls", "INFERLOOP_MAX_CONCURRENT_POLLS"),
    ("registry", "watch"): ("registry_watch", "INFERLOOP_REGISTRY_WATCH"),
    ("batching", "enabled"): ("batching", "INFERLOOP_BATCHING"),
    ("batching", "max_batch_size"): ("max_batch_size", "INFERLOOP_MAX_BATCH_SIZE"),
    ("batching", "max_delay_ms"): ("max_batch_delay_ms", "INFERLOOP_MAX_BATCH_DELAY_MS"),
    ("batching", "inline_max_ms"): ("inline_forward_max_ms", "INFERLOOP_INLINE_FORWARD_MAX_MS"),
    ("batching", "swap_wait_s"): ("swap_wait", "INFERLOOP_SWAP_WAIT"),
    ("runtime", "device"): ("device", "INFERLOOP_DEVICE"),
    ("runtime", "cache_versions"): ("cache_versions", "INFERLOOP_CACHE_VERSIONS"),
    ("runtime", "cache_dir"): ("cache_dir", "INFERLOOP_CACHE_DIR"),
    ("runtime", "cache_max_bytes"): ("cache_max_bytes", "INFERLOOP_CACHE_MAX_BYTES"),
    ("runtime", "torch_threads"): ("torch_threads", "INFERLOOP_TORCH_THREADS"),
    ("runtime", "load_headroom_bytes"): ("load_headroom_bytes", "INFERLOOP_LOAD_HEADROOM_BYTES"),
    ("shadow", "enabled"): ("shadow", "INFERLOOP_SHADOW"),
    ("shadow", "budget"): ("shadow_budget", "INFERLOOP_SHADOW_BUDGET"),
    ("shadow", "queue_rows"): ("shadow_queue_rows", "INFERLOOP_SHADOW_QUEUE_ROWS"),
    ("shadow", "timeout_s"): ("shadow_timeout", "INFERLOOP_SHADOW_TIMEOUT"),
    ("shadow", "prediction_log"): ("prediction_log", "INFERLOOP_PREDICTION_LOG"),
    ("shadow", "log_sample_rate"): ("log_sample_rate", "INFERLOOP_LOG_SAMPLE_RATE"),
    ("shadow", "evaluate_interval_s"): ("shadow_interval", "INFERLOOP_SHADOW_INTERVAL"),
    ("drift", "enabled"): ("drift", "INFERLOOP_DRIFT"),
    ("drift", "policies"): ("policies", "INFERLOOP_POLICIES"),
    ("drift", "trainer_url"): ("trainer_url", "INFERLOOP_TRAINER_URL"),
}

_BOOLEAN = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _from_env(field: str, raw: str) -> Any:
    if field == "models":
        return tuple(m.strip() for m in raw.split(",") if m.strip())
    if raw.strip().lower() in _BOOLEAN and field in ("enabled", "access_log", "gc_freeze", "http_fast_path"):
        return _BOOLEAN[raw.strip().lower()]
    return raw


def resolve_settings(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                     root: Path | None = None) -> GatewaySettings:
    """Build settings from flags (argparse dests; None = not given), then environment, then defaults;
    the registry URI from the project config under `root` (default: the working directory) before
    its default."""
    flags = flags or {}
    env = os.environ if env is None else env
    tree: dict[str, Any] = {}
    origin: dict[tuple[str, str], str] = {}
    for (section, field), (dest, var) in SOURCES.items():
        value = flags.get(dest)
        if value is not None and value != [] and value != ():
            where = f"--{dest.replace('_', '-')}"
            value = tuple(value) if field == "models" else value
        elif env.get(var, "") != "":
            where, value = f"${var}", _from_env(field, env[var])
        else:
            continue
        if field == "cache_dir" and str(value).lower() in ("", "none", "off"):
            value = None
        origin[(section, field)] = where
        (tree.setdefault(section, {}) if section else tree)[field] = value
    if ("registry", "uri") not in origin:
        try:
            configured = configured_registry(root)
        except ProjectConfigError as exc:
            raise SettingsError(str(exc)) from None
        if configured is not None:
            origin[("registry", "uri")] = str(CONFIG_PATH)
            tree.setdefault("registry", {})["uri"] = configured
    try:
        # strict=False converts environment strings ("8000", "2.5", "true") to the field's type.
        return msgspec.convert(tree, GatewaySettings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_explain(exc, origin)) from None


def _explain(exc: msgspec.ValidationError, origin: dict[tuple[str, str], str]) -> str:
    message = str(exc)
    for (section, field), where in origin.items():
        path = f"$.{section}.{field}" if section else f"$.{field}"
        if message.endswith(f"`{path}`") or f"`{path}[" in message:
            return f"invalid {where}: {message.rsplit(' - at ', 1)[0]}"
    return f"invalid settings: {message}"
