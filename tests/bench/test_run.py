"""bench/run.py: the one registry of suites, and every bench module importable without the others."""

from __future__ import annotations

import importlib.util
import pkgutil

import bench
from bench.run import GOALS, SUITE_NAME, SUITES, WORKLOADS, parse_args


def test_the_registry_keeps_the_suite_and_workload_names() -> None:
    assert list(SUITES) == ["stow", "qido", "retrieve", "access", "orders"]
    assert [w.key for w in WORKLOADS] == [
        "stow-ct512", "stow-small64", "stow-big-body", "qido-20k", "qido-1m",
        "wado-study", "wado-metadata", "wado-frames", "wado-big", "access-qido",
        "orders-claim", "orders-commit", "orders-quiet", "orders-feed", "orders-1m",
    ]  # fmt: skip
    assert len(SUITE_NAME) == len(WORKLOADS)  # each workload in exactly one suite
    assert len({g.label for g in GOALS}) == len(GOALS)


def test_the_defaults_select_every_suite() -> None:
    args = parse_args([])
    assert args.suite == "stow,qido,retrieve,access,orders"
    assert args.workloads.split(",") == [w.key for w in WORKLOADS]


def test_every_module_is_found() -> None:
    names = [m.name for m in pkgutil.walk_packages(bench.__path__, "bench.")]
    wanted = {"bench.harness.report", "bench.qido.server", "bench.wado.goals", "bench.access.report"}
    assert wanted <= set(names)
    assert all(importlib.util.find_spec(name) is not None for name in names)
