"""What the codec needs to know about a model, and the seam it asks through.

The codec turns raw event values into per-model float32 matrices. To do that it must
know, for a model name and an optional version, which version is meant, how many
features a row has, and how named features map to columns. `ModelCatalog` is that
question; the model store and cache (`pipeline.engine.models`) answer it, and tests can
answer it with a plain dictionary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["ModelCatalog", "ModelSpec"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """The shape of one model version, as events and predictions see it.

    Attributes:
        name: The model's plain name (a directory under the store).
        version: The version's plain name (a directory under the model).
        n_features: How many float32 columns one input row has.
        feature_names: Column names in input order, from the manifest; None if the
            manifest names none (then only array-form features are accepted).
        labels: Class labels in the order of the probability output's columns, from
            the manifest; None for regressors or unlabelled classifiers.
        probability_output: Name of the ONNX output holding class probabilities, used
            with `labels` to add `label` and `score` to predictions.
    """

    name: str
    version: str
    n_features: int
    feature_names: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    probability_output: str | None = None
    feature_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {n: i for i, n in enumerate(self.feature_names or ())}
        object.__setattr__(self, "feature_index", index)


class ModelCatalog(Protocol):
    """Resolves a model name and optional version to the spec of a loadable model."""

    def resolve(self, name: str, version: str | None) -> ModelSpec:
        """Return the spec of `name` at `version`, or at its newest version if None.

        Raises:
            ModelNotFoundError: no such model or version in the store.
            ModelLoadError: the model exists but cannot be loaded.
        """
        ...
