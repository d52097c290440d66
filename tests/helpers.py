"""Small builders shared by tests (real registry, real models; nothing of ours is mocked)."""

from __future__ import annotations

import torch

from inferloop.registry import MLP, Registry


def tiny_model(seed: int, in_features: int = 8, hidden: tuple[int, ...] = (16,)) -> MLP:
    torch.manual_seed(seed)
    return MLP(in_features, 1, list(hidden))


def register_tiny(reg: Registry, name: str, seed: int, *, in_features: int = 8, tags: list[str] | None = None,
                  hidden: tuple[int, ...] = (16,)) -> int:
    model = tiny_model(seed, in_features, hidden)
    x = torch.randn(256, in_features, generator=torch.Generator().manual_seed(1000 + seed))
    with reg.track(name, actor="test") as run:
        run.log_param("seed", seed)
        run.seed = seed
        run.log_metric("rmse", 1.0 + seed / 10)
        return run.register(model, example_inputs=x[:8], reference=x, tags=tags or [])
