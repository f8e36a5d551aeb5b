"""What a suite hands the registry in ``bench/run.py``: its workloads, goals and report sections.

A suite is a package beside this one (``bench/stow``, ``bench/qido``, ...). The harness never imports
a suite: ``run.py`` builds one ``Suite`` per name and passes them down, so adding a suite is one entry
there and nothing here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from bench.harness.goals import Goal
from bench.harness.outcome import Outcomes
from bench.harness.workload import Context, Result, Workload

ProgressFn = Callable[[str, Result], list[str]]  # (target, result) -> console lines
SectionFn = Callable[[Outcomes, dict[str, str]], list[str]]  # (outcomes, environment) -> lines
NotesFn = Callable[[argparse.Namespace, Context, list[str]], list[str]]  # (args, ctx, workloads)
EnvFn = Callable[[argparse.Namespace, Context, list[str]], dict[str, str]]


def no_lines(*_: object) -> list[str]:
    return []


def no_env(*_: object) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Suite:
    workloads: tuple[Workload, ...]
    goals: tuple[Goal, ...] = ()
    progress: ProgressFn = no_lines  # after each workload of this suite (None extra: the STOW line)
    console: Callable[[Outcomes], list[str]] = no_lines  # the console tables, before the goals
    markdown: SectionFn = no_lines  # docs/benchmarks.md sections, after the goals
    environment: EnvFn = no_env  # corpus lines in the report's header
    method: NotesFn = no_lines  # the report's Method notes
