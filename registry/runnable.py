"""`Runnable`: a loaded version that turns named input arrays into named output arrays, whatever
its format. The gateway's slots, its warm-up and the trainer's gates all run a version through this
one interface, so what is judged is exactly what is served.

    torch.export program (.pt2)   -> TorchRunnable (graph module, no user code, no pickle)
    built-in MLP (safetensors)    -> TorchRunnable (rebuilt from its spec; logits -> probabilities)
    ONNX                          -> OnnxRunnable  (onnxruntime, the `inferloop[onnx]` extra)

`run` takes one array per signature input (batch axis first, already of the declared dtype) and
returns one array per signature output; it runs on the caller's thread (the gateway's device thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from inferloop.registry.errors import UnsupportedArtifact
from inferloop.registry.exported import flatten_outputs

if TYPE_CHECKING:
    from inferloop.registry.manifest import ArtifactInfo, InputSignature
    from inferloop.registry.program_call import ProgramCall, ShapeRules


class Runnable(Protocol):
    footprint_bytes: int

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class TorchRunnable:
    def __init__(self, module: Any, signature: InputSignature, device: str, *, logits: bool = False,
                 call: ProgramCall | None = None, rules: ShapeRules | None = None) -> None:
        self.module = module
        self.call = call  # a torch.export program's graph, called without its wrapper (see program_call)
        self.rules = rules  # what a torch.export program assumes of its inputs' shapes
        self.device = device
        self.dict_input = signature.input_layout == "dict"
        self.input_names = [t.name for t in signature.tensor_inputs()]
        self.output_names = [t.name for t in signature.tensor_outputs()]
        # the built-in MLP returns logits; its outputs are served as probabilities
        self.activation = signature.output_kind if logits else "none"
        self.footprint_bytes = int(sum(t.numel() * t.element_size()
                                       for t in (*module.parameters(), *module.buffers())))

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        if self.rules is not None and (broken := self.rules.broken(inputs)) is not None:
            raise ValueError(broken)
        tensors = [torch.from_numpy(a) for a in inputs]
        if self.device != "cpu":
            tensors = [t.to(self.device, non_blocking=True) for t in tensors]
        try:
            with torch.inference_mode():
                if self.call is not None:
                    return self._arrays(self.call(tensors))
                if self.dict_input:
                    outputs = self.module(dict(zip(self.input_names, tensors, strict=True)))
                else:
                    outputs = self.module(*tensors)
                flat = flatten_outputs(outputs, self.output_names)
                if self.activation == "binary":
                    flat = [torch.sigmoid(flat[0])]
                elif self.activation == "multiclass":
                    flat = [torch.softmax(flat[0], dim=1)]
                return self._arrays(flat)
        except AssertionError as exc:
            # a torch.export program's guards (torch._assert): shapes outside what it was captured for,
            # such as a mask not as long as its sequence: the inputs' fault, not the model's
            raise ValueError(f"the inputs break the program's shape constraints: {exc}") from None


    def _arrays(self, tensors: list[Any]) -> list[np.ndarray]:
        if self.device == "cpu":  # .cpu() of a CPU tensor is a no-op that still costs a dispatch
            return [t.numpy() for t in tensors]
        return [t.cpu().numpy() for t in tensors]


class OnnxRunnable:
    def __init__(self, session: Any, signature: InputSignature, size: int) -> None:
        self.session = session
        self.input_names = [t.name for t in signature.tensor_inputs()]
        self.output_names = [t.name for t in signature.tensor_outputs()]
        self.footprint_bytes = size

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        feed = dict(zip(self.input_names, inputs, strict=True))
        return [np.asarray(out) for out in self.session.run(self.output_names, feed)]


def open_runnable(data: bytes, artifact: ArtifactInfo, signature: InputSignature, device: str = "cpu") -> Runnable:
    """Load a version's verified artifact bytes for running; refuses what could run code on load."""
    fmt = artifact.format
    if fmt == "torch.export":
        from inferloop.registry.exported import load_exported
        from inferloop.registry.program_call import ProgramCall, ShapeRules

        program, module = load_exported(data, device)
        names, dict_input = [t.name for t in signature.tensor_inputs()], signature.input_layout == "dict"
        rules = ShapeRules.of(program, module, names, dict_input)
        if rules is not None:  # checked before each call: torch's per-call checks cost more (BENCHMARKS.md)
            module.validate_inputs = False
        call = ProgramCall.of(program, module, names, [t.name for t in signature.tensor_outputs()], dict_input)
        return TorchRunnable(module, signature, device, call=call, rules=rules)
    if fmt == "onnx":
        from inferloop.registry.onnx_artifact import load_session

        return OnnxRunnable(load_session(data, device), signature, len(data))
    if fmt == "safetensors":
        from inferloop.registry.artifact import load_module

        if artifact.spec is None:
            raise UnsupportedArtifact("a safetensors artifact needs its architecture spec; the manifest has none")
        module = load_module(data, artifact.spec, fmt, device)
        return TorchRunnable(module, signature, device, logits=True)
    raise UnsupportedArtifact(f"artifact format {fmt!r} is refused: only torch.export, onnx and safetensors "
                              "artifacts load without pickle")
