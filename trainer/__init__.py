"""inferloop trainer: the training run as the build step (imports `registry`)."""
