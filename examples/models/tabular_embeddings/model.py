"""A tabular model with categorical embeddings: an INT64 `store_id` column through nn.Embedding, beside
eight FP32 dense features, to one revenue score. Any torch.nn.Module registers the same way: inferloop
stores it as a torch.export program, and the gateway serves it without this file.

    python examples/models/tabular_embeddings/model.py   # registers and promotes v1 in the default registry
    inferloop serve --model store-revenue                # then, from another shell:
    curl -s localhost:8000/v2/models/store-revenue/infer -H 'content-type: application/json' -d '{"inputs": [
      {"name": "store_id", "datatype": "INT64", "shape": [2], "data": [3, 17]},
      {"name": "dense", "datatype": "FP32", "shape": [2, 8], "data": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8,
                                                                      1, 1, 1, 1, 1, 1, 1, 1]}]}'

Trained on data by the trainer instead (data.py, train.py and policy.yaml beside this file):

    python examples/models/tabular_embeddings/data.py
    inferloop train --policy examples/models/tabular_embeddings/policy.yaml
"""

from __future__ import annotations

import torch
from torch import nn

STORES, DENSE = 50, 8


class StoreRevenue(nn.Module):
    def __init__(self, stores: int = STORES, dense: int = DENSE, dim: int = 6) -> None:
        super().__init__()
        self.store = nn.Embedding(stores, dim)
        self.body = nn.Sequential(nn.Linear(dim + dense, 32), nn.ReLU(), nn.LayerNorm(32), nn.Linear(32, 1))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.body(torch.cat([self.store(inputs["store_id"]), inputs["dense"]], dim=1))


def example_inputs(rows: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"store_id": torch.randint(0, STORES, (rows,), generator=g), "dense": torch.randn(rows, DENSE, generator=g)}


def build(seed: int = 0) -> StoreRevenue:
    torch.manual_seed(seed)
    return StoreRevenue().eval()


def register(reg, name: str = "store-revenue", seed: int = 0) -> int:  # noqa: ANN001 - a Registry
    with reg.track(name) as run:
        run.log_param("seed", seed)
        return run.register(build(seed), example_inputs=example_inputs(16, seed),
                            reference=example_inputs(2000, seed + 100), tags=["example:tabular-embeddings"])


if __name__ == "__main__":
    from inferloop.registry import Registry
    from inferloop.registry.project_config import resolve_registry

    uri = resolve_registry()  # where `inferloop serve` looks: INFERLOOP_REGISTRY, .inferloop/config.json, default
    with Registry.open(uri) as registry:
        version = register(registry)
        registry.promote("store-revenue", version, stage="production", reason="example")
        print(f"store-revenue v{version} is in production in {uri}")
