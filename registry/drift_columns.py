"""What drift watches for a version: the columns live traffic is binned into, computed the same way
at registration (reference statistics) and in the gateway (live counts).

- a tabular model (one FP32 input of named features): one column per feature;
- any other model: per input, each row's mean and its L2 norm (over every non-batch axis), named
  `<input>:mean` and `<input>:norm`, a cheap summary that moves when the inputs do;
- every model: its first output's first column, named `output:<name>`, against the predictions on
  the reference rows, so a model whose outputs move is seen even when no input column is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inferloop.registry.manifest import InputSignature

OUTPUT_PREFIX = "output:"


def is_tabular(signature: InputSignature) -> bool:
    inputs = signature.tensor_inputs()
    return bool(signature.features) and len(inputs) == 1 and inputs[0].datatype == "FP32" \
        and inputs[0].shape == [-1, len(signature.features)]


def input_columns(signature: InputSignature) -> list[str]:
    if is_tabular(signature):
        return [f.name for f in signature.features]
    return [f"{t.name}:{stat}" for t in signature.tensor_inputs() for stat in ("mean", "norm")]


def output_column(signature: InputSignature) -> str:
    return OUTPUT_PREFIX + signature.tensor_outputs()[0].name


def input_matrix(signature: InputSignature, arrays: Sequence[np.ndarray], tabular: bool) -> np.ndarray:
    """The input columns of a batch, (rows, columns) float64."""
    if tabular:
        return np.asarray(arrays[0], dtype=np.float64)
    parts = []
    for array in arrays:
        flat = np.asarray(array, dtype=np.float64).reshape(len(array), -1)
        parts += [flat.mean(axis=1), np.sqrt((flat * flat).sum(axis=1))]
    return np.stack(parts, axis=1)


def output_values(outputs: np.ndarray) -> np.ndarray:
    """The first column of a batch's first output, float64."""
    return np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)[:, 0]
