"""The compressed model file: a checked header, a JSON manifest, the coded tensor bytes.

Layout (little endian)::

    magic  8 bytes   b"\\x89TTM\\r\\n\\x1a\\n"   (PNG-style: catches text-mode mangling)
    uint16 version
    uint32 manifest length (bytes, compressed)
    uint32 manifest CRC-32
    manifest         zlib-compressed JSON: architecture, one entry per tensor
                     (name, shape, dtype, encoding, parameters, part lengths,
                     offset, CRC-32), total payload length, free-form metadata
    payload          each tensor's coded parts, back to back

Reading never executes anything from the file: the manifest is JSON validated
by a schema, tensors are numbers.  Every defect a file can have (wrong magic or
version, truncation, trailing bytes, bad checksum, malformed manifest) raises
:class:`~tinytamer.errors.CodecError` naming the file and, where it applies,
the tensor.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tinytamer.codec.arch import MAX_DIMS
from tinytamer.codec.encodings import DTYPES, ENCODINGS
from tinytamer.errors import CodecError
from tinytamer.fileio import atomic_open

MAGIC = b"\x89TTM\r\n\x1a\n"
# Version 2 stores a quantized layer's per-channel scales once: the ``w_scale`` buffer is an
# entry with ``scales_of`` naming the layer's ``qint`` weight, whose own bytes hold them.
# Version 1 files (scales stored twice) are still read.
VERSION = 2
READS = (1, 2)
_HEADER = struct.Struct("<8sHII")
# Decompressed; a bound against zlib bombs.  Parsed JSON takes up to ~8x its text as Python
# objects (a list of floats), so a doctored manifest stays near 130 MB; real ones are < 200 KB
# (ResNet-56: 130 KB).
MAX_MANIFEST = 16 << 20

DTypeName = Literal[tuple(DTYPES)]  # type: ignore[valid-type]
EncodingName = Literal[tuple(ENCODINGS)]  # type: ignore[valid-type]
# Sizes, offsets and dimensions: JSON integers only (no `true`, no 2.0), never negative.
Count = Annotated[int, Field(strict=True, ge=0)]


class TensorEntry(BaseModel):
    """One tensor of the file: where its bytes are and how they are coded."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    shape: list[Count] = Field(default_factory=list, max_length=MAX_DIMS)
    dtype: DTypeName
    encoding: EncodingName
    params: dict[str, Any] = Field(default_factory=dict)
    parts: list[Count] = Field(default_factory=list, max_length=8)  # byte length of each coded part
    offset: Count = 0  # into the payload
    crc32: int = Field(default=0, strict=True, ge=0, lt=2**32)
    alias: str | None = None  # the same tensor as an earlier entry (tied weights)
    scales_of: str | None = None  # the per-channel scales an earlier 'qint' entry holds (version 2)

    @property
    def nbytes(self) -> int:
        return sum(self.parts)


class Manifest(BaseModel):
    """Everything in the file except the tensor bytes."""

    model_config = ConfigDict(extra="forbid")

    architecture: dict[str, Any]
    tensors: list[TensorEntry]
    payload_bytes: Count
    meta: dict[str, Any] = Field(default_factory=dict)
    # the header's format version, set by :func:`read` (never part of the JSON)
    version: int = Field(default=VERSION, exclude=True)


def write(path: str | Path, manifest: Manifest, parts: list[list[bytes]]) -> int:
    """Write the file atomically; fills offsets, lengths and checksums; returns its size."""
    path = Path(path)
    offset = 0
    for entry, coded in zip(manifest.tensors, parts, strict=True):
        entry.parts = [len(p) for p in coded]
        entry.offset = offset
        crc = 0
        for p in coded:
            crc = zlib.crc32(p, crc)
        entry.crc32 = crc
        offset += entry.nbytes
    manifest.payload_bytes = offset
    body = zlib.compress(manifest.model_dump_json().encode(), 9)
    header = _HEADER.pack(MAGIC, VERSION, len(body), zlib.crc32(body))
    # fsynced and renamed into place; temp files of killed earlier saves are removed
    with atomic_open(path) as f:
        f.write(header)
        f.write(body)
        for coded in parts:
            for p in coded:
                f.write(p)
    return path.stat().st_size


def _truncated(path: Path, expected: int, found: int, at_least: bool = False) -> CodecError:
    return CodecError(f"{path} is truncated: expected {'at least ' if at_least else ''}{expected} bytes, found {found}")


def read(path: str | Path) -> tuple[Manifest, memoryview]:
    """Read and check a file: header, manifest, sizes and every tensor's checksum."""
    path = Path(path)
    try:
        data = memoryview(path.read_bytes())
    except FileNotFoundError:
        raise CodecError(f"compressed model file not found: {path}") from None
    except OSError as exc:
        raise CodecError(f"cannot read compressed model file {path}: {exc}") from None
    if len(data) < _HEADER.size:
        if bytes(data[: len(MAGIC)]) == MAGIC[: len(data)]:
            raise _truncated(path, _HEADER.size, len(data), at_least=True)
    if bytes(data[: len(MAGIC)]) != MAGIC:
        raise CodecError(f"{path} is not a tinytamer compressed model file (wrong magic bytes)")
    _, version, body_len, body_crc = _HEADER.unpack_from(data)
    if version not in READS:
        raise CodecError(
            f"file {path} was written by format version {version}; this tinytamer reads version {VERSION} "
            f"(and {', '.join(str(v) for v in READS if v != VERSION)})"
        )
    start = _HEADER.size + body_len
    if len(data) < start:
        raise _truncated(path, start, len(data), at_least=True)
    body = data[_HEADER.size : start]
    if zlib.crc32(body) != body_crc:
        raise CodecError(f"manifest of {path}: checksum mismatch (the file is corrupt)")
    manifest = _parse_manifest(path, body)
    manifest.version = version
    _check_entries(path, manifest)
    expected = start + manifest.payload_bytes
    if len(data) != expected:
        if len(data) < expected:
            raise _truncated(path, expected, len(data))
        raise CodecError(f"{path} has {len(data) - expected} unexpected bytes after its payload")
    payload = data[start:]
    for entry in manifest.tensors:
        if entry.offset + entry.nbytes > manifest.payload_bytes:
            raise CodecError(f"tensor '{entry.name}' in {path}: its bytes run past the payload")
        if zlib.crc32(payload[entry.offset : entry.offset + entry.nbytes]) != entry.crc32:
            raise CodecError(f"tensor '{entry.name}' in {path}: checksum mismatch")
    return manifest, payload


def _parse_manifest(path: Path, body: memoryview) -> Manifest:
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(body, MAX_MANIFEST)
        if inflater.unconsumed_tail:
            raise CodecError(f"manifest of {path} is larger than {MAX_MANIFEST} bytes")
    except zlib.error as exc:
        raise CodecError(f"manifest of {path} cannot be decompressed: {exc}") from None
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:  # also: undecodable text, ints past 4300 digits
        raise CodecError(f"manifest of {path} is not valid JSON: {str(exc)[:200]}") from None
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise CodecError(f"manifest of {path} is malformed: {problems}") from None


def _check_entries(path: Path, manifest: Manifest) -> None:
    """Names unique; an alias names an earlier stored tensor of the same shape and dtype; a
    ``scales_of`` entry names an earlier ``qint`` tensor and is float32 with one value per
    output channel of it."""
    stored: dict[str, TensorEntry] = {}
    seen: set[str] = set()
    for entry in manifest.tensors:
        if entry.name in seen:
            raise CodecError(f"manifest of {path} lists tensor '{entry.name}' twice")
        seen.add(entry.name)
        if entry.scales_of is not None:
            _check_scales(path, manifest.version, entry, stored.get(entry.scales_of))
            continue
        if entry.alias is None:
            stored[entry.name] = entry
            continue
        target = stored.get(entry.alias)
        if target is None:
            raise CodecError(
                f"tensor '{entry.name}' in {path} aliases '{entry.alias}', which is not a tensor stored before it"
            )
        if (target.shape, target.dtype) != (entry.shape, entry.dtype) or entry.parts:
            raise CodecError(
                f"tensor '{entry.name}' in {path} aliases '{entry.alias}' but declares "
                f"{entry.dtype} {entry.shape} (and {len(entry.parts)} parts) for "
                f"its {target.dtype} {target.shape}"
            )


def _check_scales(path: Path, version: int, entry: TensorEntry, target: TensorEntry | None) -> None:
    where = f"tensor '{entry.name}' in {path}"
    if version < 2:
        raise CodecError(f"{where} refers to the scales of '{entry.scales_of}', which format version {version} lacks")
    if target is None or target.encoding != "qint":
        raise CodecError(f"{where} refers to the scales of '{entry.scales_of}', not a 'qint' tensor stored before it")
    if entry.alias is not None or entry.parts or entry.dtype != "float32" or entry.shape != target.shape[:1]:
        raise CodecError(
            f"{where} holds the scales of '{entry.scales_of}' but declares {entry.dtype} {entry.shape} "
            f"(and {len(entry.parts)} parts) for its {target.shape[:1]} float32 scales"
        )


def tensor_parts(entry: TensorEntry, payload: memoryview) -> list[memoryview]:
    """The coded parts of one tensor (checksums were verified by :func:`read`)."""
    parts, at = [], entry.offset
    for n in entry.parts:
        parts.append(payload[at : at + n])
        at += n
    return parts
