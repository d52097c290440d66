"""A scikit-learn gradient-boosted classifier, exported to ONNX with skl2onnx and served on
onnxruntime (`pip install 'inferloop[onnx]' skl2onnx scikit-learn`). Outputs: `label` (INT64) and
`probabilities` (FP32 [n, classes]); convert with zipmap off so probabilities are a tensor.

    python examples/models/sklearn_gbm_onnx/model.py     # registers and promotes v1 in the default registry

Trained on data by the trainer instead (data.py, train.py and policy.yaml beside this file):

    python examples/models/sklearn_gbm_onnx/data.py
    inferloop train --policy examples/models/sklearn_gbm_onnx/policy.yaml
"""

from __future__ import annotations

import numpy as np

FEATURES = 6


def data(rows: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    return x, y


def build(seed: int = 0, estimators: int = 30):  # noqa: ANN201 - (classifier, onnx.ModelProto)
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingClassifier

    x, y = data(seed=seed)
    clf = GradientBoostingClassifier(n_estimators=estimators, random_state=seed).fit(x, y)
    model = to_onnx(clf, initial_types=[("features", FloatTensorType([None, FEATURES]))],
                    options={id(clf): {"zipmap": False}}, target_opset=17)
    return clf, model


def register(reg, name: str = "churn-gbm", seed: int = 0) -> int:  # noqa: ANN001 - a Registry
    _, model = build(seed)
    x, _ = data(seed=seed)
    with reg.track(name) as run:
        run.log_param("seed", seed)
        return run.register(model, example_inputs=x[:8], reference=x, output_kind="multiclass",
                            feature_names=[f"f{i}" for i in range(FEATURES)], tags=["example:sklearn-gbm-onnx"])


if __name__ == "__main__":
    from inferloop.registry import Registry
    from inferloop.registry.project_config import resolve_registry

    uri = resolve_registry()  # where `inferloop serve` looks: INFERLOOP_REGISTRY, .inferloop/config.json, default
    with Registry.open(uri) as registry:
        version = register(registry)
        registry.promote("churn-gbm", version, stage="production", reason="example")
        print(f"churn-gbm v{version} is in production in {uri}")
