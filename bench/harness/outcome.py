"""What one target produced in a run, and how several rounds of it are combined."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.harness.workload import Result


@dataclass
class Outcome:
    target: str
    results: dict[str, Result] = field(default_factory=dict)
    skipped: str | None = None
    stored_check: str = "n/a"
    stored_ok: bool = True
    notes: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # start to stop, waiting for a quiet machine excluded
    waited: float = 0.0
    rounds: dict[str, list[float]] = field(default_factory=dict)  # workload -> inst/s of every round

    def valid(self, workload: str) -> Result | None:
        result = self.results.get(workload)
        return result if result is not None and not result.errors and self.stored_ok else None


Outcomes = dict[str, Outcome]


def merge_rounds(rounds: list[Outcome]) -> Outcome:
    """One outcome per target: for each workload the median round by inst/s (lower median if even).

    Rounds with errors or a failed storage check are not eligible; if none is, the first is kept so
    the failure still shows.
    """
    first = rounds[0]
    ran = [o for o in rounds if not o.skipped]
    merged = Outcome(
        first.target,
        skipped=first.skipped if not ran else None,
        stored_ok=all(o.stored_ok for o in ran),
        stored_check="; ".join(dict.fromkeys(o.stored_check for o in ran)) or first.stored_check,
        notes=(ran or rounds)[0].notes,
        seconds=sum(o.seconds for o in rounds),
        waited=sum(o.waited for o in rounds),
    )
    for key in dict.fromkeys(k for o in ran for k in o.results):
        results = [o.results[key] for o in ran if key in o.results]
        good = sorted((r for r in results if not r.errors), key=lambda r: r.inst_per_s)
        merged.results[key] = good[(len(good) - 1) // 2] if good else results[0]
        merged.rounds[key] = [r.inst_per_s for r in results]
    return merged
