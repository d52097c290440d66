"""`TrainSpec`: everything one training run needs, with the data window already resolved.

It is built from a policy (the window resolved to exact partitions) or from a registered
version's manifest (`--reproduce`): `params()` is what goes into the manifest, and `from_manifest`
reads it back, so a version can be rebuilt from its manifest alone.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from inferloop.policy import Kind, Policy
from inferloop.registry.manifest import VersionManifest
from inferloop.trainer.errors import TrainerError

SPEC_VERSION = 1  # bump when the meaning of a recorded parameter changes

# Recorded in the manifest's params. Not recorded: model, data (lineage.data), seed (lineage.seed),
# processes (lineage.world_size) and device (environment.device), which the manifest holds elsewhere.
_PARAMS = ("features", "target", "kind", "hidden", "activation", "lr", "epochs", "batch_size", "weight_decay",
           "holdout_fraction", "threads")


class TrainSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str
    data_uri: str
    partitions: list[str]
    features: list[str]
    target: str
    kind: Kind
    hidden: list[int]
    activation: str
    lr: float
    epochs: int
    batch_size: int
    weight_decay: float
    seed: int
    holdout_fraction: float
    threads: int
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    launcher: Literal["local", "torchrun"] = "local"
    nproc: int = 1

    @classmethod
    def from_policy(cls, policy: Policy, data_uri: str, partitions: list[str]) -> TrainSpec:
        t = policy.training
        return cls(model=policy.name, data_uri=data_uri, partitions=list(partitions), features=list(t.features),
                   target=t.target, kind=t.kind, hidden=list(t.hidden), activation=t.activation, lr=t.lr,
                   epochs=t.epochs, batch_size=t.batch_size, weight_decay=t.weight_decay, seed=t.seed,
                   holdout_fraction=t.holdout_fraction, threads=t.threads, device=t.device,
                   launcher=t.launcher, nproc=t.nproc)

    def params(self) -> dict[str, Any]:
        return {"spec_version": SPEC_VERSION, **{k: getattr(self, k) for k in _PARAMS}}

    @classmethod
    def from_manifest(cls, manifest: VersionManifest) -> TrainSpec:
        """The spec that built `manifest`, to run again on the recorded device and process count."""
        where = f"{manifest.name} v{manifest.version}"
        params = manifest.lineage.params
        if params.get("spec_version") != SPEC_VERSION:
            raise TrainerError(f"{where} was not built by this trainer (no spec_version {SPEC_VERSION} in its "
                               "params): it cannot be rebuilt from its manifest")
        data = manifest.lineage.data
        if data is None or manifest.lineage.seed is None:
            raise TrainerError(f"{where} records no data partitions or no seed: it cannot be rebuilt")
        world = manifest.lineage.world_size
        fields = {k: params[k] for k in _PARAMS if k in params}
        try:
            return msgspec.convert({
                **fields, "model": manifest.name, "data_uri": data.uri, "seed": manifest.lineage.seed,
                "partitions": [p.name for p in data.partitions],
                "device": "cuda" if manifest.lineage.environment.device.startswith("cuda") else "cpu",
                "launcher": "torchrun" if world > 1 else "local", "nproc": world,
            }, cls)
        except msgspec.ValidationError as exc:
            raise TrainerError(f"{where}: recorded training parameters are incomplete: {exc}") from None
