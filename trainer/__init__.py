"""inferloop trainer: the training run as the build step.

policy (registry.policy) → data window (data) → training (fit) → holdout metrics (metrics) →
two gates (gates) → register + promote (pipeline) → notify (notify); launched in-process or under
torchrun (launcher, worker); retraining as an HTTP service (service, jobs, runner, schedule).
"""
