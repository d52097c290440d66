"""Request payloads for any served model, shaped like its real inputs: what `locustfile.py` sends.

A model is discovered from the gateway (`GET /v2/models/{name}`: inputs, datatypes, shapes, features,
and the production version in `x-model-version`); what its inputs look like comes from that
version's manifest in the registry:

- tabular models (one FP32 input of named features): each feature is drawn from the manifest's
  binned reference (`ReferenceStats.features`: a bin by its reference fraction, then uniformly inside
  it; the open end bins are as wide as their neighbour), so every feature's distribution matches the
  training data's bins, and the drift monitor sees no drift unless it is asked for;
- any other model: rows of the version's warm-up inputs (`warmup_inputs`: up to 16 real example
  rows of every input), drawn with replacement; each float row is re-centred on a mean and scaled to
  a norm drawn from the reference bins of `<input>:mean` and `<input>:norm` (the columns drift
  watches for such inputs). An integer input of one value per row (an id) follows its reference
  bins, rounded, inside the range the reference and the recorded rows span; other integer and BOOL
  inputs are sent as recorded rows (ids stay inside their tables; their drift columns follow those
  few rows rather than the reference);
- no registry or no manifest statistics: values per the signature (floats N(0,1), integers 0, BOOL
  false), and a warning saying so;
- recorded payload files (`{"rows": [[...], ...]}` for tabular models, `{"inputs": {name: rows}}`
  for any) replace all of the above for the models they name.

Drift (`shift` in standard deviations) moves every float value by shift x that input's (or
feature's) own standard deviation; integer and BOOL inputs never move.

`python -m loadtests.model_inputs --registry URI NAME:VERSION ...` prints those manifests as JSON: the
locustfile reads the registry through this child process, because Locust's gevent patching does not
mix with the registry client's event-loop thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from inferloop.registry.manifest import BinnedReference, VersionManifest

FLOATS = frozenset({"FP16", "FP32", "FP64", "BF16"})
DYNAMIC_DEFAULT = 8  # length of a non-batch dynamic axis when nothing recorded says otherwise


class TensorMeta(msgspec.Struct, frozen=True):
    name: str
    datatype: str
    shape: list[int]


class ModelMeta(msgspec.Struct, frozen=True):
    """What `GET /v2/models/{name}` says (the fields used here) and the version that answered."""

    name: str
    inputs: list[TensorMeta]
    parameters: dict[str, Any] = {}
    version: int | None = None

    @property
    def features(self) -> list[str]:
        return [str(f) for f in self.parameters.get("features") or []]

    @property
    def tabular(self) -> bool:
        inputs = self.inputs
        return bool(self.features) and len(inputs) == 1 and inputs[0].datatype == "FP32" \
            and inputs[0].shape == [-1, len(self.features)]


class BinSampler:
    """Values distributed like one `BinnedReference`: a bin by fraction, then uniform inside it."""

    def __init__(self, ref: BinnedReference) -> None:
        edges = np.asarray(ref.edges, dtype=np.float64)
        fractions = np.asarray(ref.fractions[:len(edges) + 1], dtype=np.float64)  # the last slot is "missing"
        self.empty = len(edges) == 0 or fractions.sum() <= 0
        width = float(np.median(np.diff(edges))) if len(edges) > 1 else 0.0
        self.lo = np.concatenate([[edges[0] - width], edges]) if len(edges) else np.zeros(1)
        self.hi = np.concatenate([edges, [edges[-1] + width]]) if len(edges) else np.zeros(1)
        self.p = fractions / fractions.sum() if not self.empty else np.ones(1)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.empty:
            return np.zeros(n)
        b = rng.choice(len(self.p), size=n, p=self.p)
        return self.lo[b] + rng.random(n) * (self.hi[b] - self.lo[b])


def _std(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    s = np.asarray(np.std(values, axis=axis), dtype=np.float64)
    return np.where(np.isfinite(s) & (s > 0), s, 1.0)


def _row_shape(spec: TensorMeta, recorded: np.ndarray | None) -> list[int]:
    if recorded is not None and recorded.ndim == len(spec.shape):
        return list(recorded.shape[1:])
    return [d if d >= 0 else DYNAMIC_DEFAULT for d in spec.shape[1:]]


class InputSampler:
    """Rows of one named input: recorded rows (bootstrap) or signature-shaped defaults."""

    def __init__(self, spec: TensorMeta, recorded: np.ndarray | None, mean_ref: BinnedReference | None,
                 norm_ref: BinnedReference | None) -> None:
        self.spec = spec
        self.is_float = spec.datatype in FLOATS
        self.recorded = recorded if recorded is not None and len(recorded) else None
        self.row_shape = _row_shape(spec, self.recorded)
        self.mean = BinSampler(mean_ref) if mean_ref is not None and self.is_float else None
        self.norm = BinSampler(norm_ref) if norm_ref is not None and self.is_float else None
        self.sigma = float(_std(self.recorded)) if self.recorded is not None and self.is_float else 1.0
        self.ids = None
        if self.spec.datatype not in FLOATS and self.spec.datatype != "BOOL" and mean_ref is not None \
                and self.recorded is not None and int(np.prod(self.row_shape)) == 1 and len(mean_ref.edges):
            # one integer per row (an id): its values follow the reference bins, rounded, inside the
            # range the reference and the recorded rows both span, so every id sent is one the data had
            bins = BinSampler(mean_ref)
            lo = min(float(self.recorded.min()), mean_ref.edges[0])
            hi = max(float(self.recorded.max()), mean_ref.edges[-1])
            self.ids = lambda rng, n: np.clip(np.floor(bins.draw(rng, n)), lo, hi)

    def draw(self, rng: np.random.Generator, n: int, shift: float) -> np.ndarray:
        if self.recorded is not None:
            rows = self.recorded[rng.integers(0, len(self.recorded), size=n)]
        elif self.is_float:
            rows = rng.normal(size=(n, *self.row_shape))
        elif self.spec.datatype == "BOOL":
            rows = np.zeros((n, *self.row_shape), dtype=bool)
        else:
            rows = np.zeros((n, *self.row_shape), dtype=np.int64)
        if not self.is_float:
            if self.ids is not None:
                rows = self.ids(rng, n).reshape(rows.shape).astype(rows.dtype)
            return rows
        rows = rows.astype(np.float64)
        if self.mean is not None and self.norm is not None and rows[0].size:
            rows = self._match_summaries(rng, rows)
        return rows + shift * self.sigma

    def _match_summaries(self, rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
        """Each row re-centred on a mean, and its spread scaled to a norm, drawn from the reference bins
        of `<input>:mean` and `<input>:norm`: the two columns drift watches follow the reference."""
        n = len(rows)
        flat = rows.reshape(n, -1)
        size = flat.shape[1]
        assert self.mean is not None and self.norm is not None
        mean, norm = self.mean.draw(rng, n), np.abs(self.norm.draw(rng, n))
        centred = flat - flat.mean(axis=1, keepdims=True)
        spread = np.sqrt((centred * centred).sum(axis=1))
        target = np.sqrt(np.maximum(norm * norm - size * mean * mean, 0.0))
        scale = np.divide(target, spread, out=np.zeros(n), where=spread > 0)
        matched: np.ndarray = (centred * scale[:, None] + mean[:, None]).reshape(rows.shape)
        return matched


class ModelSampler:
    """OIP v2 infer bodies (and /v1 rows for tabular models) for one model."""

    def __init__(self, meta: ModelMeta, manifest: VersionManifest | None = None,
                 recorded: dict[str, Any] | None = None) -> None:
        self.meta = meta
        self.source = "signature (no registry statistics)"
        self.columns: list[BinSampler] | None = None
        self.rows: np.ndarray | None = None
        self.inputs: list[InputSampler] = []
        ref = manifest.reference if manifest is not None else None
        bins = {b.name: b for b in ref.features} if ref is not None else {}
        if recorded is not None and meta.tabular and "rows" in recorded:
            self.rows, self.source = np.asarray(recorded["rows"], dtype=np.float64), "recorded payload file"
        elif meta.tabular and all(f in bins for f in meta.features):
            self.columns, self.source = [BinSampler(bins[f]) for f in meta.features], "reference bins"
        elif meta.tabular and manifest is not None and manifest.warmup:
            self.rows, self.source = np.asarray(manifest.warmup, dtype=np.float64), "warm-up rows"
        if meta.tabular and (self.rows is not None or self.columns is not None):
            self.sigma = _std(self.rows, axis=0) if self.rows is not None else \
                _std(self.draw_rows(np.random.default_rng(0), 4096, 0.0), axis=0)
            return
        tensors = (recorded or {}).get("inputs") or (manifest.warmup_inputs if manifest is not None else {})
        if recorded is not None and "inputs" in recorded:
            self.source = "recorded payload file"
        elif tensors:
            self.source = "warm-up inputs" + (" + reference bins" if bins else "")
        for spec in meta.inputs:
            values = tensors.get(spec.name)
            array = np.asarray(values) if values is not None else None
            self.inputs.append(InputSampler(spec, array, bins.get(f"{spec.name}:mean"), bins.get(f"{spec.name}:norm")))

    def draw_rows(self, rng: np.random.Generator, n: int, shift: float) -> np.ndarray:
        """Tabular rows (n, features)."""
        if self.columns is not None:
            rows = np.stack([c.draw(rng, n) for c in self.columns], axis=1)
        else:
            assert self.rows is not None
            rows = self.rows[rng.integers(0, len(self.rows), size=n)]
        return rows + shift * self.sigma if shift else rows

    def infer_body(self, rng: np.random.Generator, n: int, shift: float) -> dict[str, Any]:
        if not self.inputs:
            rows = self.draw_rows(rng, n, shift)
            spec = self.meta.inputs[0]
            return {"inputs": [{"name": spec.name, "shape": list(rows.shape), "datatype": "FP32",
                                "data": np.round(rows, 5).ravel().tolist()}]}
        tensors = []
        for s in self.inputs:
            array = s.draw(rng, n, shift)
            data = np.round(array, 5).ravel().tolist() if s.is_float else array.ravel().tolist()
            tensors.append({"name": s.spec.name, "shape": list(array.shape), "datatype": s.spec.datatype,
                            "data": data})
        return {"inputs": tensors}

    def predict_body(self, rng: np.random.Generator, n: int, shift: float) -> dict[str, Any]:
        return {"instances": np.round(self.draw_rows(rng, n, shift), 5).tolist()}


def read_manifests(registry: str, wanted: Sequence[tuple[str, int]]) -> dict[str, VersionManifest]:
    """The manifests of (name, version) pairs, read by a child process (see the module docstring)."""
    if not wanted:
        return {}
    if registry.startswith("file://") and not registry[len("file://"):].startswith("/"):
        # the child runs from the repository root: a relative registry means the caller's directory
        registry = f"file://{Path(registry[len('file://'):]).absolute()}"
    cmd = [sys.executable, "-m", "loadtests.model_inputs", "--registry", registry,
           *(f"{name}:{version}" for name, version in wanted)]
    out = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                         timeout=120, env=os.environ.copy())
    if out.returncode != 0:
        raise RuntimeError(f"reading manifests from {registry} failed: {out.stderr.strip()[-500:]}")
    return msgspec.json.decode(out.stdout, type=dict[str, VersionManifest])


def load_recorded(directory: Path) -> dict[str, dict[str, Any]]:
    """`{model name: payload}` from `<model>.json` files in `directory`."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="print the manifests of NAME:VERSION pairs as JSON")
    p.add_argument("--registry", required=True)
    p.add_argument("versions", nargs="+", metavar="NAME:VERSION")
    args = p.parse_args(argv)
    from inferloop.registry import Registry

    found: dict[str, VersionManifest] = {}
    with Registry.open(args.registry, create=False) as reg:
        for item in args.versions:
            name, _, version = item.rpartition(":")
            found[name] = reg.get_manifest(name, int(version))
    sys.stdout.write(msgspec.json.encode(found).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
