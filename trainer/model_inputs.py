"""From data columns to a model's inputs, and from its outputs to one prediction per row.

The same plan feeds the export's example inputs, the holdout run through the packaged artifact and
the drift reference; it is recorded in the version's params (`inputs`, `prediction_output`) so that a
later build can run this version on its own holdout for gate 2.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from inferloop.trainer.errors import TrainerError

if TYPE_CHECKING:
    import pyarrow as pa

    from inferloop.registry.manifest import InputSignature, VersionManifest
    from inferloop.registry.runnable import Runnable

CHUNK_ROWS = 8192


class ModelInput(msgspec.Struct, frozen=True):
    name: str
    columns: list[str]
    flat: bool  # one column as a 1-D input (an id), rather than a (rows, columns) matrix


class InputPlan(msgspec.Struct, frozen=True):
    """`inputs` empty: the tabular default, one FP32 matrix of every feature in the policy's order."""

    inputs: list[ModelInput] = []
    as_dict: bool = False  # the model takes one dict of named tensors
    prediction_output: str | None = None

    def params(self) -> dict[str, Any]:
        """What the manifest records (absent for the tabular default, which needs no plan)."""
        if not self.inputs and self.prediction_output is None:
            return {}
        return {"inputs": msgspec.to_builtins(self.inputs), "as_dict": self.as_dict,
                "prediction_output": self.prediction_output}

    @classmethod
    def recorded(cls, manifest: VersionManifest) -> InputPlan:
        params = manifest.lineage.params
        try:
            return msgspec.convert({k: params[k] for k in ("inputs", "as_dict", "prediction_output")
                                    if k in params}, cls)
        except msgspec.ValidationError as exc:
            raise TrainerError(f"{manifest.name} v{manifest.version}: recorded inputs are unreadable: {exc}") from None


def plan(declared: dict[str, str | list[str]] | None, features: list[str], model: Any,
         prediction_output: str | None) -> InputPlan:
    if declared is None:
        return InputPlan(prediction_output=prediction_output)
    if not isinstance(declared, dict) or not declared:
        raise TrainerError("TrainResult.inputs must map each model input's name to a column or a list of columns")
    inputs = []
    for name, columns in declared.items():
        flat = isinstance(columns, str)
        cols = [columns] if isinstance(columns, str) else list(columns)
        unknown = [c for c in cols if c not in features]
        if not cols or unknown:
            raise TrainerError(f"TrainResult.inputs[{name!r}] uses column(s) {unknown or cols} that are not in "
                               f"training.features ({', '.join(features)})")
        inputs.append(ModelInput(str(name), cols, flat))
    return InputPlan(inputs=inputs, as_dict=len(inputs) > 1 and _forward_arity(model) == 1,
                     prediction_output=prediction_output)


def _forward_arity(model: Any) -> int | None:
    forward = getattr(model, "forward", None)
    if forward is None:
        return None  # ONNX: inputs go by name anyway
    try:
        params = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def arrays(input_plan: InputPlan, table: pa.Table, x: np.ndarray) -> Any:
    """The model's inputs for these rows, as `example_inputs` takes them: one matrix, a tuple, or a dict."""
    if not input_plan.inputs:
        return x
    named = {i.name: _columns(table, i) for i in input_plan.inputs}
    return named if input_plan.as_dict else tuple(named.values())


def _columns(table: pa.Table, spec: ModelInput) -> np.ndarray:
    import pyarrow as pa

    missing = [c for c in spec.columns if c not in table.column_names]
    if missing:
        raise TrainerError(f"input {spec.name!r} needs column(s) {missing} that the data does not have")
    cols = [table.column(c) for c in spec.columns]
    integer = all(pa.types.is_integer(c.type) for c in cols)
    values = [np.asarray(c.to_numpy(), dtype=np.int64 if integer else np.float32) for c in cols]
    return values[0] if spec.flat else np.stack(values, axis=1)


def output_index(input_plan: InputPlan, signature: InputSignature) -> int:
    names = [t.name for t in signature.tensor_outputs()]
    if input_plan.prediction_output is None:
        return 0
    if input_plan.prediction_output not in names:
        raise TrainerError(f"prediction_output {input_plan.prediction_output!r} is not an output of the model "
                           f"(outputs: {', '.join(names)})")
    return names.index(input_plan.prediction_output)


def predictions(runnable: Runnable, inputs: list[np.ndarray], index: int, kind: str, output_name: str) -> np.ndarray:
    """One value per row from output `index`, run in chunks: the value (regression) or the probability of
    class 1 (binary; a two-column output gives it in its second column)."""
    rows = len(inputs[0])
    parts = []
    for start in range(0, rows, CHUNK_ROWS):
        out = np.asarray(runnable.run([a[start:start + CHUNK_ROWS] for a in inputs])[index])
        parts.append(_per_row(out, kind, output_name))
    pred = np.concatenate(parts) if parts else np.zeros(0)
    bad = int(np.count_nonzero(~np.isfinite(pred)))
    if bad:
        raise TrainerError(f"the model predicts NaN or infinity on {bad} of {rows} holdout rows (output "
                           f"{output_name!r}): nothing was registered")
    if kind == "binary" and rows and (pred.min() < 0 or pred.max() > 1):
        raise TrainerError(f"a binary model's output {output_name!r} must be the probability of class 1, in [0, 1]; "
                           f"it ranges over [{pred.min():.4g}, {pred.max():.4g}] on the holdout (end the model "
                           "with a sigmoid)")
    return pred


def _per_row(out: np.ndarray, kind: str, name: str) -> np.ndarray:
    flat = out.reshape(len(out), -1).astype(np.float64) if out.ndim else out.reshape(1, 1)
    if flat.shape[1] == 1:
        return flat[:, 0]
    if kind == "binary" and flat.shape[1] == 2:
        return flat[:, 1]
    raise TrainerError(f"output {name!r} has shape {list(out.shape)}: a {kind} model needs one value per row"
                       f"{' (or two class probabilities)' if kind == 'binary' else ''}; name the output to judge "
                       "with TrainResult(prediction_output=...)")
