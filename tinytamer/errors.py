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


class CompressError(TamerError):
    """A compression method was given a setting it cannot take (a ratio, bit width, mode
    or layer selector); the message names the setting.  Raised by ``compress`` whether it
    is called from a recipe or from Python (a recipe's keys are checked by ``RecipeError``)."""


class BackendMissing(TamerError):
    """An optional backend is not installed; the message says how to install it."""

    def __init__(self, backend: str, install: str) -> None:
        super().__init__(f"backend '{backend}' is not installed: {install}")
        self.backend = backend
        self.install = install


class BackendBroken(TamerError):
    """An optional backend is installed but fails to import; the message names the error."""

    def __init__(self, backend: str, install: str, error: str) -> None:
        super().__init__(f"backend '{backend}' is installed but fails to import ({error}); reinstall it: {install}")
        self.backend = backend
        self.install = install
        self.error = error


class CodecError(TamerError):
    """A compressed model file is corrupt, truncated or of an unknown version."""


class CorruptFileError(TamerError):
    """A file tinytamer wrote earlier (run state, metrics log, tuning log) is truncated or damaged."""


class TrainError(TamerError):
    """Training cannot go on (the loss diverged); the message says at which iteration and lr."""
