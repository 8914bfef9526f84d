"""The learning-rate schedule, and fitting a run into a wall-clock budget (``--time-budget``).

The pace of a run is timed over a window of steps that ends by the end of warm-up, where the
learning rate does not yet depend on the run's length. If the remaining steps would not fit
the budget at that pace, the run is shortened there and the linear decay is stretched over
the new length, so a shortened run still ends at the final learning rate; a run cut only
there is as deterministic as one started with ``--steps`` set to its length.

A shared machine can slow down later in a run, so the fit is checked again every window's
length of steps, at the mean pace since the window began (steady against a short stall). A
later cut cannot change the learning rates already used: the decay goes on from the current
factor and reaches its end at the new length (:meth:`WarmupLinearDecay.shorten`). Runs are
only ever shortened, never lengthened.
"""
from __future__ import annotations

from dataclasses import dataclass

PROBE_END_RANGE = (20, 60)  # the timing window ends at warm-up, clamped to this range of steps


@dataclass
class WarmupLinearDecay:
    """``LambdaLR`` factor: linear warm-up over ``warmup`` steps, then linear decay from 1 to
    ``min_ratio`` at step ``total`` (held there after). :meth:`shorten` lowers ``total`` mid-run.

    ``start`` / ``start_value``: where the decay (re)starts and its factor there; a cut made
    during the decay moves them (``LambdaLR`` saves these fields in its state, so a resumed
    run keeps them).
    """

    warmup: int
    total: int
    min_ratio: float
    start: int = 0
    start_value: float = 1.0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        first = max(self.start, self.warmup)
        frac = (step - first) / max(1, self.total - first)
        return max(self.min_ratio, self.start_value - (self.start_value - self.min_ratio) * frac)

    def shorten(self, total: int, *, at: int) -> None:
        """End the decay at step ``total``, cut at step ``at`` (the factor of step ``at`` is
        the next one used). A cut during warm-up stretches the whole decay; a cut during the
        decay goes on linearly from the factor it had reached, so no used rate changes."""
        if at > self.warmup:
            self.start, self.start_value = at, self(at)
        self.total = total


def probe_window(warmup: int, steps: int) -> tuple[int, int] | None:
    """Steps ``(first, last)`` between whose ends the pace is timed.

    ``last`` is the warm-up length clamped to :data:`PROBE_END_RANGE`; ``first = last // 4``
    skips the first steps' one-off costs (memory allocation, cold caches). None when the run is
    not longer than ``last``: there is nothing left to fit.
    """
    last = min(max(warmup, PROBE_END_RANGE[0]), PROBE_END_RANGE[1])
    return (last // 4, last) if steps > last else None


def fitted_steps(steps: int, *, done: int, elapsed: float, pace: float, budget: float) -> int:
    """The run length that fits ``budget`` seconds.

    Args:
        steps: the planned length. done: steps taken so far, in ``elapsed`` seconds.
        pace: seconds per remaining step. budget: seconds for the whole run.
    Returns:
        ``steps`` if it fits, else ``done`` plus the whole steps that fit the time left; never
        more than ``steps`` nor fewer than ``done``.
    """
    if pace <= 0 or budget <= 0:
        return steps
    fit = done + int(max(0.0, budget - elapsed) // pace)
    return max(done, min(steps, fit))


__all__ = ["PROBE_END_RANGE", "WarmupLinearDecay", "fitted_steps", "probe_window"]
