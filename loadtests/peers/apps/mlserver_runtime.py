"""Seldon MLServer custom runtime (OIP v2). Settings are written by the driver (peers/configs.py).

With adaptive batching on, MLServer merges requests along the first axis before `predict`.
"""

from __future__ import annotations

import numpy as np
from bench_model import load, predict
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class BenchRuntime(MLModel):
    async def load(self) -> bool:
        self.model = load()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = NumpyCodec.decode_input(payload.inputs[0]).reshape(-1, 8).tolist()
        y = np.asarray(predict(self.model, rows), dtype=np.float32).reshape(-1, 1)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("output-0", y)])
