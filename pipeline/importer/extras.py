"""The conversion libraries are optional extras: import one, or say which extra brings it."""

from __future__ import annotations

import importlib
from types import ModuleType

from pipeline.errors import ConfigError

__all__ = ["MissingExtraError", "install_command", "require"]


def install_command(extra: str) -> str:
    """The command that installs one of this project's extras (it is not on PyPI yet, so
    it is installed from the checkout)."""
    return f"pip install '.[{extra}]' in the project's checkout"


class MissingExtraError(ConfigError):
    """A library that an import needs is not installed; the message names the extra."""


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import `module`, or fail with the one command that installs it.

    Args:
        module: The module to import, e.g. ``"tf2onnx"``.
        extra: The optional-dependency group of this project that installs it.
        purpose: What needs it, for the message ("importing a TensorFlow model").

    Raises:
        MissingExtraError: `module` (or a library it needs) cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the Python module {module!r}, which cannot be imported "
            f"({exc}); install it with: {install_command(extra)}"
        ) from exc
