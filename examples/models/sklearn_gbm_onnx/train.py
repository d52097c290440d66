"""The training entrypoint for `policy.yaml` (`examples.models.sklearn_gbm_onnx.train:fit`): a
scikit-learn gradient-boosted classifier, converted to ONNX with skl2onnx (zipmap off, so the
probabilities are one tensor) and returned as the model to serve.

The ONNX model has one input, `features` (FP32 [n, 30], the policy's features in order), and two
outputs, `label` and `probabilities` [n, 2]; `prediction_output` tells the trainer to judge the
probabilities (for `kind: binary`, their second column: the probability of class 1, malignant).
"""

from __future__ import annotations

import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier

from inferloop.trainer import TrainingContext, TrainResult


def fit(ctx: TrainingContext) -> TrainResult:
    p = ctx.params
    y = ctx.y.astype(np.int64)
    clf = GradientBoostingClassifier(n_estimators=p.get("estimators", 100), max_depth=p.get("max_depth", 3),
                                     learning_rate=p.get("learning_rate", 0.1), random_state=ctx.seed)
    clf.fit(ctx.x, y)
    ctx.log_metric("train_accuracy", float(clf.score(ctx.x, y)))
    model = to_onnx(clf, initial_types=[("features", FloatTensorType([None, len(ctx.features)]))],
                    options={id(clf): {"zipmap": False}}, target_opset=17)
    return TrainResult(model, inputs={"features": ctx.features}, prediction_output="probabilities",
                       tags=["example:sklearn-gbm-onnx"])
