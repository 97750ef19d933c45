"""Shared test set-up: markers by directory, and how `make test` spreads tests over processes.

Tests under tests/integration/ are marked `integration`, those under tests/reliability/
`reliability`. `make test` runs the tests that need a broker in two phases:

1. everything not marked `alone`, in several pytest-xdist processes (most of these tests
   wait on a broker, a rebalance or a worker, not on the CPU). The scheduler below keeps
   the tests of a file with a module-scoped fixture (a three-node cluster, a SASL broker, a
   server) on one process, so the fixture starts once, and hands out the longest tests
   first (from tests/durations.json), so no process starts a five-minute test last;
2. the tests marked `alone`, one at a time: they assert a time or a throughput (a 15 s
   promise, a throughput ratio, a stall bound), which a busy machine would make flaky.

`TEST_DURATIONS_FILE=PATH make test` records each test's seconds (set-up, call and
tear-down) in PATH and its CPU seconds in PATH's NAME.cpu.json; copy a full run's PATH to
tests/durations.json when the suite's shape changes.
"""

from __future__ import annotations

import json
import os
import resource
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DURATIONS = Path(__file__).with_name("durations.json")
_UNKNOWN_S = 5.0  # a test not in tests/durations.json yet


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "reliability" in parts:
            item.add_marker(pytest.mark.reliability)
    _check_module_fixtures_share_a_process(items)


def _one_process(nodeid: str) -> bool:
    """True if the file's tests share a module-scoped fixture (see ONE_PROCESS)."""
    return nodeid.split("::", 1)[0] in ONE_PROCESS


# Files whose tests share a module-scoped fixture (or, for test_avro_worker, the session's
# Schema Registry), so they run on one xdist process: a fixture started on each of four
# processes would cost four clusters, brokers, registries or servers.
ONE_PROCESS = frozenset(
    {
        "tests/doors/test_go_client.py",
        "tests/doors/test_grpc.py",
        "tests/doors/test_http.py",
        "tests/doors/test_limits.py",
        "tests/doors/test_mistakes.py",
        "tests/doors/test_tritonclient.py",
        "tests/doors/test_typed.py",
        "tests/integration/test_avro_worker.py",  # the only user of the session's registry
        "tests/integration/test_import.py",
        "tests/integration/test_producers.py",
        "tests/integration/test_sasl.py",
        "tests/reliability/test_cluster.py",
        "tests/unit/test_example_models.py",
        "tests/unit/test_importer_columns.py",
        "tests/unit/test_importer_keras.py",
        "tests/unit/test_importer_models.py",
        "tests/unit/test_inference.py",
    }
)


def _check_module_fixtures_share_a_process(items: list[pytest.Item]) -> None:
    """Fail the collection if a file uses a module-scoped fixture but is not in ONE_PROCESS:
    its fixture would start once per process the file's tests land on."""
    missing = set()
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None or _one_process(item.nodeid):
            continue
        if any(d.scope == "module" for defs in info.name2fixturedefs.values() for d in defs):
            missing.add(item.nodeid.split("::", 1)[0])
    if missing:
        raise pytest.UsageError(
            f"{', '.join(sorted(missing))} use a module-scoped fixture but are not in "
            "ONE_PROCESS (tests/conftest.py): add them there so each file's tests share "
            "one process"
        )


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") != "load":
        return None  # an explicit --dist loadfile, loadgroup, ... is honoured
    from xdist.scheduler import LoadScopeScheduling

    weights = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}

    class LongestFirst(LoadScopeScheduling):  # type: ignore[misc]
        """One test per unit of work, or one file per unit for ONE_PROCESS files; the
        units handed out longest first; a process is given its next unit only as it starts
        its last one, so nothing long waits behind another long test."""

        def _split_scope(self, nodeid: str) -> str:
            return nodeid.split("::", 1)[0] if _one_process(nodeid) else nodeid

        def schedule(self) -> None:
            # LoadScopeScheduling.schedule, with the units ordered by their recorded cost
            assert self.collection_is_completed
            if self.collection is not None:
                for node in self.nodes:
                    self._reschedule(node)
                return
            if not self._check_nodes_have_same_collection():
                self.log("**Different tests collected, aborting run**")
                return
            self.collection = list(next(iter(self.registered_collections.values())))
            units: dict[str, dict[str, bool]] = defaultdict(dict)
            for nodeid in self.collection:
                units[self._split_scope(nodeid)][nodeid] = False
            cost = {s: sum(weights.get(n, _UNKNOWN_S) for n in u) for s, u in units.items()}
            for scope in sorted(units, key=lambda s: -cost[s]):
                self.workqueue[scope] = units[scope]
            for _ in range(len(self.nodes) - len(self.workqueue)):
                unused, _ = self.assigned_work.popitem()
                unused.shutdown()
            for node in self.nodes:
                self._assign_work_unit(node)
            for node in self.nodes:
                self._reschedule(node)
            if not self.workqueue:
                for node in self.nodes:
                    node.shutdown()

        def _reschedule(self, node: Any) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    return LongestFirst(config, log)


_seconds: dict[str, float] = defaultdict(float)
_cpu: dict[str, float] = {}
_CPU_AT_START = pytest.StashKey[float]()


def _cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended (brokers, workers)."""
    own, ended = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    if os.environ.get("TEST_DURATIONS_FILE"):
        item.stash[_CPU_AT_START] = _cpu_s()
    yield


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Any:
    yield
    started = item.stash.get(_CPU_AT_START, None)
    if started is not None:  # reaches the controller in the teardown report
        item.user_properties.append(("cpu_s", _cpu_s() - started))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if os.environ.get("TEST_DURATIONS_FILE"):
        _seconds[report.nodeid] += report.duration
        for name, value in report.user_properties:
            if name == "cpu_s" and report.when == "teardown":
                _cpu[report.nodeid] = value


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Add each test's seconds to TEST_DURATIONS_FILE's file (so `make test`'s three
    phases add up in one), and its CPU seconds, its own and its ended children's, to
    NAME.cpu.json beside it: on two cores the suite is bound by CPU."""
    out = os.environ.get("TEST_DURATIONS_FILE")
    if out and _seconds and getattr(session.config, "workerinput", None) is None:
        for path, figures in ((Path(out), _seconds), (Path(out).with_suffix(".cpu.json"), _cpu)):
            merged = json.loads(path.read_text()) if path.exists() else {}
            merged.update({nodeid: round(s, 1) for nodeid, s in figures.items()})
            path.write_text(json.dumps(dict(sorted(merged.items())), indent=0) + "\n")
