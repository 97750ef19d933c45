"""CPU seconds and peak memory of a contender's processes, children included.

`ProcessTreeSampler` follows one or more root processes and every descendant they start
(``pipeline run --workers 2`` is a parent and two spawned children). A background thread
samples each process every ``interval_s``; `cpu_seconds` can also be read on demand, so
a measurement window starts and ends exactly when the caller says. A process's CPU time
is its own user + system time (never its children's, which are sampled separately); the
time a process used after its last sample and before it exited is not counted, at most
``interval_s`` of it. Peak RSS is the kernel's high-water mark (``VmHWM``) where Linux
has it, else the largest RSS sampled.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil

__all__ = ["ProcessTreeSampler", "TreeFigures"]

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TreeFigures:
    """What the sampler saw.

    Attributes:
        processes: How many distinct processes were seen.
        peak_rss_mb: The largest peak RSS of any one process, in MiB.
        peak_rss_sum_mb: The peaks of all processes added up, in MiB.
    """

    processes: int
    peak_rss_mb: float
    peak_rss_sum_mb: float


def _high_water_mark(pid: int) -> int | None:
    """The kernel's peak RSS of `pid` in bytes (Linux ``VmHWM``), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class ProcessTreeSampler:
    """Samples CPU time and peak RSS of root processes and all their descendants.

    Args:
        pids: The root processes.
        interval_s: Seconds between background samples.
    """

    def __init__(self, pids: Iterable[int], *, interval_s: float = 0.1) -> None:
        self._roots = [psutil.Process(pid) for pid in pids]
        self._interval_s = interval_s
        self._known: dict[int, psutil.Process] = {p.pid: p for p in self._roots}
        self._cpu: dict[int, float] = {}
        self._peak: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="procstats", daemon=True)

    def __enter__(self) -> ProcessTreeSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()

    def sample(self) -> None:
        """Sample every live process of the tree now."""
        with self._lock:
            for root in self._roots:
                with contextlib.suppress(psutil.Error):
                    for child in root.children(recursive=True):
                        self._known.setdefault(child.pid, child)
            for pid, proc in self._known.items():
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        rss = proc.memory_info().rss
                except psutil.Error:
                    continue  # exited: keep its last figures
                self._cpu[pid] = times.user + times.system
                peak = max(rss, _high_water_mark(pid) or 0)
                self._peak[pid] = max(self._peak.get(pid, 0), peak)

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by every process of the tree (sampled now)."""
        self.sample()
        with self._lock:
            return sum(self._cpu.values())

    def figures(self) -> TreeFigures:
        """Peak memory figures over everything sampled so far."""
        with self._lock:
            peaks = list(self._peak.values())
        return TreeFigures(
            processes=len(peaks),
            peak_rss_mb=max(peaks, default=0) / _MIB,
            peak_rss_sum_mb=sum(peaks) / _MIB,
        )
