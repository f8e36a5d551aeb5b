"""Goals: a figure the project promises, its threshold, and how the report judges it.

Each suite lists its own goals (``GOALS`` in its report module); ``bench/run.py`` strings them
together in suite order, and ``harness/report.py`` shows those whose suite ran.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from bench.harness.outcome import Outcomes


@dataclass(frozen=True)
class Goal:
    label: str
    value: Callable[[Outcomes], float | None]
    threshold: float
    at_least: bool  # True: value >= threshold is met; False: value <= threshold is met
    unit: str  # "x", "%", "ms" or "MiB"
    workload: str = ""  # shown only when this workload ran (default: any of the goal's suite)

    def evaluate(self, outcomes: Outcomes) -> tuple[str, str]:
        value = self.value(outcomes)
        if value is None or math.isnan(value):
            why = self.skipped(outcomes)
            return "n/a", f"n/a: {why}" if why else "n/a (target skipped, failed or had errors)"
        met = value >= self.threshold if self.at_least else value <= self.threshold
        if met:
            return fmt(value, self.unit), "met"
        gap = self.threshold - value if self.at_least else value - self.threshold
        return fmt(value, self.unit), f"MISSED by {fmt(gap, self.unit)}"

    def skipped(self, outcomes: Outcomes) -> str:
        """Why the targets this goal names were skipped (e.g. a missing Orthanc plugin), if they were."""
        return "; ".join(
            f"{name} skipped ({o.skipped.splitlines()[0]})"
            for name, o in outcomes.items()
            if o.skipped and re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", self.label)
        )

    @property
    def goal_text(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {fmt(self.threshold, self.unit)}"

    def ran(self, outcomes: Outcomes) -> bool:
        """Show a goal only if its suite ran (a QIDO-only run has no STOW goals, and vice versa)."""
        if self.workload:
            return any(self.workload in o.results for o in outcomes.values())
        prefix = {"QIDO": "qido", "WADO": "wado"}.get(self.label.split(" ", 1)[0], "stow")
        return any(key.startswith(prefix) for o in outcomes.values() for key in o.results) or all(
            not o.results for o in outcomes.values()
        )


def fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value * 100:.0f}%"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "ms":
        return f"{value:.3f} ms" if abs(value) < 1 else f"{value:.2f} ms"
    return f"{value:.1f} {unit}"


def ratio(workload: str, num: str, den: str, metric: str) -> Callable[[Outcomes], float | None]:
    """``metric`` of target ``num`` over that of ``den`` for ``workload`` (None unless both are valid)."""

    def compute(outcomes: Outcomes) -> float | None:
        a = outcomes[num].valid(workload) if num in outcomes else None
        b = outcomes[den].valid(workload) if den in outcomes else None
        if a is None or b is None:
            return None
        bottom = getattr(b, metric)
        return getattr(a, metric) / bottom if bottom else None

    return compute
