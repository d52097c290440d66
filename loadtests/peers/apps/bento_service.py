"""BentoML service; native single-row JSON `{"x": [8 floats]}` on `/predict`.

    bentoml serve bento_service:<Service> --host 127.0.0.1 --port PORT

`Stock` is the shape of BentoML's quick start (a sync `def` API, run in a thread pool, access log
on); `Async` runs the forward on the event loop without the access log; `Batched` adds BentoML's
adaptive batching to that (its request is a batch of one row: `{"x": [[8 floats]]}`; BentoML picks
the wait itself, max_latency_ms is the budget past which it answers 503, not a wait).
"""

from __future__ import annotations

import bentoml
from bench_model import load, predict


@bentoml.service
class Stock:
    def __init__(self) -> None:
        self.model = load()

    @bentoml.api
    def predict(self, x: list[float]) -> list[float]:
        return predict(self.model, [x])


QUIET = {"logging": {"access": {"enabled": False}}}


@bentoml.service(**QUIET)
class Async:
    def __init__(self) -> None:
        self.model = load()

    @bentoml.api
    async def predict(self, x: list[float]) -> list[float]:
        return predict(self.model, [x])


@bentoml.service(**QUIET)
class Batched:
    def __init__(self) -> None:
        self.model = load()

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=1000)
    async def predict(self, x: list[list[float]]) -> list[float]:
        return predict(self.model, x)
