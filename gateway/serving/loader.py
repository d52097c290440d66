"""Turn a manifest into a warm, verified `ModelSlot`: fetch → load → warm up → verify.

Every failure becomes `LoadFailed(phase=...)` and leaves nothing behind; the caller keeps serving
what it was serving. Verification runs the manifest's warm-up rows (one row and the whole set, so
both batch shapes are exercised) and insists on finite outputs of the signature's shape.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from inferloop.gateway.errors import LoadFailed
from inferloop.gateway.serving.slot import ModelSlot, SlotState
from inferloop.registry import RegistryError
from inferloop.registry.artifact import load_module

if TYPE_CHECKING:
    from inferloop.gateway.serving.blob_cache import BlobCache
    from inferloop.gateway.serving.device import DeviceExecutor
    from inferloop.registry import VersionManifest


class SlotLoader:
    def __init__(self, blobs: BlobCache, executor: DeviceExecutor, device: str) -> None:
        self.blobs = blobs
        self.executor = executor
        self.device = device

    async def load(self, manifest: VersionManifest, stage: str) -> ModelSlot:
        started = time.monotonic()
        slot = ModelSlot(manifest, stage, self.device)
        label = f"{manifest.name} v{manifest.version}"
        try:
            data = await self.blobs.get(manifest.artifact.digest)
        except RegistryError as exc:
            raise LoadFailed(f"{label}: cannot fetch artifact: {exc}", "fetch") from exc
        try:
            module = await self.executor.run(load_module, data, manifest.artifact.spec, manifest.artifact.format,
                                             self.device)
        except (RegistryError, RuntimeError, ValueError, TypeError) as exc:
            phase = "memory" if "out of memory" in str(exc).lower() else "load"
            raise LoadFailed(f"{label}: cannot load artifact: {exc}", phase) from exc
        slot.attach(module)
        slot.state = SlotState.WARMING
        try:
            self._check_spec(slot)
            await self.executor.run(self._warm_up, slot)
        except LoadFailed:
            slot.fail()
            raise
        except (RuntimeError, ValueError) as exc:
            slot.fail()
            raise LoadFailed(f"{label}: warm-up failed: {exc}", "warmup") from exc
        slot.load_seconds = time.monotonic() - started
        return slot

    @staticmethod
    def _check_spec(slot: ModelSlot) -> None:
        spec, sig = slot.manifest.artifact.spec, slot.signature
        if spec.in_features != sig.width or spec.out_features != sig.outputs:
            raise LoadFailed(f"{slot.model} v{slot.version}: architecture takes {spec.in_features} inputs and gives "
                             f"{spec.out_features} outputs, but the signature declares {sig.width} features and "
                             f"{sig.outputs} outputs", "load")

    @staticmethod
    def _warm_up(slot: ModelSlot) -> None:
        sig = slot.signature
        rows = np.asarray(slot.manifest.warmup, dtype=np.float32)
        if rows.size == 0:
            rows = np.zeros((1, sig.width), dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != sig.width:
            raise LoadFailed(f"{slot.model} v{slot.version}: warm-up rows have shape {list(rows.shape)}, "
                             f"expected [n, {sig.width}]", "warmup")
        for batch in (rows[:1], rows):
            out = slot.predict(np.ascontiguousarray(batch))
            if out.shape != (len(batch), sig.outputs):
                raise LoadFailed(f"{slot.model} v{slot.version}: warm-up output has shape {list(out.shape)}, "
                                 f"the signature says [{len(batch)}, {sig.outputs}]", "warmup")
            if not np.isfinite(out).all():
                bad = int((~np.isfinite(out)).sum())
                raise LoadFailed(f"{slot.model} v{slot.version}: warm-up produced {bad} non-finite output(s) "
                                 f"(NaN/Inf) from {len(batch)} row(s)", "warmup")
