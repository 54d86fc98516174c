"""The data cache: decoded image arrays as ``.npz`` files, written atomically.

Lives in ``cache_dir``, else ``$TINYTAMER_CACHE``, else ``~/.cache/tinytamer``.  Entries are
keyed by a hash of what they were made from, so a changed source makes a new entry rather
than serving a stale one.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

from tinytamer.errors import DataError
from tinytamer.fileio import atomic_open


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder to use (created if needed)."""
    if cache_dir is None:
        cache_dir = os.environ.get("TINYTAMER_CACHE") or Path.home() / ".cache" / "tinytamer"
    root = Path(cache_dir).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create the data cache folder {root} ({e}); pass cache_dir= or set TINYTAMER_CACHE"
        ) from e
    return root


def digest(*parts: object) -> str:
    """A short stable hash of ``parts`` (their ``repr``), for cache keys."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` (.npz, uncompressed: loads fast) atomically."""
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays saved at ``path``, or None if it is missing or unreadable (a cache miss)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
