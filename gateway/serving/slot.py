"""A model slot: one version of one model loaded on a device, with an explicit lifecycle.

    LOADING ─▶ WARMING ─▶ SERVING ─▶ DRAINING ─▶ STANDBY ─▶ SERVING (rollback: no reload)
                  │                      │            └──────▶ RELEASED
                  └──▶ FAILED            └─────────────────────▶ RELEASED

A slot counts the batches running on it. A swap moves the old slot to DRAINING; it leaves DRAINING
only when its last batch has finished, so requests already running always finish on the model that
started them. Every state change happens on the event loop (single-threaded), so the counter needs
no lock; only `predict` runs on the device's executor thread.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from inferloop.registry.manifest import TensorSpec
from inferloop.registry.packaging import NUMPY_DTYPES

if TYPE_CHECKING:
    from inferloop.registry import VersionManifest
    from inferloop.registry.runnable import Runnable


class SlotState(enum.StrEnum):
    LOADING = "loading"
    WARMING = "warming"
    SERVING = "serving"
    DRAINING = "draining"
    STANDBY = "standby"
    RELEASED = "released"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """What a request must look like and what comes back, from the manifest.

    `tabular`: one FP32 input `[n, len(features)]` (the v1 predict form, per-feature tensors and
    per-feature drift apply); otherwise requests carry the named tensors of `inputs`. `fixed_rows`:
    no input has a dynamic axis besides the batch, so a batch's size (and cost) is its row count."""

    features: tuple[str, ...]
    outputs: int
    output_kind: str
    classes: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    output_specs: tuple[TensorSpec, ...]
    tabular: bool
    dtypes: tuple[np.dtype, ...]  # the numpy dtype of each input
    output_names: tuple[str, ...]
    fixed_rows: bool

    @classmethod
    def of(cls, manifest: VersionManifest) -> ModelSignature:
        sig = manifest.signature
        inputs = tuple(sig.tensor_inputs())
        tabular = bool(sig.features) and len(inputs) == 1 and inputs[0].datatype == "FP32" \
            and inputs[0].shape == [-1, len(sig.features)]
        dtypes = tuple(np.dtype(NUMPY_DTYPES.get(t.datatype, "float32")) for t in inputs)
        outputs = tuple(sig.tensor_outputs())
        fixed_rows = all(-1 not in t.shape[1:] for t in inputs)
        return cls(tuple(f.name for f in sig.features), sig.outputs, sig.output_kind, tuple(sig.classes),
                   inputs, outputs, tabular, dtypes, tuple(t.name for t in outputs), fixed_rows)

    @property
    def width(self) -> int:
        return len(self.features)

    def same_inputs(self, other: ModelSignature) -> bool:
        """Whether requests for one version fit the other (names, datatypes, shapes)."""
        return self.inputs == other.inputs

    def fits(self, arrays: tuple[np.ndarray, ...]) -> bool:
        """Whether decoded request arrays fit this version (checked again at batch time: a swap may
        have brought a version with another signature since the request was decoded)."""
        if self.tabular:  # the hot path: one float32 (n, features) array
            if len(arrays) != 1:
                return False
            rows = arrays[0]
            return rows.dtype == self.dtypes[0] and rows.ndim == 2 and rows.shape[1] == len(self.features)
        if len(arrays) != len(self.inputs):
            return False
        for array, spec, dtype in zip(arrays, self.inputs, self.dtypes, strict=True):
            if array.dtype != dtype or array.ndim != len(spec.shape):
                return False
            for want, got in zip(spec.shape[1:], array.shape[1:], strict=True):
                if want != -1 and want != got:
                    return False
        return True


class ModelSlot:
    __slots__ = ("_drained", "device", "footprint_bytes", "inflight", "load_seconds", "loaded_at", "manifest",
                 "model", "runnable", "signature", "stage", "state", "version")

    def __init__(self, manifest: VersionManifest, stage: str, device: str) -> None:
        self.model = manifest.name
        self.version = manifest.version
        self.stage = stage
        self.manifest = manifest
        self.signature = ModelSignature.of(manifest)
        self.device = device
        self.runnable: Runnable | None = None
        self.state = SlotState.LOADING
        self.inflight = 0
        self.footprint_bytes = 0
        self.loaded_at = 0.0
        self.load_seconds = 0.0
        self._drained = asyncio.Event()

    def __repr__(self) -> str:
        return f"<ModelSlot {self.model} v{self.version} {self.stage} {self.state} inflight={self.inflight}>"

    # -- loading (called by SlotLoader) -------------------------------------------------------
    def attach(self, runnable: Runnable) -> None:
        self.runnable = runnable
        self.footprint_bytes = runnable.footprint_bytes

    # -- inference (executor thread) ----------------------------------------------------------
    def predict(self, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        """One forward: an array per signature input (batch first) in, an array per output out."""
        runnable = self.runnable
        if runnable is None:
            raise RuntimeError(f"{self.model} v{self.version} was released while a batch was running on it")
        return runnable.run(inputs)

    # -- use counting (event loop) ------------------------------------------------------------
    def enter(self) -> None:
        self.inflight += 1

    def exit(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self.state is SlotState.DRAINING:
            self._drained.set()

    # -- lifecycle (event loop, under the stage's lock) -----------------------------------------
    def serve(self) -> None:
        if self.state not in (SlotState.WARMING, SlotState.STANDBY):
            raise RuntimeError(f"cannot serve a slot that is {self.state}")
        self.state = SlotState.SERVING
        self._drained.clear()
        if not self.loaded_at:
            self.loaded_at = time.time()

    def start_draining(self) -> None:
        self.state = SlotState.DRAINING
        if self.inflight == 0:
            self._drained.set()

    async def drained(self) -> None:
        await self._drained.wait()

    def park(self) -> None:
        """Drained and kept loaded for a quick swap back."""
        self.state = SlotState.STANDBY

    def release(self) -> None:
        """Drop the model; the caller empties the CUDA cache once the references are gone."""
        self.runnable = None
        if self.state is not SlotState.FAILED:
            self.state = SlotState.RELEASED

    def fail(self) -> None:
        self.runnable = None
        self.state = SlotState.FAILED

    def describe(self) -> dict[str, object]:
        return {"version": self.version, "state": str(self.state), "inflight": self.inflight,
                "footprint_bytes": self.footprint_bytes, "load_seconds": round(self.load_seconds, 4),
                "loaded_at": self.loaded_at or None}
