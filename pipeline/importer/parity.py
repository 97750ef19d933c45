"""Parity: the source model and its ONNX conversion must agree on the same rows.

Float outputs are compared with a scaled difference, ``|source - converted| / max(1,
|source|)``: relative for values of magnitude 1 and above, absolute below (so a
probability of 3e-6 against 3.1e-6 is a 1e-7 difference, not 3%). Every other output
(class labels, integers, strings) must be equal exactly. An import is refused when the
largest difference exceeds the tolerance or any label differs; the refusal lists the
worst rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import ModelError
from pipeline.importer.source import Outputs

__all__ = ["DEFAULT_TOLERANCE", "Difference", "ParityError", "ParityReport", "compare"]

DEFAULT_TOLERANCE = 1e-4
_WORST = 5


class ParityError(ModelError):
    """The converted model does not predict what its source predicts; nothing was written."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Difference:
    """One disagreeing value: where, what the source said, what the conversion said."""

    row: int
    output: str
    column: int | None
    source: Any
    converted: Any
    difference: float

    def __str__(self) -> str:
        where = f"{self.output}[{self.column}]" if self.column is not None else self.output
        return (
            f"row {self.row} {where}: source {_show(self.source)}, converted "
            f"{_show(self.converted)}, difference {self.difference:.3g}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ParityReport:
    """What comparing the source and the conversion on the sample rows found.

    Attributes:
        rows: How many rows were compared.
        tolerance: The largest scaled float difference allowed.
        max_difference: The largest scaled float difference found (0 if no float output).
        exact_outputs: Outputs compared exactly (labels), with their mismatch counts.
        float_outputs: Outputs compared within the tolerance.
        unchecked: Outputs of the conversion the source gives no value for.
        worst: The worst rows, worst first.
    """

    rows: int
    tolerance: float
    max_difference: float
    exact_outputs: dict[str, int]
    float_outputs: tuple[str, ...]
    unchecked: tuple[str, ...]
    worst: tuple[Difference, ...]

    @property
    def ok(self) -> bool:
        """True if every float is within the tolerance and every label is equal."""
        return self.max_difference <= self.tolerance and not any(self.exact_outputs.values())

    def record(self) -> dict[str, object]:
        """The manifest's ``parity`` record."""
        return {
            "rows": self.rows,
            "tolerance": self.tolerance,
            "max_difference": self.max_difference,
            "float_outputs": list(self.float_outputs),
            "exact_outputs": sorted(self.exact_outputs),
            "label_mismatches": sum(self.exact_outputs.values()),
        }

    def summary(self) -> str:
        """One line: rows, the largest difference against the tolerance, label equality."""
        labels = ", ".join(
            f"{name} equal on {self.rows - bad} of {self.rows} rows"
            for name, bad in self.exact_outputs.items()
        )
        line = (
            f"{self.rows} rows, largest difference {self.max_difference:.3g} "
            f"(tolerance {self.tolerance:g})"
        )
        return f"{line}; {labels}" if labels else line

    def refusal(self) -> ParityError:
        """The error that refuses this import, naming the worst rows."""
        worst = "; ".join(str(d) for d in self.worst)
        return ParityError(
            f"parity check failed, nothing was written: the converted model disagrees with "
            f"its source ({self.summary()}); worst rows: {worst}. Check the sample rows and "
            f"the converter's support for this model, or pass a larger --tolerance if the "
            f"difference is acceptable"
        )


def compare(reference: Outputs, converted: Outputs, *, tolerance: float) -> ParityReport:
    """Compare the source's outputs with the conversion's, output by output.

    Raises:
        ModelError: an output the source gives is missing from the conversion, or their
            shapes cannot be matched.
    """
    missing = sorted(set(reference) - set(converted))
    if missing:
        raise ModelError(
            f"the converted model lacks output(s) {missing} that the source gives; its "
            f"outputs are {sorted(converted)}"
        )
    rows = 0
    exact: dict[str, int] = {}
    floats: list[str] = []
    differences: list[Difference] = []
    for name, source in reference.items():
        a, b = _aligned(name, np.asarray(source), np.asarray(converted[name]))
        rows = max(rows, a.shape[0])
        if a.dtype.kind == "f" and b.dtype.kind == "f":
            floats.append(name)
            differences += _float_differences(name, a, b)
        else:
            found = _exact_differences(name, a, b)
            exact[name] = len({d.row for d in found})
            differences += found
    differences.sort(key=lambda d: d.difference, reverse=True)
    return ParityReport(
        rows=rows,
        tolerance=tolerance,
        max_difference=max((d.difference for d in differences if d.output in floats), default=0.0),
        exact_outputs=exact,
        float_outputs=tuple(floats),
        unchecked=tuple(sorted(set(converted) - set(reference))),
        worst=tuple(differences[:_WORST]),
    )


def _aligned(
    name: str, a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Both outputs as [rows, columns]; a (n,) and an (n, 1) output compare equal."""
    if a.size != b.size or a.shape[:1] != b.shape[:1]:
        raise ModelError(
            f"output {name!r}: the source gives shape {list(a.shape)} but the converted "
            f"model gives {list(b.shape)}"
        )
    n = a.shape[0]
    return a.reshape(n, -1), b.reshape(n, -1)


def _float_differences(
    name: str, a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]
) -> list[Difference]:
    """The worst scaled differences of one float output (NaN equals NaN)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.abs(a64 - b64) / np.maximum(1.0, np.abs(a64))
    both_nan = np.isnan(a64) & np.isnan(b64)
    scaled = np.where(both_nan, 0.0, np.where(np.isnan(scaled), np.inf, scaled))
    worst = np.argsort(scaled, axis=None)[::-1][:_WORST]
    rows, columns = np.unravel_index(worst, scaled.shape)
    return [
        _difference(name, a, b, r, c, float(scaled[r, c]))
        for r, c in zip(rows, columns, strict=True)
    ]


def _exact_differences(
    name: str, a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]
) -> list[Difference]:
    """Every unequal value of an exact output (labels), counted as an infinite difference."""
    unequal = np.argwhere(a != b.astype(a.dtype) if a.dtype != b.dtype else a != b)
    return [_difference(name, a, b, int(r), int(c), float("inf")) for r, c in unequal]


def _difference(
    name: str,
    a: np.ndarray[Any, Any],
    b: np.ndarray[Any, Any],
    row: Any,
    column: Any,
    difference: float,
) -> Difference:
    """Build a `Difference` at [row, column]; the column is dropped for single columns."""
    return Difference(
        row=int(row),
        output=name,
        column=int(column) if a.shape[1] > 1 else None,
        source=a[row, column].item(),
        converted=b[row, column].item(),
        difference=difference,
    )


def _show(value: Any) -> str:
    """A value as the message shows it (floats to 7 significant digits)."""
    return f"{value:.7g}" if isinstance(value, float) else repr(value)
