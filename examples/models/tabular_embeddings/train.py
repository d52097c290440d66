"""The training entrypoint for `policy.yaml` (`examples.models.tabular_embeddings.train:fit`): the
StoreRevenue module of model.py, trained with plain torch on the rows the trainer hands over.

The model takes one dict of named tensors (`store_id` INT64, `dense` FP32 [n, 8]); `inputs` below says
which columns feed each, and the trainer packages, judges and registers exactly that signature.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from inferloop.trainer import TrainingContext, TrainResult

from .model import StoreRevenue


class Revenue(nn.Module):
    """StoreRevenue trained on a standardised target, answering in revenue units."""

    def __init__(self, net: StoreRevenue, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(inputs) * self.std + self.mean


def fit(ctx: TrainingContext) -> TrainResult:
    p = ctx.params
    dense_columns = [c for c in ctx.features if c != "store_id"]
    store = torch.tensor(ctx.data.column("store_id").to_numpy())  # a copy: arrow's buffers are read-only
    dense = torch.as_tensor(np.stack([ctx.data.column(c).to_numpy() for c in dense_columns], axis=1),
                            dtype=torch.float32)
    y = torch.as_tensor(ctx.y).unsqueeze(1)
    mean, std = float(y.mean()), float(y.std())
    model = Revenue(StoreRevenue(stores=p["stores"], dense=len(dense_columns), dim=p.get("dim", 6)), mean, std)
    opt = torch.optim.Adam(model.parameters(), lr=p.get("lr", 0.01))
    for epoch in range(p["epochs"]):
        model.train()
        total = 0.0
        for batch in torch.randperm(len(y)).split(p.get("batch_size", 128)):
            opt.zero_grad()
            pred = model.net({"store_id": store[batch], "dense": dense[batch]})
            loss = nn.functional.mse_loss(pred, (y[batch] - mean) / std)
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        ctx.log_metric("train_mse", total / len(y) * std**2, step=epoch)  # in revenue units squared
    return TrainResult(model, inputs={"store_id": "store_id", "dense": dense_columns},
                       tags=["example:tabular-embeddings"])
