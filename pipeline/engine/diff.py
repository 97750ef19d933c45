"""A replay's report: how a candidate version's answers differ from what was served.

`DiffReport` gathers `pipeline.engine.compare.Comparison` rows (with each row's event id
and source coordinates) and the counts of what could not be compared, and renders them
as a table or as JSON. It knows nothing of Kafka; `pipeline.kafka.replay` feeds it.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.engine.compare import Comparison

__all__ = ["DiffReport", "Largest"]

_QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True, slots=True, order=True)
class Largest:
    """One of the rows whose score differs most."""

    difference: float
    source: str  # topic/partition/offset of the event
    event_id: str
    served: str | None  # the served label (labelled models)
    candidate: str | None


@dataclass(slots=True)
class DiffReport:
    """What a replay found. Counts are of events in the range.

    Attributes:
        model: The candidate's model name.
        version: The candidate version.
        events: Records read from the range.
        predicted: Events the candidate predicted.
        rejected: Events the candidate did not predict, by ``stage/error_type``.
        other_models: Events that name another model (not replayed).
        compared: Events whose served prediction was found and compared.
        not_served: Events the candidate predicted with no served prediction found.
        served_dead_letters: Events the served path dead-lettered, by error type (with a
            dead-letter topic to read).
        largest_n: How many of the largest differences to keep.
    """

    model: str
    version: str
    events: int = 0
    predicted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    other_models: int = 0
    compared: int = 0
    not_served: int = 0
    served_dead_letters: Counter[str] = field(default_factory=Counter)
    largest_n: int = 5
    labelled: bool | None = None
    agreed: int = 0
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    served_versions: Counter[str] = field(default_factory=Counter)
    _differences: list[np.ndarray] = field(default_factory=list)
    _largest: list[Largest] = field(default_factory=list)

    def add(
        self,
        comparison: Comparison,
        event_ids: Sequence[str],
        sources: Sequence[str],
        served_version: str,
    ) -> None:
        """Count one group of compared rows (their event ids and source coordinates)."""
        self.compared += comparison.rows
        self.served_versions[served_version] += comparison.rows
        self._differences.append(comparison.differences)
        served, candidate = comparison.served_labels, comparison.candidate_labels
        self.labelled = served is not None
        if served is not None and candidate is not None:
            self.agreed += comparison.agreed or 0
            self.confusion.update(zip(served, candidate, strict=True))
        n = self.largest_n
        top = np.argsort(comparison.differences)[::-1][:n].tolist() if n else []
        for i in top:
            entry = Largest(
                float(comparison.differences[i]),
                sources[i],
                event_ids[i],
                served[i] if served is not None else None,
                candidate[i] if candidate is not None else None,
            )
            if len(self._largest) < n:
                heapq.heappush(self._largest, entry)
            elif entry > self._largest[0]:
                heapq.heapreplace(self._largest, entry)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (what ``--json`` prints)."""
        differences = np.concatenate(self._differences) if self._differences else np.zeros(0)
        quantiles = (
            {f"p{round(q * 100)}": float(np.quantile(differences, q)) for q in _QUANTILES}
            | {"max": float(differences.max())}
            if len(differences)
            else {}
        )
        return {
            "model": self.model,
            "version": self.version,
            "events": self.events,
            "predicted": self.predicted,
            "rejected": dict(self.rejected),
            "other_models": self.other_models,
            "compared": self.compared,
            "served_versions": dict(self.served_versions),
            "not_served": self.not_served,
            "served_dead_letters": dict(self.served_dead_letters),
            "agreed": self.agreed if self.labelled else None,
            "agreement": self.agreed / self.compared if self.labelled and self.compared else None,
            "score_difference": quantiles,
            "largest": [
                {
                    "difference": e.difference,
                    "source": e.source,
                    "id": e.event_id,
                    "served": e.served,
                    "candidate": e.candidate,
                }
                for e in sorted(self._largest, reverse=True)
            ],
            "confusion": [
                {"served": s, "candidate": c, "rows": n}
                for (s, c), n in sorted(self.confusion.items())
            ],
        }

    def table(self) -> str:
        """The report as text for a terminal."""
        doc = self.as_dict()
        lines = [
            f"replay of {self.model} version {self.version}",
            f"  events read          {self.events:>10,}",
            f"  predicted            {self.predicted:>10,}",
        ]
        for reason, n in sorted(self.rejected.items()):
            lines.append(f"  not predicted        {n:>10,}  {reason}")
        if self.other_models:
            lines.append(f"  other models         {self.other_models:>10,}  (not replayed)")
        served = ", ".join(f"{v} ({n:,})" for v, n in sorted(self.served_versions.items()))
        lines.append(f"  compared             {self.compared:>10,}  with served {served or '-'}")
        if self.not_served:
            lines.append(f"  no served prediction {self.not_served:>10,}")
        for reason, n in sorted(self.served_dead_letters.items()):
            lines.append(f"  served dead letter   {n:>10,}  {reason}")
        if doc["agreement"] is not None:
            lines.append(f"  label agreement      {self.agreed:>10,}  ({doc['agreement']:.2%})")
        if doc["score_difference"]:
            q = doc["score_difference"]
            lines.append(
                "  score difference     " + "  ".join(f"{k} {v:.4f}" for k, v in q.items())
            )
        if doc["largest"]:
            lines.append("  largest differences")
            for e in doc["largest"]:
                labels = f"  {e['served']} -> {e['candidate']}" if e["served"] is not None else ""
                lines.append(f"    {e['difference']:.4f}  {e['id']}  ({e['source']}){labels}")
        if self.confusion:
            lines += ["", *self._confusion_table()]
        return "\n".join(lines)

    def _confusion_table(self) -> list[str]:
        labels = sorted({s for s, _ in self.confusion} | {c for _, c in self.confusion})
        width = max(10, *(len(label) for label in labels)) + 2
        head = "served \\ candidate".ljust(width + 8) + "".join(x.rjust(width) for x in labels)
        rows = [head]
        for s in labels:
            counts = "".join(f"{self.confusion.get((s, c), 0):,}".rjust(width) for c in labels)
            rows.append(s.ljust(width + 8) + counts)
        return rows
