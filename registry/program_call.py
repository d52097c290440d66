"""Calling a loaded `torch.export` program without its per-call wrapper, and the shape rules that
wrapper would have checked.

`ExportedProgram.module()` wraps the program's graph for any caller: every call flattens the
arguments against the captured input structure (pytree), runs the guards, reads each parameter by
name, and rebuilds the output structure. At one row that costs more than the model: a 8→64→64→1
MLP's forward takes ~22 µs called as its graph and ~43–53 µs through the wrapper (BENCHMARKS.md).
The structure of a served version never changes between calls (the signature fixes it), so
`ProgramCall` works the orders out once at load and then calls the graph with the lifted parameters,
buffers and constants, and the inputs, as flat lists. torch's guards, where the program has them,
still run on every call.

`ShapeRules` are the program's assumptions about its inputs' shapes, checked before every call
(`TorchRunnable.run`): what the signature cannot say, such as two dynamic axes that must agree.

`ProgramCall.of` returns None for a program it cannot call this way (inputs or outputs of another
kind: buffer updates handed back as outputs, a custom object, an effect token; nested output
structures); such programs keep the wrapper.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

# input kinds fed from the loaded module's own tensors, then the user's inputs; nothing else is handled
_LIFTED = ("PARAMETER", "BUFFER", "CONSTANT_TENSOR")


def placeholder_order(module: Any, input_names: Sequence[str], dict_input: bool) -> list[int] | None:
    """For each of the program's user-input placeholders, which signature input feeds it (the order in
    which the wrapper flattens its arguments), or None when the signature's inputs do not fill them."""
    from torch.fx._pytree import tree_flatten_spec

    indices = list(range(len(input_names)))
    call_args: tuple[Any, ...] = tuple(indices)
    if dict_input:
        call_args = ({name: i for name, i in zip(input_names, indices, strict=True)},)
    try:
        order = list(tree_flatten_spec((call_args, {}), module._in_spec))
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError):
        return None
    return order if sorted(order) == indices else None


class ProgramCall:
    def __init__(self, graph: Any, lifted: list[Any], user_order: list[int], guards: Any, outputs: list[int]) -> None:
        self._forward = graph.forward
        self._lifted = lifted
        self._user_order = user_order
        self._guards = guards
        self._outputs = outputs

    @classmethod
    def of(cls, program: Any, module: Any, input_names: Sequence[str], output_names: Sequence[str],
           dict_input: bool) -> ProgramCall | None:
        """The call for `program`, whose unlifted `module` (already on its device) holds the tensors;
        inputs come in signature order (`input_names`), outputs go back in signature order."""
        import torch
        from torch.utils import _pytree as pytree

        from inferloop.registry.exported import flatten_outputs

        signature = program.graph_signature
        if any(spec.kind.name not in (*_LIFTED, "USER_INPUT") for spec in signature.input_specs):
            return None
        if any(spec.kind.name != "USER_OUTPUT" for spec in signature.output_specs):
            return None
        graph = program.graph_module
        if any(True for _ in graph.parameters()) or any(True for _ in graph.buffers()):
            return None  # the lifted graph holds no tensors of its own; one that does is not ours to call
        try:
            # the unlifted module keeps each lifted tensor under its target's dotted name
            lifted = [functools.reduce(getattr, spec.target.split("."), module)
                      for spec in signature.input_specs if spec.kind.name in _LIFTED]
            user_order = placeholder_order(module, input_names, dict_input)
            # the wrapper rebuilds the captured output structure, which `flatten_outputs` reads in signature
            # order: the same two steps on marker tensors give the order once
            markers = [torch.empty(0) for _ in signature.output_specs]
            position = {id(marker): i for i, marker in enumerate(markers)}
            outputs = [position.get(id(t), -1)
                       for t in flatten_outputs(pytree.tree_unflatten(markers, module._out_spec), output_names)]
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError):
            return None  # a structure other than the signature's: the wrapper knows it
        if user_order is None or sorted(outputs) != list(range(len(output_names))):
            return None
        return cls(graph, lifted, user_order, getattr(module, "_guards_fn", None), outputs)

    def __call__(self, inputs: Sequence[Any]) -> list[Any]:
        """Run the graph on `inputs` (tensors in signature order); returns outputs in signature order."""
        flat = [inputs[i] for i in self._user_order]
        if self._guards is not None:
            self._guards(*flat)
        results = self._forward(*self._lifted, *flat)
        return [results[i] for i in self._outputs]


class ShapeRules:
    """What a program assumes of its inputs' shapes, from its placeholders: each axis either a fixed
    size, or a symbol, which every axis carrying the same symbol must equal (a mask as long as its
    sequence) and which keeps within the program's range for it. The wrapper checks these before
    each call (`validate_inputs`); the gateway turns that off, because its own signature check covers
    the fixed sizes, but a signature has no way to say that two dynamic axes agree. A broken rule is
    the request's fault, and without the check the graph may not even fail: a mask of length 1
    broadcasts against any sequence and the answer is silently wrong.

    Lower bounds of 0, 1 and 2 are not enforced, as torch's own guards do not: torch specialises
    sizes 0 and 1 while capturing, which puts 2 under every dynamic axis it did not bound itself.
    Axes sized by an expression of symbols (a derived dimension) are not checked here."""

    def __init__(self, names: Sequence[str], ranks: list[int], fixed: list[tuple[int, int, int]],
                 same: list[tuple[int, int, int, int]], bounds: list[tuple[int, int, int, float]]) -> None:
        self.names = names  # every index below is a signature input's
        self.ranks = ranks
        self.fixed = fixed  # (input, axis, size)
        self.same = same  # (input, axis) equals (input, axis)
        self.bounds = bounds  # (input, axis, lowest, highest)

    @classmethod
    def of(cls, program: Any, module: Any, input_names: Sequence[str], dict_input: bool) -> ShapeRules | None:
        """The rules over the signature's inputs; None when they do not fill the program's placeholders."""
        from inferloop.registry.exported import user_input_shapes

        order = placeholder_order(module, input_names, dict_input)
        shapes = user_input_shapes(program)
        if order is None or len(order) != len(shapes):
            return None
        ranks = [0] * len(shapes)
        fixed: list[tuple[int, int, int]] = []
        same: list[tuple[int, int, int, int]] = []
        bounds: list[tuple[int, int, int, float]] = []
        first: dict[Any, tuple[int, int]] = {}  # symbol -> the first axis that carries it
        for i, shape in zip(order, shapes, strict=True):
            ranks[i] = len(shape)
            for axis, size in enumerate(shape):
                if isinstance(size, int):
                    fixed.append((i, axis, size))
                    continue
                expr = size.node.expr
                if not expr.is_Symbol:
                    continue
                if expr in first:
                    same.append((i, axis, *first[expr]))
                    continue
                first[expr] = (i, axis)
                span = program.range_constraints.get(expr)
                if span is not None:
                    # finite bounds are sympy Integers; torch's int_oo (unbounded) says it is finite and integer
                    low = int(span.lower) if span.lower.is_Integer and int(span.lower) > 2 else 0
                    high = float(int(span.upper)) if span.upper.is_Integer else float("inf")
                    if low or high != float("inf"):
                        bounds.append((i, axis, low, high))
        return cls(input_names, ranks, fixed, same, bounds)

    def broken(self, inputs: Sequence[Any]) -> str | None:
        """None when `inputs` (in signature order) keep every rule, else what the first broken one says."""
        shapes = [t.shape for t in inputs]
        names = self.names
        for i, rank in enumerate(self.ranks):
            if len(shapes[i]) != rank:
                return f"input {names[i]!r} has {len(shapes[i])} axes; the program takes {rank}"
        for i, axis, size in self.fixed:
            if shapes[i][axis] != size:
                return f"input {names[i]!r} axis {axis} is {shapes[i][axis]}; the program takes {size}"
        for i, axis, j, other in self.same:
            if shapes[i][axis] != shapes[j][other]:
                return (f"input {names[i]!r} axis {axis} is {shapes[i][axis]}, but the program needs it equal to "
                        f"input {names[j]!r} axis {other} ({shapes[j][other]})")
        for i, axis, low, high in self.bounds:
            if not low <= shapes[i][axis] <= high:
                return (f"input {names[i]!r} axis {axis} is {shapes[i][axis]}; the program takes "
                        + (f"{low} to {int(high)}" if high != float("inf") else f"at least {low}"))
        return None
