"""Files, written and read one way everywhere: nothing half-written, every bad line named.

    atomic_write(path, data)     bytes, text or a writer f(binary file) -> path, all or nothing
    atomic_json(path, obj)       the same for JSON (indented, newline-terminated)
    atomic_files({path: data})   several files, all or none (`mmemb embed`'s vectors + ids + texts)
    staging_dir(target)          a fresh folder beside `target`; `replace_dir(staged, target)` swaps it in
    read_jsonl(path)             (where, object) per non-blank line, where = "path:line"; streamed

An atomic write goes to a unique temporary name beside its target (two writers never share one), is fsync'ed,
renamed over the target, and the folder is fsync'ed: after a crash a reader finds the old file or the new
one, never a torn one, and a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .types import InputError

Data = bytes | str | Callable[[BinaryIO], object]


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """The sha256 of a file's bytes, read `chunk` bytes at a time (memory stays bounded)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, data: Data) -> Path:
    """Write `data` (bytes, UTF-8 text, or a function that writes to a binary file) to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _stage(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_json(path: Path, obj: object, indent: int | None = 2) -> Path:
    return atomic_write(path, json.dumps(obj, indent=indent) + "\n")


def atomic_files(files: dict[Path, Data]) -> None:
    """Stage every file first, then rename them all: a failure while staging leaves none of them."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            staged.append((_stage(path, data), path))
        for tmp, path in staged:
            os.replace(tmp, path)
        for folder in {path.parent for _, path in staged}:
            _fsync_dir(folder)
    finally:
        for tmp, _ in staged:
            _remove(tmp)


def staging_dir(target: Path) -> Path:
    """A new, empty folder beside `target` (same file system) to build its next version in."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))


def replace_dir(staged: Path, target: Path) -> Path:
    """Swap the finished `staged` folder in as `target` (the old one, if any, is removed first)."""
    target = Path(target)
    for f in Path(staged).rglob("*"):
        if f.is_file():
            _fsync_file(f)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staged, target)
    _fsync_dir(target.parent)
    return target


def check_outputs(outputs: list[Path], inputs: list[Path] = (), flag: str = "--out") -> None:
    """Refuse, before any work, outputs that cannot be written (under a regular file, in a read-only or
    virtual folder such as /proc) or that would overwrite an input. The nearest existing folder of each is
    probed with a temporary file that leaves nothing behind."""
    sources = {Path(i).resolve() for i in inputs}
    probed: set[Path] = set()
    for out in outputs:
        out = Path(out)
        if out.resolve() in sources:
            raise InputError(f"{flag} {out}: it would overwrite the input {out}; write the outputs elsewhere")
        if out.is_dir():
            raise InputError(f"{flag} {out}: is a folder; give a file name")
        folder = out.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if folder in probed:
            continue
        if not folder.is_dir():
            raise InputError(f"{flag} {out}: {folder} is a file, not a folder; give another path")
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise InputError(
                f"{flag} {out}: cannot write in {folder} ({e.strerror}); give another path"
            ) from None
        probed.add(folder)


def read_jsonl(
    path: Path, error: type[Exception] = InputError, torn_tail: bool = False
) -> Iterator[tuple[str, dict]]:
    """(where, object) for each non-blank line of a JSON Lines file, streamed; where = "path:line". A line that
    is not a JSON object raises `error` naming it. A UTF-8 byte-order mark is accepted. torn_tail: a last line
    without its newline (a writer was killed mid-line) is skipped instead of parsed."""
    path = Path(path)
    try:
        f = open(path, "rb")  # lines as bytes, decoded one by one: an error names its own line
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        for n, raw in enumerate(f, start=1):
            if torn_tail and not raw.endswith(b"\n"):
                return
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise error(f"{path}:{n}: JSON nested too deeply") from None
            if not isinstance(obj, dict):
                raise error(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            yield f"{path}:{n}", obj


def _stage(path: Path, data: Data) -> str:
    """Write `data` to a unique temporary file beside `path`, flushed to disk; returns its name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the file it replaces was a plain, readable one
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (where the platform lets a folder be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(tmp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
