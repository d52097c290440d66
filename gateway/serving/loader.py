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
from inferloop.registry.packaging import NUMPY_DTYPES
from inferloop.registry.runnable import open_runnable

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
            runnable = await self.executor.run(open_runnable, data, manifest.artifact, manifest.signature,
                                               self.device)
        except (RegistryError, RuntimeError, ValueError, TypeError) as exc:
            phase = "memory" if "out of memory" in str(exc).lower() else "load"
            raise LoadFailed(f"{label}: cannot load artifact: {exc}", phase) from exc
        slot.attach(runnable)
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
        if spec is None:
            return  # programs and ONNX models carry their signature; warm-up checks it
        if spec.in_features != sig.width or spec.out_features != sig.outputs:
            raise LoadFailed(f"{slot.model} v{slot.version}: architecture takes {spec.in_features} inputs and gives "
                             f"{spec.out_features} outputs, but the signature declares {sig.width} features and "
                             f"{sig.outputs} outputs", "load")

    @staticmethod
    def _warmup_inputs(slot: ModelSlot) -> tuple[np.ndarray, ...]:
        sig, manifest = slot.signature, slot.manifest
        label = f"{slot.model} v{slot.version}"
        if not manifest.warmup_inputs:
            rows = np.asarray(manifest.warmup, dtype=np.float32)
            if rows.size == 0:
                rows = np.zeros((1, sig.width), dtype=np.float32)
            if rows.ndim != 2 or rows.shape[1] != sig.width:
                raise LoadFailed(f"{label}: warm-up rows have shape {list(rows.shape)}, expected [n, {sig.width}]",
                                 "warmup")
            return (np.ascontiguousarray(rows),)
        arrays = []
        for spec in sig.inputs:
            try:
                values = np.asarray(manifest.warmup_inputs[spec.name], dtype=NUMPY_DTYPES.get(spec.datatype))
            except (KeyError, ValueError, TypeError) as exc:
                raise LoadFailed(f"{label}: warm-up input {spec.name!r} is missing or unreadable ({exc})",
                                 "warmup") from None
            if values.ndim != len(spec.shape) or any(d not in (-1, n) for d, n in zip(spec.shape, values.shape,
                                                                                       strict=False)):
                raise LoadFailed(f"{label}: warm-up input {spec.name!r} has shape {list(values.shape)}, the "
                                 f"signature says {spec.shape}", "warmup")
            arrays.append(np.ascontiguousarray(values))
        return tuple(arrays)

    @classmethod
    def _warm_up(cls, slot: ModelSlot) -> None:
        sig = slot.signature
        label = f"{slot.model} v{slot.version}"
        inputs = cls._warmup_inputs(slot)
        for batch in (tuple(a[:1] for a in inputs), inputs):
            n = len(batch[0])
            outputs = slot.predict(batch)
            if len(outputs) != len(sig.output_specs):
                raise LoadFailed(f"{label}: warm-up gave {len(outputs)} outputs, the signature declares "
                                 f"{len(sig.output_specs)}", "warmup")
            for spec, out in zip(sig.output_specs, outputs, strict=True):
                expected = [n, *spec.shape[1:]]
                if out.ndim != len(expected) or any(d not in (-1, m) for d, m in zip(expected, out.shape,
                                                                                      strict=False)):
                    raise LoadFailed(f"{label}: warm-up output {spec.name!r} has shape {list(out.shape)}, the "
                                     f"signature says {expected}", "warmup")
                if out.dtype.kind == "f" and not np.isfinite(out).all():
                    bad = int((~np.isfinite(out)).sum())
                    raise LoadFailed(f"{label}: warm-up produced {bad} non-finite value(s) (NaN/Inf) in output "
                                     f"{spec.name!r} from {n} row(s)", "warmup")
