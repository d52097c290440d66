"""The built-in MLP's training loop (`inferloop.trainer.builtin:mlp`) and the run's determinism and
device settings that every entrypoint runs under.

The loop is deterministic, optionally data-parallel, and returns a plain `MLP` on raw inputs.

Features (and a regression target) are standardised for training; the scaling is then folded into
the first and last linear layers, so the registered artifact is an ordinary MLP that takes the raw
features the gateway receives, with no preprocessing step to keep in sync.

Determinism: one seed drives initialisation and the per-epoch permutations (a private CPU
generator, identical on every rank); deterministic algorithms and a fixed thread count are set for
the run and restored afterwards. Under DDP each rank takes a strided share of every global batch and
scales its summed loss so that the averaged gradient equals the single-process one.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal

import msgspec
import numpy as np

from inferloop.trainer.errors import TrainerError

if TYPE_CHECKING:
    import torch

    from inferloop.registry.architectures import MLP

Progress = Callable[[str], None]


class MLPParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The built-in MLP's parameters (`training.params`, or the same keys directly under `training:`)."""

    hidden: list[int] = msgspec.field(default_factory=lambda: [64, 32])
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    lr: float = 0.003
    epochs: int = 20
    batch_size: int = 256
    weight_decay: float = 0.0


class DistInfo(msgspec.Struct, frozen=True):
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class Fitted(msgspec.Struct):
    model: MLP  # on the CPU, taking raw (unscaled) features
    epoch_losses: list[float]
    seconds: float
    rows_processed: int  # training rows × epochs, over all processes


def resolve_device(requested: str, dist: DistInfo) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainerError("training.device is cuda but no CUDA device is available")
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        # deterministic cuBLAS needs a fixed workspace, set before the first cuBLAS call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        return f"cuda:{dist.local_rank}"
    return "cpu"


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Deterministic kernels and a fixed thread count for the block; previous settings restored."""
    import torch

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])
        torch.backends.cudnn.benchmark = before[3]


def _scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = values.mean(axis=0, dtype=np.float64)
    std = values.std(axis=0, dtype=np.float64)
    return mean, np.where(std > 0, std, 1.0)


def _fold(model: MLP, x_mean: np.ndarray, x_std: np.ndarray, y_mean: float, y_std: float) -> MLP:
    """The same function on raw inputs: x' = (x-m)/s folded into layer 0, y = y'·s_y + m_y into the last."""
    import torch

    from inferloop.registry.architectures import MLP

    state = {k: v.detach().to("cpu", torch.float64).clone() for k, v in model.state_dict().items()}
    linears = sorted({k.rsplit(".", 1)[0] for k in state}, key=lambda k: int(k.split(".")[1]))
    first, last = linears[0], linears[-1]
    mean, std = torch.from_numpy(x_mean), torch.from_numpy(x_std)
    w = state[f"{first}.weight"] / std
    state[f"{first}.bias"] = state[f"{first}.bias"] - w @ mean
    state[f"{first}.weight"] = w
    state[f"{last}.weight"] = state[f"{last}.weight"] * y_std
    state[f"{last}.bias"] = state[f"{last}.bias"] * y_std + y_mean
    spec = model.spec
    out = MLP(spec.in_features, spec.out_features, spec.hidden, spec.activation)
    out.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    out.eval()  # Module.eval() returns self; torch is not followed, so its result is Any to mypy
    return out


def fit(spec: MLPParams, kind: str, seed: int, x: np.ndarray, y: np.ndarray, *, dist: DistInfo, device: str,
        progress: Progress) -> Fitted:
    """Train on (x, y) and return the model on raw inputs. Call inside `deterministic(threads)`."""
    import torch
    from torch.nn import functional

    from inferloop.registry.architectures import MLP

    x_mean, x_std = _scale(x)
    y_mean, y_std = (0.0, 1.0)
    if kind == "regression":
        m, s = _scale(y.reshape(-1, 1))
        y_mean, y_std = float(m[0]), float(s[0])
    xt = torch.as_tensor(((x - x_mean) / x_std).astype(np.float32), device=device)
    yt = torch.as_tensor(((y - y_mean) / y_std).astype(np.float32).reshape(-1, 1), device=device)

    torch.manual_seed(seed)
    model = MLP(x.shape[1], 1, spec.hidden, spec.activation).to(device)
    net: torch.nn.Module = model
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dist.local_rank] if device.startswith("cuda") else None)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    loss_fn = functional.mse_loss if kind == "regression" else functional.binary_cross_entropy_with_logits
    gen = torch.Generator().manual_seed(seed)
    n, batch, world = len(xt), spec.batch_size, dist.world_size

    losses: list[float] = []
    started = time.perf_counter()
    for epoch in range(spec.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        steps = 0
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            if len(idx) < world:
                continue  # every rank must take part in every step
            mine = idx[dist.rank::world]
            opt.zero_grad(set_to_none=True)
            # sum over my rows × world / global batch: DDP's gradient average is then the global mean
            loss = loss_fn(net(xt[mine]), yt[mine], reduction="sum") * (world / len(idx))
            loss.backward()
            opt.step()
            total += loss.detach()
            steps += 1
        if world > 1:
            torch.distributed.all_reduce(total)
            total /= world
        losses.append(float(total) / max(steps, 1))
        if dist.is_main:
            rate = n / max(time.perf_counter() - t0, 1e-9)
            progress(f"epoch {epoch + 1}/{spec.epochs}  loss {losses[-1]:.5f}  {rate:,.0f} rows/s")
    if not np.isfinite(losses[-1]):
        raise TrainerError(f"training diverged (loss {losses[-1]}): lower training.lr")
    seconds = time.perf_counter() - started
    return Fitted(model=_fold(model, x_mean, x_std, y_mean, y_std), epoch_losses=losses, seconds=seconds,
                  rows_processed=n * spec.epochs)
