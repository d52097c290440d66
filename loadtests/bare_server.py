"""Reference servers for `bench_gateway.py`: the least a Litestar + msgspec + uvicorn handler can do
with the same OIP v2 body, so the gateway's cost is measured against this machine's ceiling.

    constant: decode the body into the same msgspec structs the gateway uses, answer a constant
    forward:  the same, plus one model forward per request (inline, no batching); with
              `--device cuda` the model lives on the GPU, each request's input is copied there and
              the output back (`.cpu()`), still inline on the event loop

Both run with uvloop + httptools and `gc.freeze()` after start-up, like the gateway.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
from collections.abc import AsyncIterator

import msgspec
import numpy as np
from litestar import Litestar, Request, post
from litestar.response.base import ASGIResponse

from inferloop.gateway.transport.protocol import InferRequest, encode_infer

CONSTANT = (b'{"model_name":"bench","model_version":"1","outputs":[{"name":"output","datatype":"FP32",'
            b'"shape":[1,1],"data":[0.5]}]}')


def build(mode: str, registry: str, model: str, device: str = "cpu") -> Litestar:
    decoder = msgspec.json.Decoder(InferRequest)
    flat = msgspec.json.Decoder(list[float])
    module = None
    if mode == "forward":
        import torch

        from inferloop.registry import Registry

        reg = Registry.open(registry)
        pointer = reg.get_pointer(model, "production")
        assert pointer is not None and pointer.version is not None
        module = reg.load_model(model, pointer.version).to(device)
        reg.close()
        torch.set_num_threads(1)

    @post("/v2/models/{name:str}/infer", status_code=200)
    async def infer(request: Request) -> ASGIResponse:
        req = decoder.decode(await request.body())
        if module is None:
            return ASGIResponse(body=CONSTANT, media_type="application/json")
        import torch

        rows = np.asarray(flat.decode(req.inputs[0].data), dtype=np.float32).reshape(req.inputs[0].shape)
        with torch.inference_mode():
            out = module(torch.from_numpy(rows).to(device)).cpu().numpy()
        body, _ = encode_infer(request.path_params["name"], 1, req.id, (out,), ("output",), False)
        return ASGIResponse(body=body, media_type="application/json")

    @contextlib.asynccontextmanager
    async def freeze(_app: Litestar) -> AsyncIterator[None]:
        gc.collect()
        gc.freeze()
        yield

    return Litestar([infer], lifespan=[freeze], openapi_config=None, logging_config=None)


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["constant", "forward"], required=True)
    p.add_argument("--registry", default="")
    p.add_argument("--model", default="bench")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where forward mode runs the model")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    uvicorn.run(build(args.mode, args.registry, args.model, args.device), host="127.0.0.1", port=args.port,
                loop="uvloop", http="httptools", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
