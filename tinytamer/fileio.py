"""Crash-safe files: atomic writes, fsynced JSON-lines appends, readers that name the file.

A run can be killed at any instant (SIGKILL, power loss), so every file a later run reads
must be either the old or the new version (:func:`write_atomic`, :func:`atomic_path`), and
an append log must survive a half-written last line (:func:`append_jsonl`,
:func:`read_jsonl`).  A killed writer leaves its temporary file ``.<name>.<pid>.tmp``
behind; the next write of the same file removes the ones whose writer is dead
(:func:`clean_stale_temps`).

Only the standard library (and the standard-library-only ``tinytamer.errors``) is
imported, so processes that must not load torch (the TVM measuring child) can use it.
"""

from __future__ import annotations

import json
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from tinytamer.errors import CorruptFileError

try:
    import fcntl
except ImportError:  # not POSIX: appends go unlocked
    fcntl = None  # type: ignore[assignment]

# How far back an append looks for the end of the last complete line, per read.
_TAIL_CHUNK = 1 << 16


def temp_path(path: Path) -> Path:
    """The temporary file this process writes before renaming it over ``path``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk.  Folders cannot be
    # opened for fsync outside POSIX; there the rename is as durable as the OS makes it.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to (by any writer that takes a
    file name); on leaving, it is fsynced and renamed over ``path``, then the folder fsynced.

    An exception removes the temporary file and leaves ``path`` as it was.  Temporary files
    of earlier writers of ``path`` that were killed are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name)
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


@contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content to; see :func:`atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` so that readers, and a run resumed after a
    kill, see the old or the new file, never half of one."""
    with atomic_open(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def clean_stale_temps(folder: str | Path, name: str) -> list[Path]:
    """Remove ``folder/.<name>.<pid>.tmp`` files whose writer process is dead; return them.

    Nothing else is touched: not other names, not folders or links, not the temporary files
    of live processes (this one included).  Outside POSIX nothing is removed, because
    there is no safe way there to ask whether a process is alive.
    """
    folder = Path(folder)
    if os.name != "posix" or not folder.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(name)}\.([1-9][0-9]{{0,8}})\.tmp", re.ASCII)
    removed = []
    with os.scandir(folder) as entries:
        for entry in entries:
            m = pattern.fullmatch(entry.name)
            if m is None:
                continue
            pid = int(m.group(1))
            if pid == os.getpid() or _pid_alive(pid):
                continue
            try:
                if not stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:  # another process cleaned it first
                continue
            removed.append(Path(entry.path))
    return removed


def _repair_tail(fd: int, path: Path) -> None:
    """Make the file end at a line boundary: a torn last line (a writer killed mid-append)
    is dropped, or terminated if it is a whole record that only lacks its newline, so the
    next record starts on a line of its own."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end, fragment = size, b""
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        chunk = os.pread(fd, end - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            fragment = chunk[cut + 1 :] + fragment
            end = start + cut + 1
            break
        fragment = chunk + fragment
        end = start
    if _parses(fragment):
        os.write(fd, b"\n")
        return
    os.ftruncate(fd, end)
    warnings.warn(
        f"{path}: dropped a torn last line ({len(fragment)} bytes, a write that was interrupted) before appending",
        RuntimeWarning,
        stacklevel=3,
    )


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False
    return True


def append_jsonl(path: str | Path, record: Any, *, default: Callable[[Any], Any] | None = None) -> None:
    """Append ``record`` as one JSON line to ``path``, flushed and fsynced.

    Appenders hold an exclusive lock (POSIX), so concurrent writers of one log interleave
    whole lines and none mistakes another's line in progress for a torn one.
    """
    path = Path(path)
    line = json.dumps(record, default=default).encode() + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        _repair_tail(fd, path)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock


def read_jsonl(path: str | Path) -> list[Any]:
    """The records of a JSON-lines file (none if it does not exist).

    A torn last line (no newline: a writer killed mid-append) is skipped with a warning; a
    bad line anywhere else raises :class:`CorruptFileError` naming the file and line.
    """
    return [record for _, record in read_jsonl_lines(path)]


def read_jsonl_lines(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, record) for each record of a JSON-lines file, as :func:`read_jsonl`
    reads them: so that a reader who finds a record wrong can say on which line it is."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CorruptFileError(f"cannot read {path}: {exc}") from None
    lines = data.split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except (ValueError, RecursionError) as exc:
            if number == len(lines):  # the unterminated tail
                warnings.warn(
                    f"{path}: skipped a torn last line (line {number}, {len(line)} bytes, "
                    "a write that was interrupted)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            raise CorruptFileError(
                f"{path}, line {number}: not a JSON record ({_reason(exc)}); "
                "the file is damaged: fix or delete that line"
            ) from None
    return records


def read_json(path: str | Path, what: str) -> Any:
    """The JSON value in ``path``; ``what`` names the file's role in errors (e.g. "run state")."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptFileError(f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise CorruptFileError(f"cannot read {what} file {path}: {exc}") from None
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CorruptFileError(f"{what} file {path} is not valid JSON, truncated or damaged ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)
