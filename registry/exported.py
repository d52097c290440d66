"""Any `torch.nn.Module` as a `torch.export` program (.pt2): capture it with a dynamic batch axis,
and load it back without the user's Python class and without unpickling anything.

Capture: `example_inputs` is a tensor, a tuple of tensors (positional arguments) or a dict of named
tensors (one dict argument). Axis 0 of every input is the batch (torch specialises sizes 0 and 1, so
a batch of one is repeated to two before capture); `dynamic_axes` adds further dynamic axes per
input. The saved bytes are deterministic for the same weights, graph and torch version: no sample
inputs are stored (that member is a pickle) and stack traces (absolute paths of this install) are
dropped, so registering the same module twice is a lookup.

Load: `check_pt2` first (see `pt2_safety`), then `torch.export.load(...).module()`: a plain graph
module that needs no user code.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from inferloop.registry.errors import UnsupportedArtifact
from inferloop.registry.manifest import TensorSpec
from inferloop.registry.pt2_safety import check_pt2

if TYPE_CHECKING:
    import torch

FORMAT = "torch.export"
EXPORT_DOCS = "docs/models.md#when-torchexport-cannot-capture-a-model"

DATATYPES = {  # torch dtype name -> Open Inference Protocol datatype
    "float32": "FP32", "float16": "FP16", "float64": "FP64", "bfloat16": "BF16", "int64": "INT64",
    "int32": "INT32", "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "bool": "BOOL",
}


def datatype_of(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DATATYPES:
        raise UnsupportedArtifact(f"tensors of dtype {name} cannot be served (supported: {', '.join(DATATYPES)})")
    return DATATYPES[name]


def _tensor(value: Any, what: str) -> torch.Tensor:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{what} is not a tensor or array: {exc}") from None


def normalise_inputs(example_inputs: Any, forward_names: Sequence[str]) -> tuple[dict[str, torch.Tensor], str]:
    """The example inputs by name, and the layout ("args" or "dict") the program takes them in."""
    if isinstance(example_inputs, Mapping):
        if not example_inputs:
            raise ValueError("example_inputs is an empty dict")
        return {str(k): _tensor(v, f"example input {k!r}") for k, v in example_inputs.items()}, "dict"
    items = list(example_inputs) if isinstance(example_inputs, tuple) else [example_inputs]
    names = list(forward_names[:len(items)])
    names += [f"input_{i}" for i in range(len(names), len(items))]
    return {name: _tensor(v, f"example input {name!r}") for name, v in zip(names, items, strict=True)}, "args"


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """torch logs a failed capture (graphs, tracebacks) through its own stderr handlers, and prints the
    failing graph to stderr; the reason reaches the user as one line (UnsupportedArtifact) instead.
    INFERLOOP_DEBUG=1 keeps torch's own output."""
    if os.environ.get("INFERLOOP_DEBUG"):
        yield
        return
    import torch.export
    import torch.fx.experimental.symbolic_shapes  # noqa: F401 - its logger must exist to be filtered

    loggers = [lg for name, lg in [("torch", logging.getLogger("torch")), *logging.root.manager.loggerDict.items()]
               if (name == "torch" or name.startswith("torch.")) and isinstance(lg, logging.Logger)]
    for lg in loggers:
        lg.addFilter(_drop)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(_drop)


def _drop(record: logging.LogRecord) -> bool:
    return False


def _batch_of_two(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    import torch

    sizes = {name: int(t.shape[0]) if t.dim() else 0 for name, t in tensors.items()}
    if any(t.dim() == 0 for t in tensors.values()):
        raise ValueError("every example input needs a batch axis (axis 0); got a scalar")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"example inputs have different batch sizes: {sizes}")
    (n,) = set(sizes.values())
    if n == 0:
        raise ValueError("example inputs hold no rows")
    return tensors if n >= 2 else {name: torch.cat([t, t]) for name, t in tensors.items()}


def _output_tensors(outputs: Any) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(outputs, torch.Tensor):
        return {"output": outputs}
    if isinstance(outputs, Mapping):
        return {str(k): v for k, v in outputs.items()}
    if isinstance(outputs, tuple | list):
        return {f"output_{i}": v for i, v in enumerate(outputs)}
    raise UnsupportedArtifact(f"the model returns {type(outputs).__name__}; return a tensor, a tuple or a dict of "
                              "tensors")


def flatten_outputs(outputs: Any, names: Sequence[str]) -> list[torch.Tensor]:
    """A program's outputs in signature order (the same structure the module returned at capture)."""
    import torch

    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, Mapping):
        return [outputs[name] for name in names]
    return list(outputs)


def _spec(name: str, tensor: torch.Tensor, dynamic: set[int]) -> TensorSpec:
    shape = [-1 if axis == 0 or axis in dynamic else int(size) for axis, size in enumerate(tensor.shape)]
    return TensorSpec(name, datatype_of(tensor.dtype), shape)


def user_input_shapes(program: Any) -> list[Any]:
    """The user inputs' shapes as captured, in placeholder order: ints, and symbols where dynamic."""
    from torch.export.graph_signature import InputKind

    user = [spec.arg.name for spec in program.graph_signature.input_specs if spec.kind == InputKind.USER_INPUT]
    nodes = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    return [nodes[name].meta["val"].shape for name in user]


def _placeholder_shapes(program: Any) -> list[list[int]]:
    """The user inputs' shapes as captured: -1 where a dimension stayed symbolic (dynamic)."""
    return [[d if isinstance(d, int) else -1 for d in shape] for shape in user_input_shapes(program)]


def export_program(module: Any, example_inputs: Any, *, dynamic_axes: Mapping[str, Sequence[int]] | None = None
                   ) -> tuple[bytes, list[TensorSpec], list[TensorSpec], str]:
    """Capture `module`; returns (pt2 bytes, input specs, output specs, input layout)."""
    import inspect

    import torch

    params = [p.name for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    named, layout = normalise_inputs(example_inputs, params)
    dynamic = {k: set(v) for k, v in (dynamic_axes or {}).items()}
    unknown = sorted(set(dynamic) - set(named))
    if unknown:
        raise ValueError(f"dynamic_axes names unknown input(s) {unknown}; inputs are {list(named)}")
    batch = torch.export.Dim("batch", min=1)
    # further dynamic axes: AUTO lets torch relate them (a mask as long as its sequence); which ones
    # stayed dynamic is read back from the program below
    per_input = {name: {0: batch, **{axis: torch.export.Dim.AUTO for axis in sorted(dynamic.get(name, ()))
                                     if axis != 0}}
                 for name in named}
    captured = _batch_of_two(named)
    if layout == "dict":
        args: tuple[Any, ...] = (captured,)
        shapes: Any = (per_input,)
    else:
        args, shapes = tuple(captured.values()), tuple(per_input.values())
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode(False), torch.no_grad():
            reference = module(*args)
        with _quiet_torch_logs():
            program = torch.export.export(module, args, dynamic_shapes=shapes)
    except UnsupportedArtifact:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds; all mean "cannot capture"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UnsupportedArtifact(f"torch.export cannot capture {type(module).__name__}: {first} "
                                  f"(see {EXPORT_DOCS})") from None
    finally:
        module.train(was_training)
    outputs = _output_tensors(reference)
    program.example_inputs = None  # the sample-inputs member is a pickle, and would tie the digest to values
    for node in program.graph.nodes:
        node.meta.pop("stack_trace", None)  # absolute paths of this install
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    shapes = _placeholder_shapes(program)
    inputs = [TensorSpec(name, datatype_of(tensor.dtype), shape)
              for (name, tensor), shape in zip(named.items(), shapes, strict=True)]
    return buffer.getvalue(), inputs, [_spec(name, t, set()) for name, t in outputs.items()], layout


def load_program(data: bytes, device: str = "cpu") -> torch.nn.Module:
    """The program as a callable module on `device`, after `check_pt2` allowed it."""
    return load_exported(data, device)[1]


def load_exported(data: bytes, device: str = "cpu") -> tuple[Any, torch.nn.Module]:
    """The program after `check_pt2` allowed it, and its unlifted module (on `device`)."""
    import torch

    check_pt2(data)
    try:
        program = torch.export.load(io.BytesIO(data))
        module = program.module()
    except Exception as exc:  # noqa: BLE001 - a corrupt or incompatible archive, whatever torch raises
        raise UnsupportedArtifact(f"cannot load torch.export archive: {str(exc).strip()[:300]}") from None
    return program, module.to(device)
