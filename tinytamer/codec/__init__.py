"""The compressed model file: ``save(model, path)``, ``load(path)``, ``info(path)``.

One file per model holds the architecture as it now is (pruned shapes
included, via :mod:`tinytamer.codec.arch`) and every tensor of its state dict
in the smallest exact coded form (:mod:`tinytamer.codec.encodings`): dense,
sparse with relative indices, codebook (shared weights), codebook + Huffman,
ternary, fixed point, and a quantized layer's integers with their per-channel
scales (``qint``: a b-bit weight takes b bits; the layer's ``w_scale`` buffer is a
reference to those scales, not a second copy).  ``load`` rebuilds a plain
``nn.Module`` whose tensors equal the saved ones, so its outputs are identical.
The size we report for a compressed model is this file's size on disk.

Training-time forms are made permanent in a copy before saving: weight
parametrizations (e.g. k-means sharing) are baked into plain weights, pruning
masks folded in, and a linear-quantized layer's float master weight replaced by
the values it computes with in eval mode (its integers times its scales); the
model passed in is not modified.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tinytamer.codec import arch, format
from tinytamer.codec import encodings as coding
from tinytamer.codec.plain import plain_copy, quant_scales
from tinytamer.errors import CodecError

__all__ = ["ENCODINGS", "SaveReport", "TensorReport", "format_info", "info", "load", "save"]

ENCODINGS = tuple(coding.ENCODINGS)
# What a file may decode to, checked on the declared shapes before anything is allocated.
# Only the sparse forms can expand without bound (an all-zero tensor is stored in 0 bytes);
# real compressed models decode to < 100x their file (Deep Compression: 35-49x), so 1024x
# with a floor for small files is generous for them and stops a 14 KB file asking for 4 GB.
MAX_EXPANSION = 1024
MIN_DECODED_BYTES = 64 << 20


@dataclass(frozen=True)
class TensorReport:
    """How one tensor was stored."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    encoding: str
    dense_bytes: int  # its raw size in memory
    coded_bytes: int  # its bytes in the file


@dataclass(frozen=True)
class SaveReport:
    """What :func:`save` wrote; ``file_bytes`` is the size on disk (the size we report)."""

    path: Path
    file_bytes: int
    tensors: list[TensorReport] = field(default_factory=list)

    @property
    def dense_bytes(self) -> int:
        """The tensors' raw size (for a float32 model: its dense float32 size)."""
        return sum(t.dense_bytes for t in self.tensors)

    @property
    def ratio(self) -> float:
        """Compression ratio: dense tensor bytes over file bytes."""
        return self.dense_bytes / self.file_bytes

    def by_encoding(self) -> dict[str, dict[str, int]]:
        """Tensors, dense bytes and coded bytes per encoding."""
        out: dict[str, dict[str, int]] = {}
        for t in self.tensors:
            row = out.setdefault(t.encoding, {"tensors": 0, "dense_bytes": 0, "coded_bytes": 0})
            row["tensors"] += 1
            row["dense_bytes"] += t.dense_bytes
            row["coded_bytes"] += t.coded_bytes
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (for metrics records and benchmark results)."""
        return {
            "path": str(self.path),
            "file_bytes": self.file_bytes,
            "dense_bytes": self.dense_bytes,
            "ratio": self.ratio,
            "by_encoding": self.by_encoding(),
            "tensors": [asdict(t) for t in self.tensors],
        }


def _wanted(name: str, forced: Mapping[str, str]) -> str:
    for pattern, enc in forced.items():
        if name == pattern or re.search(pattern, name):
            return enc
    return "auto"


def _encode(name: str, t: Tensor, wanted: str, allow: Collection[str], scales: Tensor | None) -> coding.Encoded:
    """The smallest exact encoding of ``t`` among ``allow`` (or exactly ``wanted``); ``scales``
    are its layer's per-output-channel scales when it is a quantized layer's weight."""
    candidates = [wanted] if wanted != "auto" else [e for e in ENCODINGS if e in allow]
    limit = t.numel() * t.element_size() if wanted == "auto" else None  # no better than dense
    coded, reasons = [], []
    for enc in candidates:
        try:
            coded.append(coding.encode(t, enc, limit, scales))
        except coding.NotApplicable as exc:
            reasons.append(f"'{enc}': {exc}")
    # Exactness is checked, not assumed: a coded form is used only if it decodes to `t`.
    for c in sorted(coded, key=lambda c: c.nbytes):
        back = coding.decode(c.encoding, c.params, [memoryview(p) for p in c.parts], list(t.shape), t.dtype)
        if torch.equal(back, t):
            return c
        reasons.append(f"'{c.encoding}': it does not round-trip exactly")
    raise CodecError(f"tensor '{name}' cannot be stored as {' or '.join(candidates)}: " + "; ".join(reasons))


def _same_bits(t: Tensor, scales: Tensor) -> bool:
    """Whether ``t`` is a float32 vector holding exactly the bits of ``scales`` (what 'qint' stored)."""
    if t.dtype != torch.float32 or t.dim() != 1 or t.shape != scales.reshape(-1).shape:
        return False
    return torch.equal(t.view(torch.int32), scales.reshape(-1).contiguous().view(torch.int32))


def save(
    model: nn.Module,
    path: str | Path,
    *,
    encodings: Mapping[str, str] | None = None,
    allow: Collection[str] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> SaveReport:
    """Write ``model`` to one compressed file at ``path`` (atomically) and say how.

    ``encodings`` maps tensor names (exact, or a regex searched in the name) to
    an encoding to force (or ``"auto"``); every other tensor gets the smallest
    exact encoding among ``allow`` (default: all of :data:`ENCODINGS`).
    ``meta`` is stored as-is in the manifest (JSON-able values only).
    """
    forced = dict(encodings or {})
    allowed = set(ENCODINGS if allow is None else allow)
    unknown = (allowed | set(forced.values())) - set(ENCODINGS) - {"auto"}
    if unknown:
        raise CodecError(f"unknown encoding(s) {sorted(unknown)} (known: {', '.join(ENCODINGS)})")
    for pattern in forced:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise CodecError(f"encodings key '{pattern}' is not a valid regex: {exc}") from None
    if "dense" not in allowed:
        allowed.add("dense")  # the fallback every tensor has
    plain = plain_copy(model)
    scales = quant_scales(plain)
    # scale buffer name -> the 'qint' weight whose bytes already hold those scales
    in_qint: dict[str, tuple[str, Tensor]] = {}
    entries, parts, reports = [], [], []
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    for name, t in plain.state_dict(keep_vars=False).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        t = t.detach().cpu()
        dtype = coding.dtype_name(t.dtype)
        if t.numel() and key in seen:  # tied weights: store once
            entries.append(
                format.TensorEntry(name=name, shape=list(t.shape), dtype=dtype, encoding="dense", alias=seen[key])
            )
            parts.append([])
            reports.append(TensorReport(name, tuple(t.shape), dtype, "alias", 0, 0))
            continue
        held = in_qint.get(name)
        if held is not None and _same_bits(t, held[1]):
            entries.append(
                format.TensorEntry(name=name, shape=list(t.shape), dtype=dtype, encoding="dense", scales_of=held[0])
            )
            parts.append([])
            reports.append(TensorReport(name, tuple(t.shape), dtype, "scales", t.numel() * t.element_size(), 0))
            continue
        seen[key] = name
        scale_name, layer_scales = scales.get(name, (None, None))
        coded = _encode(name, t, _wanted(name, forced), allowed, layer_scales)
        if coded.encoding == "qint" and scale_name is not None:
            in_qint[scale_name] = (name, layer_scales)
        entries.append(
            format.TensorEntry(
                name=name, shape=list(t.shape), dtype=dtype, encoding=coded.encoding, params=coded.params
            )
        )
        parts.append(coded.parts)
        reports.append(
            TensorReport(name, tuple(t.shape), dtype, coded.encoding, t.numel() * t.element_size(), coded.nbytes)
        )
    manifest = format.Manifest(
        architecture=arch.describe(plain), tensors=entries, payload_bytes=0, meta=dict(meta or {})
    )
    size = format.write(path, manifest, parts)
    return SaveReport(Path(path), size, reports)


def load(path: str | Path, *, allow_modules: Iterable[str] = (), max_bytes: int | None = None) -> nn.Module:
    """Rebuild the model saved at ``path``; its tensors equal the saved ones.

    Module classes are imported only from ``torch.nn``, ``tinytamer`` and the
    module prefixes in ``allow_modules`` (e.g. ``["mypackage."]`` for a user's model).
    The declared tensors may hold at most ``max_bytes`` (default: :data:`MAX_EXPANSION`
    times the file's size, at least :data:`MIN_DECODED_BYTES`); raise it for a file you trust.
    """
    manifest, payload = format.read(path)
    size = Path(path).stat().st_size
    limit = max(MIN_DECODED_BYTES, MAX_EXPANSION * size) if max_bytes is None else max_bytes
    declared = sum(math.prod(e.shape) * coding.DTYPES[e.dtype].itemsize for e in manifest.tensors if e.alias is None)
    if declared > limit:
        raise CodecError(
            f"{path} declares {declared} bytes of tensors, more than the {limit} a "
            f"{size}-byte file may decode to; if you trust it, pass a larger "
            "max_bytes to codec.load"
        )
    specs = {e.name: (e.shape, coding.DTYPES[e.dtype]) for e in manifest.tensors}
    try:
        model = arch.build(manifest.architecture, allow=allow_modules, tensors=specs)
    except CodecError as exc:
        raise CodecError(f"{path}: {exc}") from None
    state: dict[str, Tensor] = {}
    stored = {entry.name: entry for entry in manifest.tensors}
    for entry in manifest.tensors:
        if entry.alias is not None:  # format.read checked it names an earlier stored tensor
            state[entry.name] = state[entry.alias]
            continue
        if entry.scales_of is not None:  # format.read checked it names an earlier 'qint' tensor
            weight = stored[entry.scales_of]
            try:
                scales = coding.qint_scales(weight.params, format.tensor_parts(weight, payload), weight.shape)
            except CodecError as exc:
                raise CodecError(f"tensor '{entry.name}' in {path}: {exc}") from None
            state[entry.name] = scales.reshape(entry.shape)
            continue
        try:
            state[entry.name] = coding.decode(
                entry.encoding,
                entry.params,
                format.tensor_parts(entry, payload),
                entry.shape,
                coding.DTYPES[entry.dtype],
            )
        except CodecError as exc:
            raise CodecError(f"tensor '{entry.name}' in {path}: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
        # Module classes' own loading code runs on the file's data here (a class swapped for
        # another fails inside it): any failure is a defect of the file.
        raise CodecError(
            f"the tensors in {path} do not fit its architecture: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    return model


def info(path: str | Path) -> dict[str, Any]:
    """The file's manifest summary: format version, sizes, per-tensor encoding and bytes."""
    manifest, payload = format.read(path)
    size = Path(path).stat().st_size
    tensors = [
        {
            "name": e.name,
            "shape": e.shape,
            "dtype": e.dtype,
            "encoding": "alias" if e.alias else "scales" if e.scales_of else e.encoding,
            "bytes": e.nbytes,
            "params": e.params,
        }
        for e in manifest.tensors
    ]
    by_encoding: dict[str, dict[str, int]] = {}
    for t in tensors:
        row = by_encoding.setdefault(t["encoding"], {"tensors": 0, "bytes": 0})
        row["tensors"] += 1
        row["bytes"] += t["bytes"]
    return {
        "path": str(path),
        "format_version": manifest.version,
        "file_bytes": size,
        "payload_bytes": len(payload),
        "header_and_manifest_bytes": size - len(payload),
        "tensors": tensors,
        "by_encoding": by_encoding,
        "meta": manifest.meta,
    }


def format_info(summary: dict[str, Any]) -> str:
    """A plain-text table of :func:`info`'s summary (what ``tamer inspect FILE`` prints)."""
    rows = [
        (t["name"], "x".join(map(str, t["shape"])) or "scalar", t["dtype"], t["encoding"], str(t["bytes"]))
        for t in summary["tensors"]
    ]
    head = ("tensor", "shape", "dtype", "encoding", "bytes")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + f"  {{:>{widths[-1]}}}"
    lines = [
        f"{summary['path']}: format version {summary['format_version']}, "
        f"{summary['file_bytes']} bytes ({summary['header_and_manifest_bytes']} header + manifest)",
        fmt.format(*head),
    ]
    lines += [fmt.format(*r) for r in rows]
    lines.append(
        "by encoding: "
        + ", ".join(f"{enc} {v['tensors']} tensors / {v['bytes']} bytes" for enc, v in summary["by_encoding"].items())
    )
    return "\n".join(lines)
