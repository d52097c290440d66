"""What a training entrypoint receives (`TrainingContext`) and may return (`TrainResult`).

    def train(ctx: TrainingContext) -> torch.nn.Module | onnx.ModelProto | TrainResult

The context holds the training rows of the resolved data window (never the holdout), the policy's
feature and target names and `training.params` unchanged; the seed is already applied to Python,
numpy and torch. Under torchrun every rank calls the function with the process group ready; the
main rank's returned model is the one exported, judged and registered.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa


class TrainResult(msgspec.Struct):
    """A trained model and what the trainer cannot infer about it.

    `inputs`: the model's inputs in `forward` order, each fed from one column (a 1-D input) or a list
    of columns (a 2-D input); by default one 2-D input of every feature, in the policy's order (a
    *tabular* model). A model whose `forward` takes a single parameter but several inputs here gets
    them as one dict of named tensors. Integer columns become INT64 tensors, the others FP32 (as the
    exported model declares; the trainer casts to what it declares).
    `prediction_output`: the output the holdout metrics read (default the first): one value per row;
    for `kind: binary` the probability of class 1 (a second column is taken as class 1 of two).
    `metrics` and `tags` are recorded with the version."""

    model: Any
    inputs: dict[str, str | list[str]] | None = None
    prediction_output: str | None = None
    metrics: dict[str, float] = {}
    tags: list[str] = []


class TrainingContext:
    """Everything the entrypoint gets. `data` is a pyarrow Table of the training rows (every column
    of the partitions; `data.to_pandas()` if you prefer); `x`/`y` are the features (float32, policy
    order) and the target (float32) of the same rows as numpy arrays."""

    def __init__(self, *, model_name: str, data: pa.Table, x: np.ndarray, y: np.ndarray, features: list[str],
                 target: str, kind: str, params: dict[str, Any], seed: int, device: str, rank: int = 0,
                 world_size: int = 1, local_rank: int = 0, progress: Callable[[str], None] | None = None) -> None:
        self.model_name = model_name
        self.data = data
        self.x = x
        self.y = y
        self.features = list(features)
        self.target = target
        self.kind = kind
        self.params = params
        self.seed = seed
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.metrics: dict[str, float] = {}  # the last value logged for each name
        self._progress = progress

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def progress(self, message: str) -> None:
        """A line on the build's log (the main rank's; other ranks' lines are dropped)."""
        if self.is_main and self._progress is not None:
            self._progress(message)

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        """Record a training metric: its last value is stored with the version; each call is a log line."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"metric {name!r} is not finite: {value}")
        self.metrics[str(name)] = value
        self.progress(f"{name} {value:.6g}" if step is None else f"step {step}  {name} {value:.6g}")

    def distributed(self, module: Any) -> Any:
        """`module` wrapped in DistributedDataParallel under torchrun (on this rank's device), else as is."""
        if self.world_size <= 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if self.device.startswith("cuda") else None
        return DistributedDataParallel(module, device_ids=device_ids)
