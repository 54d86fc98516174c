"""User-facing errors.

Every error a user can cause (bad file, bad recipe key, missing backend) is a
``TamerError``: the CLI prints its message without a traceback.  The message
must name *what* was wrong and *where* (file, layer, recipe key).
"""

from __future__ import annotations


class TamerError(Exception):
    """An error caused by the user's input or environment, with a clear message."""


class DataError(TamerError):
    """A dataset file is missing, truncated or malformed."""


class RecipeError(TamerError):
    """A recipe is invalid (unknown key, wrong type, unknown stage)."""


class ModelError(TamerError):
    """A model name, import path or architecture is invalid."""


class BackendMissing(TamerError):
    """An optional backend is not installed; the message says how to install it."""

    def __init__(self, backend: str, install: str) -> None:
        super().__init__(f"backend '{backend}' is not installed: {install}")
        self.backend = backend
        self.install = install


class CodecError(TamerError):
    """A compressed model file is corrupt, truncated or of an unknown version."""
