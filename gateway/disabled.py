"""The parts a gateway runs without: shadow traffic or drift monitoring switched off.

`DataPlane` always holds a shadow and a drift part per model; when the feature is off it holds one
of these, which answer the admin endpoints with a clear "disabled" error and do nothing else, so no
code path checks for `None`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from inferloop.gateway.errors import ModelNotReady


class ShadowDisabled:
    def __init__(self, model: str) -> None:
        self.model = model

    def _refuse(self) -> ModelNotReady:
        return ModelNotReady(f"shadow traffic is disabled on this gateway for {self.model!r}")

    @property
    def sample_rate(self) -> float:
        raise self._refuse()

    @sample_rate.setter
    def sample_rate(self, _rate: float) -> None:
        raise self._refuse()

    def report(self) -> dict[str, Any]:
        raise self._refuse()


class DriftDisabled:
    def __init__(self, model: str) -> None:
        self.model = model

    def state(self) -> dict[str, Any]:
        raise ModelNotReady(f"drift monitoring is disabled on this gateway for {self.model!r}")

    def bin_samples(self) -> Iterable[tuple[str, dict[str, str], float]]:
        return ()
