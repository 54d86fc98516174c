"""Snapshot files: a dict of tensors and plain python values, written atomically and
read back with ``torch.load(weights_only=True)`` (no arbitrary unpickling)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinytamer.errors import TamerError
from tinytamer.fileio import atomic_path


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states as tensors and lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temporary file next to ``path``, then rename over it."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path: Path) -> dict[str, Any]:
    """Read a snapshot; a missing or unreadable file raises TamerError naming it."""
    path = Path(path)
    if not path.is_file():
        raise TamerError(f"snapshot {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise TamerError(f"snapshot {path} cannot be read: {e}") from None
    if not isinstance(payload, dict) or "iter" not in payload or "model" not in payload:
        raise TamerError(f"snapshot {path} is not a tinytamer solver snapshot")
    return payload
