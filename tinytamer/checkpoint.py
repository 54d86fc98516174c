"""One-file checkpoints: safetensors weights with the architecture in the metadata.

A checkpoint loads back without the code that built the model (pruned shapes,
replaced layers included) and without pickle: the architecture is JSON
(``tinytamer.codec.arch``), the weights are safetensors.

A checkpoint is data and is checked before it is used: the safetensors header
must fit the file, a SHA-256 digest of the metadata and of every tensor (name,
dtype, shape, bytes) stored at save must match at load, and the architecture
may declare only the tensors the file holds, of their shapes and dtypes.  The
digest catches corruption, not forgery (whoever can edit the file can recompute
it); what keeps a hostile file harmless is that nothing in it is executed.
Wherever a checkpoint is read, a compressed model file (``.tt``, which holds its
architecture too) is accepted as well, told apart by its magic bytes.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import safe_open, save_file, save_model
from torch import nn

from tinytamer import codec
from tinytamer.codec import arch, format
from tinytamer.errors import CodecError
from tinytamer.fileio import atomic_path

ARCH_KEY = "tinytamer.arch"
DIGEST_KEY = "tinytamer.sha256"
MAX_HEADER = 100 << 20  # safetensors' own limit on its JSON header
ACCEPTED = "a tinytamer checkpoint (.safetensors) or a compressed model file (.tt)"


def digest(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the metadata (but the digest itself) and of every tensor's name, dtype, shape, bytes."""
    head = json.dumps(
        {
            "metadata": {k: v for k, v in metadata.items() if k != DIGEST_KEY},
            "tensors": {k: [str(t.dtype), list(t.shape)] for k, t in tensors.items()},
        },
        sort_keys=True,
    )
    h = hashlib.sha256(head.encode())
    h.update(b"\0")  # never in JSON: the bytes that follow cannot be read as part of the head
    for name in sorted(tensors):  # their lengths follow from the dtypes and shapes above
        h.update(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_checkpoint(model: nn.Module, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write ``model`` (architecture + weights + digest) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {ARCH_KEY: json.dumps(arch.describe(model)), **(extra or {})}
    with atomic_path(path) as tmp:  # fsynced; temp files of killed earlier saves are removed
        save_model(model, str(tmp), metadata=metadata)
        # safetensors stores tied tensors once and notes the others in the metadata: the
        # digest is taken of what it wrote, read back as it will be at load.
        meta, tensors = _read(tmp)
        save_file(tensors, str(tmp), metadata={**meta, DIGEST_KEY: digest(meta, tensors)})
    return path


def file_kind(path: str | Path) -> Literal["safetensors", "tt"]:
    """Which of the accepted model files ``path`` is, from its first bytes (not its name)."""
    path = Path(path)
    if not path.is_file():
        raise CodecError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(len(format.MAGIC) + 1)
    except OSError as exc:
        raise CodecError(f"cannot read {path}: {exc}") from None
    if head and format.MAGIC.startswith(head[: len(format.MAGIC)]):  # a .tt, maybe truncated
        return "tt"
    if head[8:9] == b"{":  # safetensors: a u64 header length, then the JSON header
        return "safetensors"
    raise CodecError(
        f"{path} is neither {ACCEPTED.replace(' or ', ' nor ')}; those are the files a model can be loaded from"
    )


def _check_header(path: Path) -> int:
    """Check that the safetensors header fits the file before anything reads it; returns the file size."""
    if file_kind(path) != "safetensors":
        raise CodecError(f"{path} is a compressed model file (.tt), not a safetensors checkpoint")
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
    if n > MAX_HEADER:
        raise CodecError(f"{path}: its safetensors header claims {n} bytes, over the {MAX_HEADER} limit")
    if 8 + n > size:
        raise CodecError(
            f"{path}: its safetensors header claims {n} bytes but the file has only {size} (truncated or corrupt)"
        )
    return size


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a safetensors file, both from one read of its bytes."""
    _check_header(path)
    try:
        data = path.read_bytes()
        tensors = load_bytes(data)  # validates the header: dtypes, shapes, offsets within the file
    except (SafetensorError, OSError, ValueError) as exc:
        raise CodecError(f"{path} is not a readable safetensors checkpoint: {exc}") from None
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
    return meta, tensors


def _read_verified(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    meta, tensors = _read(path)
    stored = meta.get(DIGEST_KEY)
    if stored is None:
        if ARCH_KEY in meta:  # a tinytamer checkpoint from before digests (other files have none)
            warnings.warn(
                f"{path} carries no digest (written before tinytamer checked its "
                "checkpoints): its weights are loaded unverified",
                stacklevel=3,
            )
    elif stored != digest(meta, tensors):
        raise CodecError(
            f"{path}: its weights or metadata do not match the digest stored with them "
            "(the file is corrupt or was changed)"
        )
    return meta, tensors


def read_metadata(path: str | Path) -> dict[str, str]:
    """The checkpoint's metadata (architecture JSON, digest and any extra keys)."""
    path = Path(path)
    _check_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CodecError(f"{path} is not a readable safetensors checkpoint: {exc}") from None


def has_architecture(path: str | Path) -> bool:
    """Whether ``path`` rebuilds a model by itself (a ``.tt``, or a tinytamer checkpoint)."""
    return file_kind(path) == "tt" or ARCH_KEY in read_metadata(path)


def load_checkpoint(path: str | Path, allow: Iterable[str] = ()) -> nn.Module:
    """Rebuild the model saved by :func:`save_checkpoint` or :func:`tinytamer.codec.save` (eval mode)."""
    path = Path(path)
    if file_kind(path) == "tt":
        return codec.load(path, allow_modules=allow).eval()
    meta, tensors = _read_verified(path)
    if ARCH_KEY not in meta:
        raise CodecError(
            f"{path} has weights but no architecture (not written by tinytamer); load it into a "
            "model you create with `tinytamer.zoo.create(...)` and `load_weights` instead"
        )
    try:
        desc = json.loads(meta[ARCH_KEY])
    except (ValueError, RecursionError) as exc:  # also: nesting past Python's recursion limit
        raise CodecError(f"{path}: architecture metadata is not valid JSON ({str(exc)[:200]})") from None
    try:
        model = arch.build(desc, allow=allow, tensors={k: (t.shape, t.dtype) for k, t in tensors.items()})
    except CodecError as exc:
        raise CodecError(f"{path}: {exc}") from None
    return _load_into(model, tensors, path).eval()


def _load_into(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> nn.Module:
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except (RuntimeError, AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
        # Module classes' own loading code runs on the file's data here (a class swapped for
        # another fails inside it): any failure is a defect of the file.
        raise CodecError(f"weights in {path} do not fit the model: {type(exc).__name__}: {str(exc)[:300]}") from None
    # safetensors stores a tied tensor once; the model's other names for it share its storage.
    own = model.state_dict()
    loaded = {own[k].untyped_storage().data_ptr() for k in tensors if k in own}
    missing = [k for k in missing if own[k].untyped_storage().data_ptr() not in loaded]
    if missing or unexpected:
        raise CodecError(
            f"weights in {path} do not fit the model: missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}"
        )
    return model


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load safetensors weights into an existing model, naming mismatched tensors on error."""
    path = Path(path)
    _, tensors = _read_verified(path)
    return _load_into(model, tensors, path)


__all__ = [
    "ACCEPTED",
    "ARCH_KEY",
    "DIGEST_KEY",
    "digest",
    "file_kind",
    "has_architecture",
    "load_checkpoint",
    "load_weights",
    "read_metadata",
    "save_checkpoint",
]
