"""The built-in MLP as a training entrypoint like any user's (`inferloop.trainer.builtin:mlp`): the
trainer has one path, and this is the function it calls when a policy names no entrypoint."""

from __future__ import annotations

import msgspec

from inferloop.trainer.context import TrainingContext, TrainResult
from inferloop.trainer.errors import TrainerError
from inferloop.trainer.fit import DistInfo, MLPParams, fit


def mlp(ctx: TrainingContext) -> TrainResult:
    try:
        params = msgspec.convert(ctx.params, MLPParams)
    except msgspec.ValidationError as exc:
        raise TrainerError(f"training.params of the built-in MLP: {exc}") from None
    fitted = fit(params, ctx.kind, ctx.seed, ctx.x, ctx.y, device=ctx.device, progress=ctx.progress,
                 dist=DistInfo(rank=ctx.rank, world_size=ctx.world_size, local_rank=ctx.local_rank))
    return TrainResult(fitted.model, metrics={"train_loss": fitted.epoch_losses[-1]})
