"""The benchmark model, standalone: a float32 MLP 8→hidden…→1 whose state-dict keys match
`registry.architectures.MLP`, loaded from the safetensors file named by $BENCH_WEIGHTS.

Every peer app imports this module, so every server runs the same weights and the same forward.
The hidden sizes are $BENCH_HIDDEN (comma-separated; default 64,64, the small model), which the
driver sets for every server; `load` checks them against the weights file, so a server that did not
get the variable fails to start instead of serving another model.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file
from torch import nn

FEATURES = 8
DEFAULT_HIDDEN = (64, 64)


def hidden_sizes(spec: str | None = None) -> tuple[int, ...]:
    """'1024,1024,1024,1024' -> (1024, 1024, 1024, 1024); unset or empty: the small model."""
    spec = os.environ.get("BENCH_HIDDEN", "") if spec is None else spec
    return tuple(int(h) for h in spec.split(",") if h.strip()) or DEFAULT_HIDDEN


class MLP(nn.Module):
    def __init__(self, hidden: tuple[int, ...] = DEFAULT_HIDDEN) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = FEATURES
        for h in hidden:  # Linear, ReLU, ...: net.0, net.2, ... as in registry.architectures.MLP
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _hidden_in(state: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """The hidden sizes a state dict holds (every Linear's output width but the last)."""
    layers = sorted(int(k.split(".")[1]) for k in state if k.startswith("net.") and k.endswith(".weight"))
    return tuple(int(state[f"net.{i}.weight"].shape[0]) for i in layers[:-1])


def load(path: str | None = None) -> MLP:
    torch.set_num_threads(1)
    state = load_file(path or os.environ["BENCH_WEIGHTS"])
    hidden = hidden_sizes()
    if _hidden_in(state) != hidden:
        raise ValueError(f"BENCH_HIDDEN={','.join(map(str, hidden))} but the weights hold hidden sizes "
                         f"{_hidden_in(state)}")
    model = MLP(hidden)
    model.load_state_dict(state, strict=True)
    return model.eval()


def predict(model: MLP, rows: list[list[float]]) -> list[float]:
    """Forward a batch of rows; one output per row."""
    with torch.inference_mode():
        y = model(torch.tensor(rows, dtype=torch.float32).reshape(-1, FEATURES))
    return y[:, 0].tolist()
