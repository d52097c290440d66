"""inferloop trainer: the training run as the build step.

policy (inferloop.policy) → data window (data; synthetic data from synthetic) → spec → training (fit)
→ holdout metrics (metrics) → two gates (gates) → register, promote, notify (pipeline, notify) →
summary (report). Launched in-process or under torchrun (launcher, worker); retraining as an HTTP
service (app → service → runner, jobs, schedule). Commands in cli.
"""

from inferloop.trainer.context import TrainingContext, TrainResult

__all__ = ["TrainResult", "TrainingContext"]
