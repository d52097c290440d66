"""Every server configuration the driver measures: how to start it and what to send it.

A `Config` belongs to a peer (the name of its venv, or of a server run from the project's own
environment) and builds a `Launch` for a port inside a `Context` (the shared weights, the request
row, a scratch directory).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..gateway_source import Source, working_tree
from . import venvs

APPS = Path(__file__).resolve().parent / "apps"
REPO = APPS.parents[2]
JSON = {"Content-Type": "application/json"}


@dataclass
class Context:
    work: Path  # scratch directory of this run
    weights: Path  # bench.safetensors, the same bytes for every server
    row: list[float]  # the single request row
    hidden: tuple[int, ...] = (64, 64)  # the MLP's hidden sizes (8→hidden…→1), $BENCH_HIDDEN for every server
    registry: Path | None = None  # file registry holding the same weights as model "bench" (gateway)
    # the code the gateway runs (the working tree, or a checkout of --gateway-ref) and wrote the registry with
    gateway_source: Source = field(default_factory=working_tree)


@dataclass
class Launch:
    cmd: list[str]
    url: str
    body: bytes
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    ready_timeout: float = 60.0
    min_warmup: float = 0.0  # seconds of warm-up this server needs at least (JVM)
    cleanup: list[Path] = field(default_factory=list)  # directories outside the scratch dir to remove


@dataclass(frozen=True)
class Config:
    peer: str  # the venv under loadtests/.venvs, or a name for the project's own environment
    server: str  # label in the table
    variant: str  # "stock", "best", ...
    build: Callable[[Context, Path, int], Launch]  # (context, its own scratch dir, port)
    own_env: bool = False  # runs in the project's environment (bare ceiling, gateway)
    best: bool = False  # the peer's best configuration (or a reference): what a concurrency sweep measures
    check: bool = True  # its answer must be the model's (the echo ceiling answers a constant)

    @property
    def key(self) -> str:
        return f"{self.server} [{self.variant}]"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def oip_body(row: list[float]) -> bytes:
    return json.dumps({"inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "FP32",
                                   "data": row}]}).encode()


def _env(ctx: Context, peer: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    if peer is not None:
        env["PATH"] = f"{venvs.VENVS / peer / 'bin'}:{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(venvs.VENVS / peer)
    env.update(BENCH_WEIGHTS=str(ctx.weights), BENCH_HIDDEN=",".join(map(str, ctx.hidden)), PYTHONPATH=str(APPS),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", BENTOML_DO_NOT_TRACK="true", **extra)
    return env


# ---- bare ceiling and FastAPI --------------------------------------------------------------------

def bare(echo: bool = False) -> Callable[[Context, Path, int], Launch]:
    """The bare handler with the forward inline, or (`echo`) answering a constant: the ceiling of
    Litestar + msgspec + uvicorn on this machine, no model at all."""
    def build(ctx: Context, _: Path, port: int) -> Launch:
        return Launch([sys.executable, str(APPS / "bare_app.py"), str(port), *(["--echo"] if echo else [])],
                      f"http://127.0.0.1:{port}/v2/models/bench/infer", oip_body(ctx.row), APPS, _env(ctx))
    return build


def fastapi(quiet: bool) -> Callable[[Context, Path, int], Launch]:
    def build(ctx: Context, _: Path, port: int) -> Launch:
        cmd = [str(venvs.python_of("fastapi")), str(APPS / "fastapi_app.py"), str(port)]
        return Launch(cmd + (["--quiet"] if quiet else []), f"http://127.0.0.1:{port}/predict",
                      json.dumps({"x": ctx.row}).encode(), APPS, _env(ctx, "fastapi"))
    return build


# ---- Seldon MLServer -----------------------------------------------------------------------------

def mlserver(best: bool, batching: bool) -> Callable[[Context, Path, int], Launch]:
    """stock: MLServer's default settings (parallel inference workers, metrics); best: inference in
    the server process (parallel_workers=0) and no debug logging. Batching: MLServer's adaptive
    batching, 64 rows / 2 ms."""
    def build(ctx: Context, work: Path, port: int) -> Launch:
        models = work / "models" / "bench"
        models.mkdir(parents=True, exist_ok=True)
        settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
                    "metrics_port": free_port()}
        if best:
            settings.update(parallel_workers=0, debug=False)
        model = {"name": "bench", "implementation": "mlserver_runtime.BenchRuntime"}
        if batching:
            model.update(max_batch_size=64, max_batch_time=0.002)
        (work / "settings.json").write_text(json.dumps(settings))
        (models / "model-settings.json").write_text(json.dumps(model))
        return Launch([str(venvs.VENVS / "mlserver" / "bin" / "mlserver"), "start", str(work)],
                      f"http://127.0.0.1:{port}/v2/models/bench/infer", oip_body(ctx.row), work,
                      _env(ctx, "mlserver"), ready_timeout=90)
    return build


# ---- Ray Serve -----------------------------------------------------------------------------------

def ray(batch: bool, max_ongoing: int | None, direct: bool = False) -> Callable[[Context, Path, int], Launch]:
    """direct: Ray Serve's throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1: direct
    ingress, the replica itself listens on HTTP, no proxy hop); its port range is narrowed to `port`."""
    def build(ctx: Context, work: Path, port: int) -> Launch:
        extra: dict[str, str] = {}
        serve_port = port
        if direct:
            serve_port, grpc = free_port(), free_port()
            extra = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                     "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
                     "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),
                     "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc),
                     "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc + 1)}
        # Ray's session dir holds unix sockets (path limit ~107 bytes): a short one in /tmp
        temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        cmd = [str(venvs.python_of("ray")), str(APPS / "ray_app.py"), str(serve_port), "--temp-dir", str(temp)]
        cmd += ["--batch"] if batch else []
        cmd += ["--max-ongoing", str(max_ongoing)] if max_ongoing else []
        return Launch(cmd, f"http://127.0.0.1:{port}/predict", json.dumps({"x": ctx.row}).encode(), work,
                      _env(ctx, "ray", **extra), ready_timeout=120, min_warmup=5, cleanup=[temp])
    return build


# ---- BentoML -------------------------------------------------------------------------------------

def bentoml(service: str) -> Callable[[Context, Path, int], Launch]:
    def build(ctx: Context, work: Path, port: int) -> Launch:
        x = [ctx.row] if service == "Batched" else ctx.row
        cmd = [str(venvs.VENVS / "bentoml" / "bin" / "bentoml"), "serve", f"bento_service:{service}",
               "--host", "127.0.0.1", "--port", str(port)]
        return Launch(cmd, f"http://127.0.0.1:{port}/predict", json.dumps({"x": x}).encode(), APPS,
                      _env(ctx, "bentoml", BENTOML_HOME=str(work / "bentoml")), ready_timeout=90)
    return build


# ---- TorchServe ----------------------------------------------------------------------------------

QUIET_LOG4J = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT"><PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/></Console>
  </Appenders>
  <Loggers><Root level="warn"><AppenderRef ref="STDOUT"/></Root></Loggers>
</Configuration>
"""


def _archive(ctx: Context) -> Path:
    """bench.mar (handler + bench_model.py + the weights), built once per run."""
    store = ctx.work / "torchserve-store"
    mar = store / "bench.mar"
    if not mar.exists():
        store.mkdir(parents=True, exist_ok=True)
        weights = store / "bench.safetensors"
        weights.write_bytes(ctx.weights.read_bytes())
        subprocess.run([str(venvs.VENVS / "torchserve" / "bin" / "torch-model-archiver"), "--model-name", "bench",
                        "--version", "1.0", "--handler", str(APPS / "torchserve_handler.py"),
                        "--extra-files", f"{APPS / 'bench_model.py'},{weights}", "--export-path", str(store)],
                       check=True, capture_output=True)
    return store


def torchserve(best: bool) -> Callable[[Context, Path, int], Launch]:
    """stock: TorchServe's defaults (one request per handler call, its own log4j2 config);
    best: server-side batching (batch_size 64, max_batch_delay 2 ms) and a warnings-only log."""
    def build(ctx: Context, work: Path, port: int) -> Launch:
        store = _archive(ctx)
        props = [f"inference_address=http://127.0.0.1:{port}",
                 f"management_address=http://127.0.0.1:{free_port()}",
                 f"metrics_address=http://127.0.0.1:{free_port()}",
                 f"model_store={store}", "load_models=bench.mar", "disable_token_authorization=true",
                 "enable_model_api=false"]
        if best:
            props.append("models=" + json.dumps({"bench": {"1.0": {
                "defaultVersion": True, "marName": "bench.mar", "minWorkers": 1, "maxWorkers": 1,
                "batchSize": 64, "maxBatchDelay": 2, "responseTimeout": 120}}}))
        (work / "config.properties").write_text("\n".join(props) + "\n")
        cmd = [str(venvs.VENVS / "torchserve" / "bin" / "torchserve"), "--start", "--foreground", "--ncs",
               "--disable-token-auth", "--ts-config", str(work / "config.properties")]
        if best:
            (work / "log4j2.xml").write_text(QUIET_LOG4J)
            cmd += ["--log-config", str(work / "log4j2.xml")]
        return Launch(cmd, f"http://127.0.0.1:{port}/predictions/bench", json.dumps(ctx.row).encode(), work,
                      _env(ctx, "torchserve", LOG_LOCATION=str(work / "logs"),
                           METRICS_LOCATION=str(work / "logs")),
                      ready_timeout=120, min_warmup=15)
    return build


# ---- our gateway ---------------------------------------------------------------------------------

def gateway(batching: bool, drift: bool = True, shadow: bool = False) -> Callable[[Context, Path, int], Launch]:
    """`inferloop serve` on the same weights, registered as model "bench" and promoted to production;
    its defaults otherwise (micro-batching: 64 rows / 2 ms, drift monitoring on), one torch thread like
    every peer. With `shadow`, a second version of the same size (other weights) is the shadow stage
    and every request is mirrored to it (sample rate 1.0, the default) with a budget of 100 %, so
    no mirrored batch is skipped: the most a shadow can cost."""
    def build(ctx: Context, work: Path, port: int) -> Launch:
        assert ctx.registry is not None
        cmd = [sys.executable, "-m", "inferloop.cli", "serve", "--registry", f"file://{ctx.registry}",
               "--model", "bench", "--port", str(port), "--device", "cpu", "--torch-threads", "1",
               "--batching", "on" if batching else "off", "--drift", "on" if drift else "off",
               "--shadow", "on" if shadow else "off", "--log-level", "warning"]
        if shadow:
            cmd += ["--shadow-budget", "1.0"]
        # started where (and with the PYTHONPATH with which) its source's code is the one imported
        env = ctx.gateway_source.env(_env(ctx))
        return Launch(cmd, f"http://127.0.0.1:{port}/v2/models/bench/infer", oip_body(ctx.row),
                      ctx.gateway_source.cwd, env, ready_timeout=60)
    return build


# ---- the catalogue ---------------------------------------------------------------------------------

# uvloop + httptools beside every uvicorn-based peer, so that each one's uvicorn picks them as the
# bare ceiling's does (MLServer and BentoML do not pull them in themselves)
PACKAGES: dict[str, list[str]] = {
    "fastapi": ["fastapi==0.165.0", "uvicorn[standard]", "safetensors"],
    "mlserver": ["mlserver==1.7.1", "uvloop<0.22", "httptools", "safetensors"],
    "ray": ["ray[serve]==2.60.0", "safetensors"],
    "bentoml": ["bentoml==1.4.40", "uvloop", "httptools", "safetensors"],
    "torchserve": ["torchserve==0.12.0", "torch-model-archiver==0.12.0", "pyyaml", "numpy", "safetensors"],
}

INSTALL_NOTES = """\
- Every peer venv: `pip install torch==2.13.0` first (the local CPU wheel), then the peer's pinned
  packages from PyPI; `python -m loadtests.bench_peers --setup` does it (`loadtests/.venvs/<peer>`,
  reinstalled when the package list changes).
- fastapi: `fastapi==0.165.0 uvicorn[standard] safetensors`.
- mlserver: `mlserver==1.7.1` needs `uvloop<0.22` (its inference worker fails on start with the
  newest uvloop); `httptools` added so its uvicorn uses it as the others' do.
- ray: `ray[serve]==2.60.0`; `RAY_USAGE_STATS_ENABLED=0`. Behind its proxy with the default
  `max_ongoing_requests=5` the replica rejects and the proxy retries until requests time out; the
  best configuration raises it to 256 and uses the throughput-optimized mode
  (`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`: direct ingress, the replica serves HTTP itself, no proxy).
- bentoml: `bentoml==1.4.40` plus `uvloop httptools` (BentoML does not pull them in; without them its
  uvicorn runs on asyncio + h11); `BENTOML_DO_NOT_TRACK=true`.
- torchserve: `torchserve==0.12.0 torch-model-archiver==0.12.0` with `pyyaml` and `numpy` beside it
  (without them its Python worker dies and the endpoint hangs); Java 17 from Debian; token auth off
  (`--disable-token-auth`). Stock writes ~30 log lines per request and answers 503 when its job queue (100)
  is full; its JVM needs ~15 s of warm-up, given to it.
- Every server is started with `OMP_NUM_THREADS=1` and runs the forward with one torch thread.
- Ray's process tree keeps using CPU while idle (see "idle meanwhile" under Per run); that slows the
  bare runs taken alongside it and flatters Ray's ratios by up to that share of a core.
"""

CONFIGS: list[Config] = [
    Config("bare", "bare ceiling (Litestar+msgspec+uvicorn)", "-", bare(), own_env=True, best=True),
    Config("echo", "echo ceiling (bare handler, constant answer)", "-", bare(echo=True), own_env=True, best=True,
           check=False),
    Config("gateway", "inferloop gateway", "batching off", gateway(False), own_env=True),
    Config("gateway", "inferloop gateway", "batching on", gateway(True), own_env=True, best=True),
    Config("gateway", "inferloop gateway", "batching on, drift off", gateway(True, drift=False), own_env=True),
    Config("gateway", "inferloop gateway", "batching on, shadow 100 %", gateway(True, shadow=True), own_env=True),
    Config("fastapi", "FastAPI + uvicorn", "stock", fastapi(quiet=False)),
    Config("fastapi", "FastAPI + uvicorn", "best: no access log", fastapi(quiet=True), best=True),
    Config("mlserver", "MLServer 1.7.1", "stock", mlserver(best=False, batching=False)),
    Config("mlserver", "MLServer 1.7.1", "stock + adaptive batching", mlserver(best=False, batching=True)),
    Config("mlserver", "MLServer 1.7.1", "best: parallel_workers=0", mlserver(best=True, batching=False), best=True),
    Config("mlserver", "MLServer 1.7.1", "best + adaptive batching", mlserver(best=True, batching=True), best=True),
    Config("ray", "Ray Serve 2.60", "stock", ray(batch=False, max_ongoing=None)),
    Config("ray", "Ray Serve 2.60", "stock + @serve.batch", ray(batch=True, max_ongoing=None)),
    Config("ray", "Ray Serve 2.60", "max_ongoing=256", ray(batch=False, max_ongoing=256)),
    Config("ray", "Ray Serve 2.60", "best: direct ingress, max_ongoing=256",
           ray(batch=False, max_ongoing=256, direct=True), best=True),
    Config("ray", "Ray Serve 2.60", "best + @serve.batch", ray(batch=True, max_ongoing=256, direct=True), best=True),
    Config("bentoml", "BentoML 1.4.40", "stock", bentoml("Stock")),
    Config("bentoml", "BentoML 1.4.40", "best: async, no access log", bentoml("Async"), best=True),
    Config("bentoml", "BentoML 1.4.40", "best + batching", bentoml("Batched"), best=True),
    Config("torchserve", "TorchServe 0.12", "stock", torchserve(best=False)),
    Config("torchserve", "TorchServe 0.12", "best: batch 64/2 ms, warn log", torchserve(best=True), best=True),
]
