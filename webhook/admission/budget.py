"""Time in one admission request: the budget left before the apiserver gives up, and the
estimate of how long one scan takes (the "retry in about N s" of a pending denial)."""
from __future__ import annotations

import time
from typing import Callable

from ..scan.results import ScanResult


class Estimate:
    """How long one scan takes: a moving average of the scans this process waited for.
    It becomes the "retry in about N s" of a pending denial."""

    def __init__(self, seconds: float = 6.0, alpha: float = 0.3):
        self.seconds, self.alpha = seconds, alpha

    def observe(self, result: ScanResult) -> None:
        took = sum(result.timings.values()) if result.timings else 0.0
        if took > 0:
            self.seconds += self.alpha * (took - self.seconds)


class Budget:
    """The time left in this request: the apiserver's ?timeout= minus a margin for the answer."""

    def __init__(self, seconds: float, now: Callable[[], float] = time.monotonic):
        self.now = now
        self.deadline = now() + max(0.0, seconds)

    def left(self) -> float:
        return max(0.0, self.deadline - self.now())
