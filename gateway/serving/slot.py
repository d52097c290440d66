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

if TYPE_CHECKING:
    from torch import nn

    from inferloop.registry import VersionManifest


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
    """What a request must look like and what comes back, from the manifest."""

    features: tuple[str, ...]
    outputs: int
    output_kind: str
    classes: tuple[str, ...]

    @classmethod
    def of(cls, manifest: VersionManifest) -> ModelSignature:
        sig = manifest.signature
        return cls(tuple(f.name for f in sig.features), sig.outputs, sig.output_kind, tuple(sig.classes))

    @property
    def width(self) -> int:
        return len(self.features)


class ModelSlot:
    __slots__ = ("_drained", "device", "footprint_bytes", "inflight", "load_seconds", "loaded_at", "manifest",
                 "model", "module", "signature", "stage", "state", "version", "_postprocess")

    def __init__(self, manifest: VersionManifest, stage: str, device: str) -> None:
        self.model = manifest.name
        self.version = manifest.version
        self.stage = stage
        self.manifest = manifest
        self.signature = ModelSignature.of(manifest)
        self.device = device
        self.module: nn.Module | None = None
        self.state = SlotState.LOADING
        self.inflight = 0
        self.footprint_bytes = 0
        self.loaded_at = 0.0
        self.load_seconds = 0.0
        self._drained = asyncio.Event()
        self._postprocess = self.signature.output_kind

    def __repr__(self) -> str:
        return f"<ModelSlot {self.model} v{self.version} {self.stage} {self.state} inflight={self.inflight}>"

    # -- loading (called by SlotLoader) -------------------------------------------------------
    def attach(self, module: nn.Module) -> None:
        self.module = module
        self.footprint_bytes = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))

    # -- inference (executor thread) ----------------------------------------------------------
    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Forward pass on a float32 (n, width) batch; binary → sigmoid, multiclass → softmax."""
        import torch

        module = self.module
        if module is None:
            raise RuntimeError(f"{self.model} v{self.version} was released while a batch was running on it")
        x = torch.from_numpy(rows)
        if self.device != "cpu":
            x = x.to(self.device, non_blocking=True)
        with torch.inference_mode():
            y = module(x)
            if self._postprocess == "binary":
                y = torch.sigmoid(y)
            elif self._postprocess == "multiclass":
                y = torch.softmax(y, dim=1)
            out: np.ndarray = y.float().cpu().numpy()
            return out

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
        """Drop the module; the caller empties the CUDA cache once the references are gone."""
        self.module = None
        if self.state is not SlotState.FAILED:
            self.state = SlotState.RELEASED

    def fail(self) -> None:
        self.module = None
        self.state = SlotState.FAILED

    def describe(self) -> dict[str, object]:
        return {"version": self.version, "state": str(self.state), "inflight": self.inflight,
                "footprint_bytes": self.footprint_bytes, "load_seconds": round(self.load_seconds, 4),
                "loaded_at": self.loaded_at or None}
