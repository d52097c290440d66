"""The training entrypoint for `policy.yaml` (`examples.models.cnn1d.train:fit`): model.py's 1-D CNN
as a two-class sequence classifier, trained with plain torch.

The data holds each sequence as one column per step; the model takes them as one FP32 matrix
[n, channels × steps] (`inputs` below) and reshapes it to [n, channels, steps] itself. It answers two
class probabilities; for `kind: binary` the trainer judges the second, the probability of an event.
"""

from __future__ import annotations

import torch
from torch import nn

from inferloop.trainer import TrainingContext, TrainResult

from .model import SequenceClassifier


class EventDetector(nn.Module):
    def __init__(self, channels: int, steps: int) -> None:
        super().__init__()
        self.channels, self.steps = channels, steps
        self.cnn = SequenceClassifier(channels=channels, classes=2)

    def logits(self, sequence: torch.Tensor) -> torch.Tensor:
        return self.cnn.logits(sequence.unflatten(1, (self.channels, self.steps)))

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(sequence), dim=1)


def fit(ctx: TrainingContext) -> TrainResult:
    p = ctx.params
    channels = p.get("channels", 1)
    x = torch.as_tensor(ctx.x)  # the features in the policy's order: step by step, channel after channel
    y = torch.as_tensor(ctx.y).long()
    model = EventDetector(channels, x.shape[1] // channels)
    opt = torch.optim.Adam(model.parameters(), lr=p.get("lr", 0.01))
    for epoch in range(p["epochs"]):
        model.train()
        total = correct = 0.0
        for batch in torch.randperm(len(y)).split(p.get("batch_size", 64)):
            opt.zero_grad()
            logits = model.logits(x[batch])
            loss = nn.functional.cross_entropy(logits, y[batch])
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
            correct += (logits.argmax(dim=1) == y[batch]).sum().item()
        ctx.log_metric("train_loss", total / len(y), step=epoch)
        ctx.log_metric("train_accuracy", correct / len(y), step=epoch)
    return TrainResult(model, inputs={"sequence": ctx.features}, tags=["example:cnn1d"])
