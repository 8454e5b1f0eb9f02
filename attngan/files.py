"""Whole files this project writes and the hashes it records of the files it reads.

`write_atomically` writes a file through a temporary file in the same folder, flushed to disk
and renamed over the target, so a crash or a full disk mid-write never leaves a truncated
checkpoint or pickle, and an existing file is replaced only by a complete new one. The new file
gets the permissions an ordinary `open(path, "w")` would give it (0666 less the umask):
`tempfile.mkstemp` creates its file readable by its owner only, which, kept through the rename,
made every checkpoint and metadata pickle unreadable to the other users of a shared data folder.
`make_folder` creates an output folder a user named, or says which option to change.
`file_sha256` is the SHA-256 that runs and evaluations record of every file they were made from.
"""
from __future__ import annotations

import glob
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

__all__ = ["write_atomically", "default_permissions", "make_folder", "file_sha256"]


def _umask() -> int:
    """The process's umask, read from /proc where it is there: setting and restoring it, the
    only other way, lets a file another thread creates in between escape it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def default_permissions(mode: int = 0o666) -> int:
    """`mode` less the process's umask: what `open` (0666) or `mkdir` (0777) would give."""
    return mode & ~_umask()


def make_folder(folder: Union[str, Path], option: str) -> Path:
    """Create `folder` (and its parents) for output the user pointed at with `option`; one that
    cannot be made is a ValueError naming it and the option to change."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot make the folder {folder} ({error.strerror or error}); pass "
                         f"another {option}") from None
    return folder


def write_atomically(path: Union[str, Path], write: Callable[[BinaryIO], None]) -> Path:
    """Create or replace `path` with what `write(stream)` writes, all or nothing.

    The folder is created if needed. On any failure (including KeyboardInterrupt) the temporary
    file is removed, an existing `path` is left as it was, and the error propagates; the
    temporary files of an earlier write of `path` that was killed outright are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)        # left by a process killed while writing `path`
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, default_permissions())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: Union[str, Path]) -> str:
    """The SHA-256 of a file's bytes, in hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
