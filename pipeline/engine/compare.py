"""How two versions' answers to the same rows differ: label agreement and score difference.

For models with labels (a manifest's ``labels`` and ``probability_output``), each row's
label is its most probable one, as in predictions; two rows *agree* when their labels are
the same text (the versions may order their labels differently). The *score difference*
is how far the candidate's probability of the served label is from the served score
(absolute, 0 to 1): a candidate that agrees but is less sure shows here.

For models without labels, the score difference is the largest absolute difference
between the rows of the first output the two versions share by name (a regressor's value,
say); agreement is not defined.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.engine.codec import class_probabilities
from pipeline.engine.spec import ModelSpec

__all__ = ["Comparison", "compare"]

Outputs = Mapping[str, np.ndarray[Any, Any]]


@dataclass(frozen=True, slots=True)
class Comparison:
    """Two versions' answers to the same rows, compared row by row.

    Attributes:
        rows: Rows compared.
        served_labels: Each row's served label; None for models without labels.
        candidate_labels: Each row's label from the candidate; None without labels.
        differences: Each row's absolute score difference.
    """

    rows: int
    served_labels: list[str] | None
    candidate_labels: list[str] | None
    differences: np.ndarray[Any, np.dtype[np.float64]]

    @property
    def agreed(self) -> int | None:
        """Rows whose labels agree; None for models without labels."""
        if self.served_labels is None or self.candidate_labels is None:
            return None
        pairs = zip(self.served_labels, self.candidate_labels, strict=True)
        return sum(a == b for a, b in pairs)


def compare(
    served: ModelSpec, served_outputs: Outputs, candidate: ModelSpec, candidate_outputs: Outputs
) -> Comparison:
    """Compare two versions' outputs for the same rows, in the same order.

    Raises:
        ValueError: the outputs cannot be compared: one version has labels and the other
            not, no output is shared by name, or the shared output differs in shape.
    """
    n = _rows(served_outputs)
    p = class_probabilities(served, served_outputs, n)
    q = class_probabilities(candidate, candidate_outputs, n)
    if (p is None) != (q is None):
        raise ValueError(
            f"{served.describe()} and {candidate.describe()} cannot be compared: only one of "
            "them has labels and a probability output in its manifest"
        )
    if p is not None and q is not None:
        return _labelled(served, p.astype(np.float64), candidate, q.astype(np.float64))
    return _unlabelled(served, served_outputs, candidate, candidate_outputs, n)


def _labelled(
    served: ModelSpec, p: np.ndarray[Any, Any], candidate: ModelSpec, q: np.ndarray[Any, Any]
) -> Comparison:
    assert served.labels is not None and candidate.labels is not None
    best = np.argmax(p, axis=1)
    served_labels = [served.labels[j] for j in best.tolist()]
    candidate_labels = [candidate.labels[j] for j in np.argmax(q, axis=1).tolist()]
    column = {label: j for j, label in enumerate(candidate.labels)}
    rows = np.arange(len(best))
    served_scores = p[rows, best]
    where = np.array([column.get(label, -1) for label in served_labels], dtype=np.int64)
    candidate_scores = np.where(where >= 0, q[rows, np.maximum(where, 0)], 0.0)
    differences = np.abs(candidate_scores - served_scores)
    return Comparison(len(best), served_labels, candidate_labels, differences)


def _unlabelled(
    served: ModelSpec,
    served_outputs: Outputs,
    candidate: ModelSpec,
    candidate_outputs: Outputs,
    n: int,
) -> Comparison:
    shared = [name for name in served_outputs if name in candidate_outputs]
    if not shared:
        raise ValueError(
            f"{served.describe()} and {candidate.describe()} share no output name to compare"
        )
    name = shared[0]
    a = np.asarray(served_outputs[name])
    b = np.asarray(candidate_outputs[name])
    if a.shape != b.shape or a.dtype == object or b.dtype == object:
        raise ValueError(
            f"output {name!r} of {served.describe()} has shape {a.shape}, of "
            f"{candidate.describe()} {b.shape}; they cannot be compared"
        )
    if not np.issubdtype(a.dtype, np.number) or not np.issubdtype(b.dtype, np.number):
        labels = [str(v) for v in a.reshape(n, -1)[:, 0].tolist()]
        others = [str(v) for v in b.reshape(n, -1)[:, 0].tolist()]
        return Comparison(n, labels, others, np.zeros(n, dtype=np.float64))
    diff = np.abs(a.reshape(n, -1).astype(np.float64) - b.reshape(n, -1).astype(np.float64))
    return Comparison(n, None, None, diff.max(axis=1) if diff.size else np.zeros(n))


def _rows(outputs: Outputs) -> int:
    for array in outputs.values():
        return len(array)
    return 0
