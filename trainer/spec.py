"""`TrainSpec`: everything one training run needs, with the data window already resolved.

It is built from a policy (the window resolved to exact partitions) or from a registered
version's manifest (`--reproduce`): `recorded_params()` is what goes into the manifest, and `from_manifest`
reads it back, so a version can be rebuilt from its manifest alone.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from inferloop.policy import BUILTIN_ENTRYPOINT, Kind, Policy
from inferloop.registry.manifest import VersionManifest
from inferloop.trainer.errors import TrainerError

SPEC_VERSION = 2  # 2: entrypoint + params (1: the built-in MLP's keys at the top level)

# Recorded in the manifest's params. Not recorded: model, data (lineage.data), seed (lineage.seed),
# processes (lineage.world_size) and device (environment.device), which the manifest holds elsewhere.
_PARAMS = ("entrypoint", "params", "root", "features", "target", "kind", "holdout_fraction", "threads")
_V1_MLP = ("hidden", "activation", "lr", "epochs", "batch_size", "weight_decay")


class TrainSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str
    data_uri: str
    partitions: list[str]
    features: list[str]
    target: str
    kind: Kind
    seed: int
    holdout_fraction: float
    threads: int
    entrypoint: str = BUILTIN_ENTRYPOINT
    params: dict[str, Any] = {}
    root: str | None = None  # the policy's project directory, from which the entrypoint is imported
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    launcher: Literal["local", "torchrun"] = "local"
    nproc: int = 1

    @classmethod
    def from_policy(cls, policy: Policy, data_uri: str, partitions: list[str], root: str | None = None) -> TrainSpec:
        t = policy.training
        return cls(model=policy.name, data_uri=data_uri, partitions=list(partitions), features=list(t.features),
                   target=t.target, kind=t.kind, entrypoint=t.entrypoint, params=t.entrypoint_params(),
                   root=root, seed=t.seed, holdout_fraction=t.holdout_fraction, threads=t.threads,
                   device=t.device, launcher=t.launcher, nproc=t.nproc)

    def recorded_params(self) -> dict[str, Any]:
        return {"spec_version": SPEC_VERSION, **{k: getattr(self, k) for k in _PARAMS}}

    @classmethod
    def from_manifest(cls, manifest: VersionManifest) -> TrainSpec:
        """The spec that built `manifest`, to run again on the recorded device and process count."""
        where = f"{manifest.name} v{manifest.version}"
        params = dict(manifest.lineage.params)
        version = params.get("spec_version")
        if version == 1:  # the built-in MLP, its parameters at the top level
            params["params"] = {k: params.pop(k) for k in _V1_MLP if k in params}
        elif version != SPEC_VERSION:
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
