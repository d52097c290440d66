"""Model architectures an artifact can name. A state dict plus a `ModelSpec` rebuilds the module,
so loading never runs pickled code."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from inferloop.registry.errors import UnsupportedArtifact
from inferloop.registry.manifest import ModelSpec

if TYPE_CHECKING:
    from collections.abc import Callable

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


# torch is not followed (follow_imports=skip in pyproject), so nn.Module is Any to mypy.
class MLP(nn.Module):  # type: ignore[misc]
    """Fully connected network for tabular data: in_features → hidden… → out_features."""

    def __init__(self, in_features: int, out_features: int = 1, hidden: list[int] | tuple[int, ...] = (64, 64),
                 activation: str = "relu") -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise UnsupportedArtifact(f"unknown activation {activation!r}: expected one of {sorted(_ACTIVATIONS)}")
        self.spec = ModelSpec(kind="mlp", in_features=int(in_features), out_features=int(out_features),
                              hidden=[int(h) for h in hidden], activation=activation)
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the layers' own forwards, called directly: nn.Module.__call__ (hook dispatch) on each of them
        # costs about as much as the whole forward of a small MLP at one row (BENCHMARKS.md), and no
        # caller hooks a layer of this model
        for layer in self.net:
            x = layer.forward(x)
        return x


def build_module(spec: ModelSpec) -> nn.Module:
    if spec.kind == "mlp":
        if spec.in_features < 1 or spec.out_features < 1 or any(h < 1 for h in spec.hidden):
            raise UnsupportedArtifact(f"invalid MLP spec {spec}")
        return MLP(spec.in_features, spec.out_features, spec.hidden, spec.activation)
    raise UnsupportedArtifact(f"unknown architecture kind {spec.kind!r}")


def spec_of(module: nn.Module) -> ModelSpec:
    spec = getattr(module, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise UnsupportedArtifact(
            f"cannot register {type(module).__name__}: the registry stores architectures it can rebuild "
            "without pickle (registry.architectures.MLP or a module with a `spec: ModelSpec`)"
        )
    return spec
