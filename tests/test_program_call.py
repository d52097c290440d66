"""`ProgramCall`: a torch.export program served as its graph, without the per-call wrapper of
`ExportedProgram.module()`. Whatever the program's structure, the answers must be the wrapper's to the
bit, inputs that break the program's shape assumptions must be refused (as the request's fault), and
a program it cannot call this way must keep the wrapper. Real registry, real programs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from inferloop.registry import Registry
from inferloop.registry.program_call import ProgramCall, ShapeRules

from .gateway_harness import ThreadedGateway, settings_for
from .test_any_model import CNN, TABULAR, MaskedSequence


class TwoInTwoOut(nn.Module):
    """Two positional inputs, a BatchNorm (buffers), a constant tensor, a dict of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)
        self.norm = nn.BatchNorm1d(4)
        self.offset = torch.tensor([0.5, -0.5, 1.0, 2.0])  # neither a parameter nor a buffer: a lifted constant
        with torch.no_grad():
            self.norm.running_mean.fill_(0.3)
            self.norm.running_var.fill_(2.0)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.norm(self.a(left) + self.b(right)) + self.offset
        return {"score": h.sum(dim=1, keepdim=True), "hidden": torch.tanh(h)}


class PairOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.lin(x)
        return y.softmax(dim=1), y.argmax(dim=1)


class Counting(nn.Module):
    """Mutates a buffer on every forward: the graph returns the new value for the wrapper to store."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return self.lin(x)


def _inputs(example) -> list[np.ndarray]:  # noqa: ANN001 - a tensor, a tuple or a dict
    if isinstance(example, dict):
        return [t.numpy() for t in example.values()]
    return [t.numpy() for t in (example if isinstance(example, tuple) else (example,))]


CASES = {
    "tabular dict input": (TABULAR.build(2), TABULAR.example_inputs(16, 2), TABULAR.example_inputs(33, 9), {}),
    "1-d convolution": (CNN.build(1), CNN.example_inputs(8, 1), CNN.example_inputs(5, 4), {}),
    "two inputs, buffers, a constant, dict outputs": (
        TwoInTwoOut().eval(), (torch.randn(4, 3), torch.randn(4, 2)), (torch.randn(7, 3), torch.randn(7, 2)), {}),
    "tuple outputs of two dtypes": (PairOut().eval(), torch.randn(4, 5), torch.randn(1, 5), {}),
    "a dynamic sequence axis": (MaskedSequence(), (torch.randn(4, 3).half(), torch.ones(4, 3, dtype=torch.bool)),
                                (torch.randn(2, 6).half(), torch.rand(2, 6) > 0.5),
                                {"dynamic_axes": {"values": [1], "mask": [1]}}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_graph_answers_exactly_as_the_wrapper(tmp_path: Path, case: str) -> None:
    model, example, live, options = CASES[case]
    with Registry.open(f"file://{tmp_path / 'r'}") as reg:
        with reg.track("m") as run:
            version = run.register(model, example_inputs=example, output_kind="none", **options)
        runnable = reg.load_runnable("m", version)
        assert runnable.call is not None, "this program is called as its graph"
        wrapper = reg.load_runnable("m", version)
        wrapper.call = None  # the same program through ExportedProgram.module()
    for rows in (live, example):
        arrays = _inputs(rows)
        got, expected = runnable.run(arrays), wrapper.run(arrays)
        assert [g.dtype for g in got] == [e.dtype for e in expected]
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_array_equal(g, e)
    # and the names line up: the dict's outputs come back in the signature's order, not the graph's
    if case == "two inputs, buffers, a constant, dict outputs":
        left, right = (torch.from_numpy(a) for a in _inputs(live))
        with torch.no_grad():
            eager = model(left, right)
        names = runnable.output_names
        assert sorted(names) == ["hidden", "score"]
        for name, out in zip(names, runnable.run(_inputs(live)), strict=True):
            np.testing.assert_allclose(out, eager[name].numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "wrapper"])
def test_inputs_that_break_the_programs_guards_are_the_requests_fault(tmp_path: Path, graph: bool) -> None:
    """A mask one step longer than its sequence: refused before the graph runs (as torch's own input
    checks refuse it through the wrapper) as a ValueError, which the gateway answers with 400."""
    with Registry.open(f"file://{tmp_path / 'r'}") as reg:
        with reg.track("m") as run:
            version = run.register(MaskedSequence(), output_kind="none",
                                   example_inputs=(torch.randn(4, 3).half(), torch.ones(4, 3, dtype=torch.bool)),
                                   dynamic_axes={"values": [1], "mask": [1]})
        runnable = reg.load_runnable("m", version)
    if not graph:
        runnable.call = None
    with pytest.raises(ValueError, match="mask"):
        runnable.run([np.zeros((2, 4), np.float16), np.ones((2, 5), bool)])
    # a mask of one step broadcasts against any sequence: the graph would answer, wrongly
    with pytest.raises(ValueError, match="mask"):
        runnable.run([np.zeros((2, 4), np.float16), np.ones((2, 1), bool)])


def test_a_buffer_the_forward_updates_in_place_is_updated_as_through_the_wrapper(tmp_path: Path) -> None:
    with Registry.open(f"file://{tmp_path / 'r'}") as reg:
        with reg.track("m") as run:
            version = run.register(Counting().eval(), example_inputs=torch.randn(4, 4), output_kind="none")
        runnable = reg.load_runnable("m", version)
    assert runnable.call is not None
    x, before = np.ones((3, 4), np.float32), float(runnable.module.calls)
    np.testing.assert_array_equal(runnable.run([x])[0], runnable.run([x])[0])
    assert float(runnable.module.calls) == before + 2


def test_a_program_that_returns_its_buffer_updates_keeps_the_wrapper() -> None:
    """A functionalised program hands mutated buffers back as extra outputs for the wrapper to store:
    calling its graph directly would drop them, so it is not called that way."""
    program = torch.export.export(Counting().eval(), (torch.randn(4, 4),)).run_decompositions()
    assert any(spec.kind.name == "BUFFER_MUTATION" for spec in program.graph_signature.output_specs)
    assert ProgramCall.of(program, program.module(), ["x"], ["output"], dict_input=False) is None
    rules = ShapeRules.of(program, program.module(), ["x"], dict_input=False)
    assert rules is not None and rules.broken([np.zeros((4, 4))]) is None
    assert "axis 1 is 5" in rules.broken([np.zeros((4, 5))]) and "takes 2" in rules.broken([np.zeros(4)])


def test_the_gateway_answers_a_guard_failure_with_400_and_keeps_serving(tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'r'}"
    with Registry.open(uri) as reg:
        with reg.track("masked") as run:
            version = run.register(MaskedSequence(), output_kind="none",
                                   example_inputs=(torch.randn(4, 3).half(), torch.ones(4, 3, dtype=torch.bool)),
                                   dynamic_axes={"values": [1], "mask": [1]})
        reg.promote("masked", version, "production")

    def body(length: int, mask_length: int) -> dict:
        return {"inputs": [
            {"name": "values", "datatype": "FP16", "shape": [1, length], "data": [1.0] * length},
            {"name": "mask", "datatype": "BOOL", "shape": [1, mask_length], "data": [True] * mask_length}]}

    with ThreadedGateway(settings_for(uri, ["masked"], tmp_path)) as gw:
        gw.wait_serving("masked", version)
        bad = gw.client.post("/v2/models/masked/infer", json=body(3, 4))
        assert bad.status_code == 400, bad.text
        assert "mask" in bad.json()["error"] and "equal to input 'values' axis 1 (3)" in bad.json()["error"]
        good = gw.client.post("/v2/models/masked/infer", json=body(3, 3))
        assert good.status_code == 200 and good.json()["outputs"][0]["data"] == [1.0]
