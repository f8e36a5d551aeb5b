"""WADO-RS retrieve goals: the values the report's Goals table judges, and the WADO section's own rows."""

from __future__ import annotations

import math
from collections.abc import Callable

from bench.harness.goals import Goal
from bench.harness.outcome import Outcomes
from bench.harness.sampling import MIB
from bench.wado.measure import Measure, WadoDetail, details

TARGETS = ("ours", "orthanc-sqlite", "orthanc-postgresql")
WORKLOAD_KEYS = ("wado-study", "wado-metadata", "wado-frames", "wado-big")
BASELINE = "orthanc-sqlite"
STUDY_RATIO = 1.2  # ours MB/s >= 1.2x orthanc-sqlite
METADATA_P50_MS = 10.0
METADATA_SPEEDUP = 6.0  # orthanc-sqlite p50 / ours p50
FRAME_P50_MS = 3.0
BIG_GROWTH_MIB = 64.0
FRAME_KEYS = ("ct", "mf-native", "mf-rle", "mf-j2k")
FRAME_LABELS = {
    "ct": "CT 512x512, frame 1",
    "mf-native": "120-frame native, middle frame",
    "mf-rle": "120-frame RLE, middle frame",
    "mf-j2k": "120-frame JPEG 2000, middle frame",
}


def detail(outcomes: Outcomes, target: str, workload: str) -> WadoDetail | None:
    outcome = outcomes.get(target)
    if outcome is None or not outcome.stored_ok:
        return None
    return details(outcome.results.get(workload))


def measure(outcomes: Outcomes, target: str, workload: str, key: str) -> Measure | None:
    """The measure if it is sound (answered, every response checked out), else None."""
    d = detail(outcomes, target, workload)
    m = d.measures.get(key) if d is not None else None
    return m if m is not None and m.ok else None


# ---------------------------------------------------------------------------
# Goal values (GOALS)


def study_ratio(den: str) -> Callable[[Outcomes], float | None]:
    def compute(outcomes: Outcomes) -> float | None:
        a = measure(outcomes, "ours", "wado-study", "study")
        b = measure(outcomes, den, "wado-study", "study")
        return a.mb_per_s / b.mb_per_s if a and b and b.mb_per_s else None

    return compute


def metadata_p50(outcomes: Outcomes) -> float | None:
    m = measure(outcomes, "ours", "wado-metadata", "metadata")
    return m.latency(50) if m else None


def metadata_speedup(outcomes: Outcomes) -> float | None:
    a = measure(outcomes, "ours", "wado-metadata", "metadata")
    b = measure(outcomes, BASELINE, "wado-metadata", "metadata")
    return b.latency(50) / a.latency(50) if a and b and a.latency(50) else None


def frame_p50(key: str) -> Callable[[Outcomes], float | None]:
    def compute(outcomes: Outcomes) -> float | None:
        m = measure(outcomes, "ours", "wado-frames", key)
        return m.latency(50) if m else None

    return compute


def big_growth(outcomes: Outcomes) -> float | None:
    m = measure(outcomes, "ours", "wado-big", "big")
    return m.proc.app_growth / MIB if m and m.proc else None


# ---------------------------------------------------------------------------
# Cells


def measured_targets(outcomes: Outcomes, workload: str) -> list[tuple[str, WadoDetail]]:
    out = []
    for t in TARGETS:
        outcome = outcomes.get(t)
        d = details(outcome.results.get(workload)) if outcome is not None else None
        if d is not None:
            out.append((t, d))
    return out


def verdict(value: float | None, threshold: float, at_least: bool, unit: str) -> str:
    """'met' or 'missed by X' (how far from the threshold), 'n/a' when not measured."""
    if value is None or math.isnan(value):
        return "n/a"
    met = value >= threshold if at_least else value <= threshold
    if met:
        return "met"
    gap = threshold - value if at_least else value - threshold
    if unit == "x":
        return f"missed by {gap:.2f}x ({value / threshold:.0%} of the target)"
    return f"missed by {gap:.1f} {unit}"


def goal_rows(outcomes: Outcomes) -> list[list[str]]:
    """(goal, measured, target, verdict) for the WADO section, for the workloads that ran."""
    specs: list[tuple[str, str, float | None, float, bool, str]] = [
        (
            "wado-study",
            f"Whole-study retrieve MB/s: ours / {BASELINE}",
            study_ratio(BASELINE)(outcomes),
            STUDY_RATIO,
            True,
            "x",
        ),
        (
            "wado-metadata",
            "Study metadata (100 instances): ours p50",
            metadata_p50(outcomes),
            METADATA_P50_MS,
            False,
            "ms",
        ),
        (
            "wado-metadata",
            f"Study metadata p50: {BASELINE} / ours (times faster)",
            metadata_speedup(outcomes),
            METADATA_SPEEDUP,
            True,
            "x",
        ),
        *(
            (
                "wado-frames",
                f"Frame, {FRAME_LABELS[k]}: ours p50",
                frame_p50(k)(outcomes),
                FRAME_P50_MS,
                False,
                "ms",
            )
            for k in FRAME_KEYS
        ),
        (
            "wado-big",
            "2 GiB study to a slow client: ours RSS growth",
            big_growth(outcomes),
            BIG_GROWTH_MIB,
            False,
            "MiB",
        ),
    ]
    rows = []
    for workload, label, value, threshold, at_least, unit in specs:
        if not measured_targets(outcomes, workload):
            continue
        shown = "n/a" if value is None or math.isnan(value) else fmt(value, unit)
        target = f"{'≥' if at_least else '≤'} {fmt(threshold, unit)}"
        rows.append([label, shown, target, verdict(value, threshold, at_least, unit)])
    return rows


def fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "ms":
        return f"{value:.2f} ms"
    return f"{value:.1f} {unit}"


GOALS = (
    Goal(
        "WADO whole study: ours / orthanc-sqlite MB/s",
        study_ratio("orthanc-sqlite"),
        STUDY_RATIO,
        True,
        "x",
        "wado-study",
    ),
    Goal("WADO study metadata: ours p50", metadata_p50, METADATA_P50_MS, False, "ms", "wado-metadata"),
    Goal(
        "WADO study metadata: orthanc-sqlite p50 / ours p50",
        metadata_speedup,
        METADATA_SPEEDUP,
        True,
        "x",
        "wado-metadata",
    ),
    *(
        Goal(
            f"WADO frame, {FRAME_LABELS[key]}: ours p50",
            frame_p50(key),
            FRAME_P50_MS,
            False,
            "ms",
            "wado-frames",
        )
        for key in FRAME_KEYS
    ),
    Goal(
        "WADO 2 GiB study to a slow client: ours RSS growth",
        big_growth,
        BIG_GROWTH_MIB,
        False,
        "MiB",
        "wado-big",
    ),
)
