"""bench/harness/goals.py, through the registry in bench/run.py: a skipped target is named with why."""

from __future__ import annotations

from bench.harness.outcome import Outcome
from bench.run import GOALS


def test_a_goal_names_the_skipped_target_it_needs() -> None:
    outcomes = {name: Outcome(name) for name in ("ours", "orthanc-sqlite", "orthanc-postgresql", "sink")}
    outcomes["orthanc-postgresql"].skipped = "orthanc-postgresql: plugin libOrthancPostgreSQLIndex.so missing"
    verdicts = {goal.label: goal.evaluate(outcomes)[1] for goal in GOALS}
    pg = verdicts["STOW 0.5 MB: ours / orthanc-postgresql inst/s"]
    assert pg == (
        "n/a: orthanc-postgresql skipped (orthanc-postgresql: plugin libOrthancPostgreSQLIndex.so missing)"
    )
    # A goal that does not need the skipped target does not blame it.
    assert "orthanc-postgresql" not in verdicts["STOW 0.5 MB: ours / orthanc-sqlite inst/s"]
