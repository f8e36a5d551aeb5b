"""Console table and docs/benchmarks.md: per-target figures and the project's goal ratios."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from bench.access import workload as access
from bench.harness.outcome import Outcomes
from bench.harness.sampling import MIB
from bench.harness.workload import WORKLOADS, Result
from bench.qido import report as qido_report
from bench.wado import report as wado_report


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
            return _fmt(value, self.unit), "met"
        gap = self.threshold - value if self.at_least else value - self.threshold
        return _fmt(value, self.unit), f"MISSED by {_fmt(gap, self.unit)}"

    def skipped(self, outcomes: Outcomes) -> str:
        """Why the targets this goal names were skipped (e.g. a missing Orthanc plugin), if they were."""
        return "; ".join(
            f"{name} skipped ({o.skipped.splitlines()[0]})"
            for name, o in outcomes.items()
            if o.skipped and re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", self.label)
        )

    @property
    def goal_text(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {_fmt(self.threshold, self.unit)}"


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value * 100:.0f}%"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "ms":
        return f"{value:.3f} ms" if abs(value) < 1 else f"{value:.2f} ms"
    return f"{value:.1f} {unit}"


def _ratio(workload: str, num: str, den: str, metric: str) -> Callable[[Outcomes], float | None]:
    def compute(outcomes: Outcomes) -> float | None:
        a = outcomes[num].valid(workload) if num in outcomes else None
        b = outcomes[den].valid(workload) if den in outcomes else None
        if a is None or b is None:
            return None
        bottom = getattr(b, metric)
        return getattr(a, metric) / bottom if bottom else None

    return compute


def _big_growth(outcomes: Outcomes) -> float | None:
    result = outcomes["ours"].valid("stow-big-body") if "ours" in outcomes else None
    return result.proc.app_growth / MIB if result else None


GOALS = (
    Goal(
        "STOW 0.5 MB: ours / orthanc-postgresql inst/s",
        _ratio("stow-ct512", "ours", "orthanc-postgresql", "inst_per_s"),
        2.0,
        True,
        "x",
    ),
    Goal(
        "STOW 0.5 MB: ours / orthanc-sqlite inst/s",
        _ratio("stow-ct512", "ours", "orthanc-sqlite", "inst_per_s"),
        1.5,
        True,
        "x",
    ),
    Goal(
        "STOW 0.5 MB: ours MB/s / sink MB/s",
        _ratio("stow-ct512", "ours", "sink", "mb_per_s"),
        0.70,
        True,
        "%",
    ),
    Goal(
        "STOW 9 KB: ours / orthanc-sqlite inst/s",
        _ratio("stow-small64", "ours", "orthanc-sqlite", "inst_per_s"),
        2.0,
        True,
        "x",
    ),
    Goal("Big streamed STOW body: ours RSS growth", _big_growth, 64.0, False, "MiB"),
    Goal(
        "QIDO 20k: query types meeting their goals (see QIDO section)",
        qido_report.share_met("qido-20k"),
        1.0,
        True,
        "%",
    ),
    Goal(
        "QIDO 1M: query types meeting p95 ≤ 25 ms (see QIDO section)",
        qido_report.share_met("qido-1m"),
        1.0,
        True,
        "%",
    ),
    Goal(
        "WADO whole study: ours / orthanc-sqlite MB/s",
        wado_report.study_ratio("orthanc-sqlite"),
        wado_report.STUDY_RATIO,
        True,
        "x",
        "wado-study",
    ),
    Goal(
        "WADO study metadata: ours p50",
        wado_report.metadata_p50,
        wado_report.METADATA_P50_MS,
        False,
        "ms",
        "wado-metadata",
    ),
    Goal(
        "WADO study metadata: orthanc-sqlite p50 / ours p50",
        wado_report.metadata_speedup,
        wado_report.METADATA_SPEEDUP,
        True,
        "x",
        "wado-metadata",
    ),
    *(
        Goal(
            f"WADO frame, {wado_report.FRAME_LABELS[key]}: ours p50",
            wado_report.frame_p50(key),
            wado_report.FRAME_P50_MS,
            False,
            "ms",
            "wado-frames",
        )
        for key in wado_report.FRAME_KEYS
    ),
    Goal(
        "WADO 2 GiB study to a slow client: ours RSS growth",
        wado_report.big_growth,
        wado_report.BIG_GROWTH_MIB,
        False,
        "MiB",
        "wado-big",
    ),
    *(
        Goal(
            f"Access: QIDO p50 overhead, {label} (vs. no access layer)",
            access.overhead(variant),
            access.TARGET_MS,
            False,
            "ms",
            access.WORKLOAD,
        )
        for variant, label in access.VARIANTS.items()
    ),
)

COLUMNS = (
    "target",
    "inst/s",
    "MB/s",
    "p50 ms",
    "p95 ms",
    "peak RSS MiB",
    "RSS growth MiB",
    "aux peak MiB",
    "CPU ms/inst",
    "other CPU",
    "status",
)


def result_row(target: str, result: Result | None, skipped: str | None) -> list[str]:
    if result is None:
        return [target, *["-"] * (len(COLUMNS) - 2), "skipped" if skipped else "not run"]
    proc = result.proc
    status = f"{len(result.errors)} errors" if result.errors else "ok"
    if result.warnings:
        status += f", {len(result.warnings)} warnings"
    return [
        target,
        f"{result.inst_per_s:.1f}",
        f"{result.mb_per_s:.1f}",
        f"{result.latency(50) * 1000:.0f}",
        f"{result.latency(95) * 1000:.0f}",
        f"{proc.app_peak / MIB:.0f}",
        f"{proc.app_growth / MIB:.0f}",
        f"{proc.aux_peak / MIB:.0f}" if proc.aux_peak else "-",
        f"{result.cpu_ms_per_instance:.2f}",
        f"{proc.foreign_cpu * 100:.0f}%",
        status,
    ]


def _sections(outcomes: Outcomes) -> list[tuple[str, list[list[str]]]]:
    sections = []
    for workload in WORKLOADS:
        if workload.suite != "stow":
            continue  # QIDO has its own tables (qido_report)
        rows = [
            result_row(o.target, o.results.get(workload.key), o.skipped)
            for o in outcomes.values()
            if workload.applies(o.target)
        ]
        if any(row[-1] not in ("skipped", "not run") for row in rows):
            sections.append((f"{workload.title} [{workload.key}]", rows))
    return sections


NOISY = 0.10  # other processes using more than this share of the CPUs make a figure suspect


def disturbed(outcomes: Outcomes) -> list[str]:
    """Human-readable list of results measured while something else was busy on the machine."""
    return [
        f"{o.target} {r.workload} ({r.proc.foreign_cpu:.0%})"
        for o in outcomes.values()
        for r in o.results.values()
        if r.proc.foreign_cpu > NOISY and r.proc.wall >= 0.5  # shorter windows are below tick resolution
    ]


def _disturbed_note(outcomes: Outcomes) -> list[str]:
    noisy = disturbed(outcomes)
    if not noisy:
        return []
    return [
        f"WARNING: other processes used more than {NOISY:.0%} of the CPUs during: {', '.join(noisy)}. "
        "Those figures are low; rerun on a quiet machine."
    ]


def console_table(outcomes: Outcomes) -> str:
    lines: list[str] = []
    for title, rows in _sections(outcomes):
        widths = [max(len(r[i]) for r in [list(COLUMNS), *rows]) for i in range(len(COLUMNS))]
        lines += ["", title, "  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths, strict=True))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines += qido_report.console_lines(outcomes)
    lines += wado_report.console_lines(outcomes)
    lines += access.console_lines(outcomes)
    lines += ["", "Goals:"]
    for goal in GOALS:
        value, verdict = goal.evaluate(outcomes)
        if value == "n/a" and not _ran(goal, outcomes):
            continue
        lines.append(f"  {goal.label:<48} {value:>10}  (goal {goal.goal_text}): {verdict}")
    return "\n".join(lines + _disturbed_note(outcomes))


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def markdown(env: dict[str, str], outcomes: Outcomes, details: list[str]) -> str:
    out = ["# Benchmarks", "", "Generated by `python -m bench.run` (see `bench/`); do not edit by hand.", ""]
    out += [f"- **{k}**: {v}" for k, v in env.items()]
    out += ["", "## Goals", ""]
    out += _md_table(
        ["goal", "measured", "target", "verdict"],
        [[g.label, *_goal_cells(g, outcomes)] for g in GOALS if _ran(g, outcomes)],
    )
    out += ["", *_disturbed_note(outcomes)] if disturbed(outcomes) else []
    for title, rows in _sections(outcomes):
        out += ["", f"## {title}", "", *_md_table(list(COLUMNS), rows)]
    out += qido_report.markdown_lines(outcomes)
    out += wado_report.markdown_lines(outcomes, env)
    out += access.markdown_lines(outcomes, env.get("Access baseline (ours-noauth)", ""))
    out += ["", "## Targets", ""]
    for o in outcomes.values():
        if o.skipped:
            out.append(f"- **{o.target}**: skipped: {o.skipped.splitlines()[0]}")
            continue
        notes = ", ".join(f"{k} {v}" for k, v in o.notes.items())
        out.append(
            f"- **{o.target}**: stored-instance check: {o.stored_check}; {o.seconds:.0f} s"
            + (f"; {notes}" if notes else "")
        )
        for key, per_round in o.rounds.items():
            if len(per_round) > 1:
                unit = "requests/s" if key.startswith("wado") else "inst/s"
                out.append(
                    f"  - {key}: {unit} per round {', '.join(f'{v:.1f}' for v in per_round)} (median shown)"
                )
        for result in o.results.values():
            out += [f"  - {result.workload} error: {e}" for e in result.errors[:5]]
            out += [f"  - {result.workload} warning: {w}" for w in result.warnings[:3]]
    out += ["", "## Method", "", *details, ""]
    return "\n".join(out)


def _ran(goal: Goal, outcomes: Outcomes) -> bool:
    """Show a goal only if its suite ran (a QIDO-only run has no STOW goals, and vice versa)."""
    if goal.workload:
        return any(goal.workload in o.results for o in outcomes.values())
    prefix = {"QIDO": "qido", "WADO": "wado"}.get(goal.label.split(" ", 1)[0], "stow")
    return any(key.startswith(prefix) for o in outcomes.values() for key in o.results) or all(
        not o.results for o in outcomes.values()
    )


def _goal_cells(goal: Goal, outcomes: Outcomes) -> list[str]:
    value, verdict = goal.evaluate(outcomes)
    return [value, goal.goal_text, verdict]
