"""FastAPI + uvicorn with an `async def` endpoint; native single-row JSON `{"x": [8 floats]}`.

    python fastapi_app.py PORT [--quiet]      (--quiet: no access log; stock logs every request)
"""

from __future__ import annotations

import sys

import uvicorn
from bench_model import load, predict
from fastapi import FastAPI
from pydantic import BaseModel

MODEL = load()
app = FastAPI()


class Row(BaseModel):
    x: list[float]


@app.post("/predict")
async def predict_row(row: Row) -> dict[str, list[float]]:
    return {"y": predict(MODEL, [row.x])}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log="--quiet" not in sys.argv)
