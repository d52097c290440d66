"""TorchServe handler (module-level `handle`); native single-row JSON body `[8 floats]` on
`/predictions/bench`. With server-side batching TorchServe hands `handle` up to batch_size requests.

The weights and bench_model.py travel in the model archive as extra files.
"""

from __future__ import annotations

import json
import os
import sys

_model = None


def _row(item: dict) -> list[float]:
    body = item.get("body", item.get("data"))
    if isinstance(body, (bytes, bytearray)):
        body = json.loads(body)
    return [float(v) for v in body]


def handle(data: list[dict] | None, context) -> list[list[float]] | None:
    global _model
    if _model is None:
        model_dir = context.system_properties["model_dir"]
        sys.path.insert(0, model_dir)
        from bench_model import load

        _model = load(os.path.join(model_dir, "bench.safetensors"))
    if data is None:
        return None
    from bench_model import predict

    return [[y] for y in predict(_model, [_row(item) for item in data])]
