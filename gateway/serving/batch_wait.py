"""`BatchWait`: whether holding a batch back for company pays, measured rather than configured.

A batch costs a fixed part (the hand-off to the device thread, kernel launches, Python around the
forward) plus a part per row. Waiting `w` before running lets the rows that arrive meanwhile share
the fixed part instead of paying it again in a batch of their own; it costs every queued row `w` of
latency. So the batcher waits only when, by its own measurements,

- at least one more row is expected within the wait: the rate at which rows arrived *while a
  forward was in flight* (a single sequential client sends nothing then, so it never waits), times
  the wait, is at least one; and
- the wait is no longer than the fixed cost it saves, and never longer than `max_delay_ms`.

The fixed and per-row costs come from an exponentially weighted least-squares fit of forward time
against batch rows, so they follow the model, the device and the machine's load. The same fit
predicts a batch's forward time, which decides whether it runs on the event loop (see the batcher).
A new version starts a new fit (`reset`): another model's costs say nothing about this one's.
"""

from __future__ import annotations


class BatchWait:
    def __init__(self, max_wait_s: float, half_life: float = 64.0) -> None:
        self.max_wait_s = max_wait_s
        self._keep = 0.5 ** (1.0 / half_life)  # weight kept per new observation
        # exponentially weighted sums for the fit  seconds ≈ fixed + per_row · rows
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self.fixed_s = 0.0
        self.per_row_s = 0.0
        self.arrival_rows_per_s = 0.0
        self.observations = 0

    def reset(self) -> None:
        """Forget the cost fit (the model changed); the arrival rate is the load's, so it stays."""
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self.fixed_s = self.per_row_s = 0.0
        self.observations = 0

    def predict(self, rows: int) -> float:
        """Expected forward seconds for a batch of `rows` (inf before any measurement). With no spread
        of batch sizes yet, time is taken as proportional to rows beyond the sizes seen: an upper
        bound, since part of it is fixed."""
        if self.observations == 0:
            return float("inf")
        if self.per_row_s == 0.0:
            mean_x = self._x / self._w
            return self.fixed_s * max(1.0, rows / mean_x)
        return self.fixed_s + self.per_row_s * rows

    def observe(self, rows: int, seconds: float, rows_arrived_meanwhile: int) -> None:
        """After each forward: its size and time, and how many rows were queued while it ran."""
        k = self._keep
        self.observations += 1
        x, y = float(rows), seconds
        self._w = self._w * k + 1.0
        self._x = self._x * k + x
        self._y = self._y * k + y
        self._xx = self._xx * k + x * x
        self._xy = self._xy * k + x * y
        mean_x, mean_y = self._x / self._w, self._y / self._w
        var_x = self._xx / self._w - mean_x * mean_x
        if var_x > 1e-9:
            slope = max(0.0, (self._xy / self._w - mean_x * mean_y) / var_x)
            self.per_row_s = slope
            self.fixed_s = max(0.0, mean_y - slope * mean_x)
        else:  # every batch had the same size so far: all of the time counts as fixed
            self.per_row_s, self.fixed_s = 0.0, mean_y
        rate = rows_arrived_meanwhile / seconds if seconds > 0 else 0.0
        self.arrival_rows_per_s = self.arrival_rows_per_s * k + rate * (1.0 - k)

    def seconds(self) -> float:
        """How long the next batch may wait for company (0: run now)."""
        wait = min(self.max_wait_s, self.fixed_s)
        if wait <= 0.0 or self.arrival_rows_per_s * wait < 1.0:
            return 0.0
        return wait

    def describe(self) -> dict[str, float]:
        return {"fixed_us": round(self.fixed_s * 1e6, 1), "per_row_us": round(self.per_row_s * 1e6, 3),
                "arrival_rows_per_s_in_flight": round(self.arrival_rows_per_s, 1),
                "next_wait_us": round(self.seconds() * 1e6, 1)}
