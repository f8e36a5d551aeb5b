"""Access overhead: the report section and the goals (p50 of each variant minus the baseline's)."""

from __future__ import annotations

from collections.abc import Callable

from bench.access.workload import (
    BASELINE,
    LIMIT,
    PROBES,
    TARGET_MS,
    VARIANTS,
    WORKLOAD,
    AccessDetail,
    details,
)
from bench.harness.goals import Goal
from bench.harness.outcome import Outcomes


def _detail(outcomes: Outcomes, target: str) -> AccessDetail | None:
    outcome = outcomes.get(target)
    return details(outcome.valid(WORKLOAD)) if outcome is not None else None


def overhead(variant: str) -> Callable[[Outcomes], float | None]:
    """p50(variant) - p50(baseline), ms."""

    def compute(outcomes: Outcomes) -> float | None:
        a, b = _detail(outcomes, variant), _detail(outcomes, BASELINE)
        return a.p("qido", 50) - b.p("qido", 50) if a and b else None

    return compute


def _verdict(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value <= TARGET_MS:
        return f"met ({TARGET_MS - value:.3f} ms to spare)"
    return f"MISSED by {value - TARGET_MS:.3f} ms"


def console_lines(outcomes: Outcomes) -> list[str]:
    lines = []
    for target, label in [(BASELINE, "no access layer (baseline)"), *VARIANTS.items()]:
        d = _detail(outcomes, target)
        if d is None:
            continue
        extra = ""
        if target != BASELINE:
            value = overhead(target)(outcomes)
            extra = f", overhead {value:+.3f} ms: {_verdict(value)}" if value is not None else ""
        lines.append(
            f"  access {target:<12} {label:<28} QIDO p50 {d.p('qido', 50):.3f} ms, "
            f"p95 {d.p('qido', 95):.3f} ms, /healthz p50 {d.p('healthz', 50):.3f} ms{extra}"
        )
    return ["", "Access overhead (QIDO p50):", *lines] if lines else []


def markdown_lines(outcomes: Outcomes, env: dict[str, str]) -> list[str]:
    baseline_rev = env.get("Access baseline (ours-noauth)", "")
    rows = []
    for target, label in [(BASELINE, "no access layer (baseline)"), *VARIANTS.items()]:
        outcome = outcomes.get(target)
        if outcome is None or (not outcome.skipped and WORKLOAD not in outcome.results):
            continue  # the access suite did not run (e.g. --suite orders)
        d = _detail(outcomes, target)
        if d is None:
            result = outcome.results.get(WORKLOAD)
            failed = f"{len(result.errors)} errors" if result and result.errors else "not run"
            why = outcome.skipped or failed
            rows.append([target, label, "-", "-", "-", "-", "-", why.splitlines()[0]])
            continue
        value = overhead(target)(outcomes) if target != BASELINE else None
        rows.append(
            [
                target,
                label + (f" ({outcome.notes['source']})" if "source" in outcome.notes else ""),
                f"{d.p('qido', 50):.3f}",
                f"{d.p('qido', 95):.3f}",
                f"{d.p('healthz', 50):.3f}",
                str(len(d.qido)),
                f"{value:+.3f}" if value is not None else "-",
                _verdict(value) if target != BASELINE else "baseline",
            ]
        )
    if not rows:
        return []
    base = _detail(outcomes, BASELINE)
    example = base.query if base else next((d.query for t in VARIANTS if (d := _detail(outcomes, t))), "")
    header = [
        "target",
        "access layer",
        "QIDO p50 ms",
        "p95 ms",
        "/healthz p50 ms",
        "requests",
        "p50 overhead ms",
        f"goal ≤ {TARGET_MS} ms",
    ]
    out = ["", "## Access overhead", ""]
    out += [
        "Auth plus rate limiting on QIDO p50 (goal: at most "
        f"{TARGET_MS} ms). Same query, same corpus, same run: `GET /dicomweb{example}` "
        f"(one of {PROBES} PatientIDs in turn, at most {LIMIT} results) on the QIDO 20k corpus "
        "loaded by STOW, "
        "sequential over one keep-alive connection. Baseline: ours from the commit just before the access "
        f"layer{f' ({baseline_rev})' if baseline_rev else ''}, which has no token guard, limiter or audit "
        "trail; no in-process switch exists to turn them off. The variants send a valid bearer token "
        "(client credentials, dev client) and every answer must carry a `RateLimit` header (the limiter "
        "counted it; the limit is 1e9 per window, never reached). Overhead = variant p50 - baseline p50; "
        "it also holds the per-request audit record and any other change between the two commits "
        "on this path. `/healthz` (unguarded) is the HTTP floor of each server.",
        "",
    ]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    sample = next((d.rate_header for t in VARIANTS if (d := _detail(outcomes, t)) and d.rate_header), "")
    if sample:
        out += ["", f"A `RateLimit` header as answered: `{sample}`."]
    return out


GOALS = tuple(
    Goal(
        f"Access: QIDO p50 overhead, {label} (vs. no access layer)",
        overhead(variant),
        TARGET_MS,
        False,
        "ms",
        WORKLOAD,
    )
    for variant, label in VARIANTS.items()
)
