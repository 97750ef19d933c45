"""The one rule for names that become path components or Kafka-visible identifiers.

Model names and versions arrive in events and select directories in the model store,
so they must never be able to spell a path: no separators, no `..`, no leading dot,
nothing outside a small ASCII alphabet. The codec and the model store both apply this
rule, so it lives here, once.
"""

from __future__ import annotations

import re

__all__ = ["MAX_NAME_LENGTH", "PLAIN_NAME_RULE", "is_plain_name"]

MAX_NAME_LENGTH = 128
"""The longest plain name accepted, in characters."""

PLAIN_NAME_RULE = (
    f"1 to {MAX_NAME_LENGTH} characters of A-Z a-z 0-9 '.' '_' '-', not starting with '.'"
)
"""The rule in words, for error messages."""

_PLAIN_NAME = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{MAX_NAME_LENGTH - 1}}}")


def is_plain_name(value: object) -> bool:
    """Tell whether `value` is a string that is safe to use as one path component.

    Args:
        value: Anything; only a `str` can qualify.

    Returns:
        True if `value` is 1 to 128 characters of ``[A-Za-z0-9._-]`` and does not start
        with ``.`` (so ``.``, ``..`` and hidden names are refused).
    """
    return isinstance(value, str) and _PLAIN_NAME.fullmatch(value) is not None
