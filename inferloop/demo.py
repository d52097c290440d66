"""`inferloop demo`: the loop on the embedded default registry (a local folder, no server).

Today it exercises the registry end to end: two trained versions, promotion, rollback, verify.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from registry import DEFAULT_REGISTRY_URI, Registry


def register_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole loop on a local registry")
    p.add_argument("--registry", default=None, help=f"registry URI (default {DEFAULT_REGISTRY_URI})")


def _train(seed: int, x: np.ndarray, y: np.ndarray):
    import torch

    from registry import MLP

    torch.manual_seed(seed)
    model = MLP(x.shape[1], 1, [32, 32])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y).reshape(-1, 1)
    for _ in range(200):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(xt), yt)
        loss.backward()
        opt.step()
    return model, float(loss.detach()) ** 0.5


def run(args: argparse.Namespace) -> int:
    from .settings import setting

    uri = setting(args.registry, "INFERLOOP_REGISTRY", DEFAULT_REGISTRY_URI)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2000, 8)).astype(np.float32)
    y = (x @ rng.normal(size=8) + 0.1 * rng.normal(size=2000)).astype(np.float32)
    t0 = time.monotonic()
    with Registry.open(uri) as reg:
        print(f"registry: {reg.uri}")
        versions = []
        for seed in (1, 2):
            model, rmse = _train(seed, x, y)
            with reg.track("demo-regression", actor="demo") as run_:
                run_.seed = seed
                run_.log_params({"lr": 0.01, "epochs": 200, "hidden": [32, 32]})
                run_.log_metric("rmse", rmse)
                v = run_.register(model, example_inputs=x[:8], reference=x, tags=["demo"])
            versions.append(v)
            print(f"trained and registered v{v} (rmse {rmse:.4f}, new={run_.created})")
            reg.promote("demo-regression", v, "production", actor="demo", reason=f"demo ship v{v}")
            print(f"promoted v{v} to production")
        p = reg.rollback("demo-regression", "production", actor="demo", reason="demo rollback")
        print(f"rolled back production to v{p.version}")
        problems = reg.verify("demo-regression")
        print("verify:", "OK" if not problems else problems)
        print("history:")
        for e in reg.history("demo-regression")[-6:]:
            print(f"  {e.time}  {e.kind:<12} v{e.version} {e.reason}")
    print(f"done in {time.monotonic() - t0:.1f}s")
    return 0 if not problems else 1
