"""Ray Serve deployment; native single-row JSON `{"x": [8 floats]}` on `/predict`.

    python ray_app.py PORT [--batch] [--max-ongoing N] [--temp-dir DIR]

Without --max-ongoing the deployment keeps Ray's default `max_ongoing_requests`.
"""

from __future__ import annotations

import argparse
import os
import time

import ray
from bench_model import load, predict
from ray import serve
from starlette.requests import Request


@serve.deployment
class Bench:
    def __init__(self) -> None:
        self.model = load()

    async def __call__(self, request: Request) -> dict[str, list[float]]:
        body = await request.json()
        return {"y": predict(self.model, [body["x"]])}


@serve.deployment
class BatchedBench:
    def __init__(self) -> None:
        self.model = load()

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def forward(self, rows: list[list[float]]) -> list[list[float]]:
        return [[y] for y in predict(self.model, rows)]

    async def __call__(self, request: Request) -> dict[str, list[float]]:
        body = await request.json()
        return {"y": await self.forward(body["x"])}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--batch", action="store_true")
    p.add_argument("--max-ongoing", type=int, default=None)
    p.add_argument("--temp-dir", default=None)
    a = p.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=a.temp_dir,
             runtime_env={"env_vars": {"BENCH_WEIGHTS": os.environ["BENCH_WEIGHTS"]}})
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    deployment = BatchedBench if a.batch else Bench
    if a.max_ongoing:
        deployment = deployment.options(max_ongoing_requests=a.max_ongoing)
    serve.run(deployment.bind(), route_prefix="/predict")
    print("ray serve ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
