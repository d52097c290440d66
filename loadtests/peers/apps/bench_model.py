"""The benchmark model, standalone: a float32 MLP 8→64→64→1 whose state-dict keys match
`registry.architectures.MLP`, loaded from the safetensors file named by $BENCH_WEIGHTS.

Every peer app imports this module, so every server runs the same weights and the same forward.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file
from torch import nn

FEATURES = 8


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load(path: str | None = None) -> MLP:
    torch.set_num_threads(1)
    model = MLP()
    model.load_state_dict(load_file(path or os.environ["BENCH_WEIGHTS"]), strict=True)
    return model.eval()


def predict(model: MLP, rows: list[list[float]]) -> list[float]:
    """Forward a batch of rows; one output per row."""
    with torch.inference_mode():
        y = model(torch.tensor(rows, dtype=torch.float32).reshape(-1, FEATURES))
    return y[:, 0].tolist()
