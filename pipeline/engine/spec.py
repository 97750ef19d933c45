"""What the codec needs to know about a model, and the seam it asks through.

The codec turns raw event values into per-model feeds (one array per model input). To do
that it must know, for a model name and an optional version, which version is meant, the
model's inputs (`pipeline.engine.signature.TensorSpec`), and for a model whose one input
is a float matrix, how many features a row has and how named features map to columns.
`ModelCatalog` is that question; the model store and cache (`pipeline.engine.models`)
answer it, and tests can answer it with a plain dictionary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Protocol

from pipeline.engine.signature import TensorSpec

__all__ = [
    "VECTOR_INPUT",
    "ModelCatalog",
    "ModelSpec",
    "is_vector_input",
]

VECTOR_INPUT: Final = "features"
"""The input name a spec built from `n_features` alone gives its one float32 input."""
_FLOATS: Final = frozenset(("FP16", "FP32", "FP64"))


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """The shape of one model version, as events and predictions see it.

    Attributes:
        name: The model's plain name (a directory under the store).
        version: The version's plain name (a directory under the model).
        n_features: For a vector model (one floating-point input of shape [rows, n]), how
            many columns a row has; 0 for a model with other inputs.
        feature_names: A vector model's column names in input order, from the manifest;
            None if the manifest names none (then its events send arrays or input names).
        labels: Class labels in the order of the probability output's columns, from
            the manifest; None for regressors or unlabelled classifiers.
        probability_output: Name of the ONNX output holding class probabilities, used
            with `labels` to add `label` and `score` to predictions.
        inputs: Every input of the model, from its graph. Left out, the spec stands for
            one float32 input named ``features`` of `n_features` columns.
        defaults: (name, value) pairs from the manifest's ``defaults``: what a row takes
            for a name when an enrichment table lacks the event's entity and its policy is
            ``defaults`` (`pipeline.engine.enrich`).
    """

    name: str
    version: str
    n_features: int = 0
    feature_names: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    probability_output: str | None = None
    inputs: tuple[TensorSpec, ...] = ()
    defaults: tuple[tuple[str, str | int | float | bool], ...] = ()
    feature_index: dict[str, int] = field(init=False, repr=False, compare=False)
    input_index: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    vector: bool = field(init=False, repr=False, compare=False)
    """Whether the model takes one floating-point matrix [rows, n_features], whose events
    may send features as an array or as named columns (a field: the codec asks per event)."""
    one_value_inputs: frozenset[str] | None = field(init=False, repr=False, compare=False)
    """The input names, when the model is not a vector model and every input takes one
    value per row (per-row shape ``[]`` or ``[1]``): the codec checks rows of such a model
    a column at a time. None for any other model."""

    def __post_init__(self) -> None:
        if not self.inputs:
            if self.n_features < 1:
                raise ValueError(
                    f"a model spec needs inputs or n_features >= 1, got n_features "
                    f"{self.n_features} and no inputs"
                )
            vector = (TensorSpec(VECTOR_INPUT, "FP32", (self.n_features,)),)
            object.__setattr__(self, "inputs", vector)
        index = {n: i for i, n in enumerate(self.feature_names or ())}
        object.__setattr__(self, "feature_index", index)
        object.__setattr__(self, "input_index", {i.name: i for i in self.inputs})
        object.__setattr__(self, "vector", self.n_features > 0)
        one_value = not self.vector and all(i.scalar for i in self.inputs)
        names = frozenset(self.input_index) if one_value else None
        object.__setattr__(self, "one_value_inputs", names)

    def describe(self) -> str:
        """``model 'fraud' version '2'``, for messages."""
        return f"model {self.name!r} version {self.version!r}"


def is_vector_input(inputs: tuple[TensorSpec, ...]) -> bool:
    """Whether `inputs` is one floating-point input of one row of columns per row."""
    return len(inputs) == 1 and inputs[0].datatype in _FLOATS and len(inputs[0].shape) == 1


class ModelCatalog(Protocol):
    """Resolves a model name and optional version to the spec of a loadable model."""

    def resolve(self, name: str, version: str | None) -> ModelSpec:
        """Return the spec of `name` at `version`, or at its newest version if None.

        Raises:
            ModelNotFoundError: no such model or version in the store.
            ModelLoadError: the model exists but cannot be loaded.
        """
        ...
