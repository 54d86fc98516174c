"""One-file checkpoints: safetensors weights with the architecture in the metadata.

A checkpoint loads back without the code that built the model (pruned shapes,
replaced layers included) and without pickle: the architecture is JSON
(``tinytamer.codec.arch``), the weights are safetensors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model, safe_open, save_model
from torch import nn

from tinytamer.codec import arch
from tinytamer.errors import CodecError

ARCH_KEY = "tinytamer.arch"


def save_checkpoint(model: nn.Module, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write ``model`` (architecture + weights) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {ARCH_KEY: json.dumps(arch.describe(model)), **(extra or {})}
    tmp = path.with_name(f".{path.name}.tmp")
    save_model(model, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The checkpoint's metadata (architecture JSON and any extra keys)."""
    path = Path(path)
    if not path.is_file():
        raise CodecError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CodecError(f"{path} is not a readable safetensors checkpoint: {exc}") from None


def load_checkpoint(path: str | Path, allow: Iterable[str] = ()) -> nn.Module:
    """Rebuild the model saved by :func:`save_checkpoint` (eval mode)."""
    meta = read_metadata(path)
    if ARCH_KEY not in meta:
        raise CodecError(
            f"{path} has weights but no architecture (not written by tinytamer); load it into a "
            "model you create with `tinytamer.zoo.create(...)` and `load_weights` instead"
        )
    try:
        desc = json.loads(meta[ARCH_KEY])
    except json.JSONDecodeError as exc:
        raise CodecError(f"{path}: architecture metadata is not valid JSON ({exc})") from None
    model = arch.build(desc, allow=allow)
    load_weights(model, path)
    return model.eval()


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load safetensors weights into an existing model, naming mismatched tensors on error."""
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError) as exc:
        raise CodecError(f"cannot read weights from {path}: {exc}") from None
    except RuntimeError as exc:
        raise CodecError(f"weights in {path} do not fit the model: {exc}") from None
    if missing or unexpected:
        raise CodecError(
            f"weights in {path} do not fit the model: missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}"
        )
    return model


__all__ = ["save_checkpoint", "load_checkpoint", "load_weights", "read_metadata"]
