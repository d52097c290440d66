"""The bare ceiling: the smallest Litestar + msgspec + uvicorn (uvloop, httptools) app that answers
the gateway's OIP v2 request with the same forward. Nothing else runs per request. Start-up objects
are frozen out of the garbage collector (`gc.freeze()`), as the gateway does. With `--echo` it
decodes the request the same way and answers a constant instead: the framework alone, no model.

    python bare_app.py PORT [--echo]
"""

from __future__ import annotations

import gc
import sys

import msgspec
import uvicorn
from bench_model import load, predict
from litestar import Litestar, post

ECHO = "--echo" in sys.argv[2:]
MODEL = None if ECHO else load()


class Tensor(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferRequest(msgspec.Struct):
    inputs: list[Tensor]


class InferResponse(msgspec.Struct):
    model_name: str
    outputs: list[Tensor]


@post("/v2/models/bench/infer", status_code=200, sync_to_thread=False)
def infer(data: InferRequest) -> InferResponse:
    t = data.inputs[0]
    y = [0.5] if MODEL is None else predict(MODEL, [t.data])
    return InferResponse("bench", [Tensor("output-0", [len(y), 1], "FP32", y)])


app = Litestar([infer], debug=False)

if __name__ == "__main__":
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                log_level="warning", access_log=False)
