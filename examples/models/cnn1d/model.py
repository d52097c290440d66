"""A 1-D CNN over a fixed-length sequence (4 channels × 32 steps) to 3 class probabilities: a
non-tabular input, served over OIP v2 as one FP32 tensor of shape [n, 4, 32].

    python examples/models/cnn1d/model.py     # registers and promotes v1 in the default registry

Trained on data by the trainer instead (data.py, train.py and policy.yaml beside this file):

    python examples/models/cnn1d/data.py
    inferloop train --policy examples/models/cnn1d/policy.yaml
"""

from __future__ import annotations

import torch
from torch import nn

CHANNELS, STEPS, CLASSES = 4, 32, 3


class SequenceClassifier(nn.Module):
    def __init__(self, channels: int = CHANNELS, classes: int = CLASSES) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(channels, 16, 5, padding=2), nn.ReLU(), nn.BatchNorm1d(16),
                                  nn.Conv1d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1))
        self.head = nn.Linear(16, classes)

    def logits(self, sequence: torch.Tensor) -> torch.Tensor:
        """Unnormalised class scores: what a loss trains on (train.py); `forward` serves probabilities."""
        return self.head(self.conv(sequence).squeeze(-1))

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(sequence), dim=1)


def example_inputs(rows: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, CHANNELS, STEPS, generator=torch.Generator().manual_seed(seed))


def build(seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    return SequenceClassifier().eval()


def register(reg, name: str = "sequence-classifier", seed: int = 0) -> int:  # noqa: ANN001 - a Registry
    with reg.track(name) as run:
        run.log_param("seed", seed)
        return run.register(build(seed), example_inputs=example_inputs(8, seed), output_kind="multiclass",
                            reference=example_inputs(1000, seed + 100), tags=["example:cnn1d"])


if __name__ == "__main__":
    from inferloop.registry import Registry
    from inferloop.registry.project_config import resolve_registry

    uri = resolve_registry()  # where `inferloop serve` looks: INFERLOOP_REGISTRY, .inferloop/config.json, default
    with Registry.open(uri) as registry:
        version = register(registry)
        registry.promote("sequence-classifier", version, stage="production", reason="example")
        print(f"sequence-classifier v{version} is in production in {uri}")
