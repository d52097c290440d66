"""Artifact bytes: a safetensors state dict (no pickle on save or load, deterministic bytes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from inferloop.registry.errors import UnsupportedArtifact

if TYPE_CHECKING:
    import torch
    from torch import nn

    from inferloop.registry.manifest import ModelSpec

FORMAT = "safetensors"


def save_module(module: nn.Module) -> tuple[bytes, ModelSpec]:
    from safetensors.torch import save

    from inferloop.registry.architectures import spec_of

    spec = spec_of(module)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    return save(tensors), spec


def load_module(data: bytes, spec: ModelSpec, fmt: str = FORMAT, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the module; anything that is not a safetensors state dict of `spec` is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from inferloop.registry.architectures import build_module

    if fmt != FORMAT:
        raise UnsupportedArtifact(f"artifact format {fmt!r} is refused: only {FORMAT!r} loads without pickle")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise UnsupportedArtifact(f"artifact is not a readable safetensors state dict: {exc}") from None
    module = build_module(spec)
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise UnsupportedArtifact(f"artifact does not match architecture {spec.kind} "
                                  f"{spec.in_features}->{spec.hidden}->{spec.out_features}: "
                                  f"{' '.join(first[:3])}") from None
    return module.to(device).eval()
