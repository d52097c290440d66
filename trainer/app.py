"""HTTP for the retraining service (Litestar): translate requests to `TrainerService` calls.

    POST /v1/retrain      {model, reason, trigger, idempotency_key} -> 202 {job_id, ...}
                          (429 + Retry-After: a drift/shadow trigger within the model's trigger interval)
    GET  /v1/jobs/{id}    state, timestamps, version, gate verdict, log tail
    GET  /v1/jobs         recent jobs (?model=NAME&limit=N)
    GET  /healthz         liveness and job counts
    GET  /metrics         Prometheus text format

Errors are `{"error": "..."}` with a 4xx status; nothing reaches the client as a traceback.

With `INFERLOOP_TRAINER_TOKEN` set, every /v1 call needs it as a bearer token. Off loopback the
token is required: POST /v1/retrain starts training jobs, and a service reachable from other hosts
without one refuses to start.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import ClientException, HTTPException, NotAuthorizedException, NotFoundException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inferloop.trainer.jobs import RetrainRequest
from inferloop.trainer.runner import KeyReused, UnknownModel
from inferloop.trainer.service import ServiceSettings, TrainerService, TriggerRateLimited

log = logging.getLogger("inferloop.trainer")


# Resolved at runtime by Litestar (handler signatures), so these names are real imports, not TYPE_CHECKING.
AnyRequest = Request[Any, Any, State]  # no auth middleware: user and auth are unused


def _service(request: AnyRequest) -> TrainerService:
    service: TrainerService = request.app.state.service  # set by create_app; State values are Any
    return service


def _authorize(request: AnyRequest) -> None:
    token = _service(request).settings.token
    if not token:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise NotAuthorizedException("missing or wrong bearer token")


@post("/v1/retrain", status_code=202)
async def retrain(request: AnyRequest) -> dict[str, Any]:
    _authorize(request)
    try:  # decoded here, straight from the bytes: msgspec's message is the one the client sees
        data = msgspec.json.decode(await request.body(), type=RetrainRequest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ClientException(f"invalid request body: {exc}") from None
    except RecursionError:  # msgspec, on JSON nested deeper than the stack
        raise ClientException("invalid request body: JSON nested too deeply") from None
    if data.idempotency_key is None and request.headers.get("idempotency-key"):
        data = msgspec.structs.replace(data, idempotency_key=request.headers["idempotency-key"])
    try:
        job, outcome = await _service(request).submit(data)
    except UnknownModel as exc:
        raise NotFoundException(str(exc)) from None
    except KeyReused as exc:
        raise HTTPException(str(exc), status_code=409) from None
    except TriggerRateLimited as exc:
        raise HTTPException(str(exc), status_code=429,
                            headers={"Retry-After": str(math.ceil(exc.retry_after_s))}) from None
    message = {"created": "job queued",
               "coalesced": f"a job for {job.model} is already {job.state}: this request was folded into it",
               "duplicate": "idempotency key seen before: this is the job it started"}[outcome]
    return {"job_id": job.id, "model": job.model, "state": job.state, "created": outcome == "created",
            "coalesced": outcome == "coalesced", "duplicate": outcome == "duplicate", "message": message}


@get("/v1/jobs/{job_id:str}")
async def get_job(request: AnyRequest) -> dict[str, Any]:
    _authorize(request)
    service = _service(request)
    job_id = request.path_params["job_id"]
    job = service.store.jobs.get(job_id)
    if job is None:
        raise NotFoundException(f"no job {job_id!r}")
    return service.job_view(job)


@get("/v1/jobs")
async def list_jobs(request: AnyRequest) -> dict[str, Any]:
    _authorize(request)
    limit = request.query_params.get("limit", "50")
    if not limit.isdigit():
        raise ClientException(f"limit must be a positive integer, got {limit!r}")
    jobs = _service(request).store.list(request.query_params.get("model"), max(1, min(int(limit), 500)))
    return {"jobs": [msgspec.to_builtins(j) for j in jobs]}


@get("/healthz")
async def healthz(request: AnyRequest) -> dict[str, Any]:
    return _service(request).health()


@get("/metrics")
async def metrics(request: AnyRequest) -> Response[bytes]:
    # the header whole: a media_type would get Litestar's "; charset=utf-8" after the type's own charset
    return Response(generate_latest(_service(request).metrics.registry), headers={"content-type": CONTENT_TYPE_LATEST})


def _error(request: AnyRequest, exc: Exception) -> Response[dict[str, str]]:
    if isinstance(exc, HTTPException):
        return Response({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return Response({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


def create_app(service: TrainerService) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = Litestar(route_handlers=[retrain, get_job, list_jobs, healthz, metrics], lifespan=[lifespan],
                   exception_handlers={Exception: _error}, debug=False,
                   logging_config=None)  # leave the process's logging as the host configured it
    app.state.service = service
    return app


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: ServiceSettings) -> None:
    import uvicorn

    from inferloop.registry.commandline import UsageError

    if not settings.token:
        if not _loopback(settings.host):
            raise UsageError(f"the trainer service would listen on {settings.host} without a token: set "
                             "INFERLOOP_TRAINER_TOKEN (POST /v1/retrain starts training jobs; only a loopback "
                             "host may serve it without one)")
        log.warning("no INFERLOOP_TRAINER_TOKEN: /v1 is open to every process on this host")

    service = TrainerService.open(settings)
    log.info("trainer service: %d polic(ies) from %s, registry %s", len(service.policies), settings.policies,
             settings.registry)
    uvicorn.run(create_app(service), host=settings.host, port=settings.port, log_level="info")
