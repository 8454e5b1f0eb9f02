"""Whole files this project writes and the hashes it records of the files it reads.

`write_atomically` writes a file through a temporary file in the same folder, flushed to disk
and renamed over the target, so a crash or a full disk mid-write never leaves a truncated
checkpoint or pickle, and an existing file is replaced only by a complete new one; what a
writer killed outright (SIGKILL) left behind is removed by the next write, and only once its
process is gone, so two writers never remove each other's work. The new file gets the
permissions an ordinary `open(path, "w")` would give it (0666 less the umask):
`tempfile.mkstemp` creates its file readable by its owner only, which, kept through the rename,
made every checkpoint and metadata pickle unreadable to the other users of a shared data folder.
`make_folder` creates an output folder a user named, or says which option to change.
`file_sha256` is the SHA-256 that runs and evaluations record of every file they were made from.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

__all__ = ["write_atomically", "temporary_prefix", "remove_leftovers", "default_permissions",
           "make_folder", "file_sha256"]


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


def temporary_prefix(path: Path) -> str:
    """The name prefix of the temporary file or folder `path` is written through: hidden, and
    naming this process, so that a later process can tell a dead writer's leftovers
    (`remove_leftovers`) from a live writer's work."""
    return f".{path.name}.tmp-{os.getpid()}-"


def remove_leftovers(path: Path) -> None:
    """Remove the temporaries of `path` (`temporary_prefix`) whose process is gone: a writer
    killed outright (SIGKILL, power loss) had no chance to. A live writer's are kept."""
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.tmp-*-*"):
        pid = leftover.name[len(f".{path.name}.tmp-"):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # another user's process: alive
        return True
    return True


def write_atomically(path: Union[str, Path], write: Callable[[BinaryIO], None]) -> Path:
    """Create or replace `path` with what `write(stream)` writes, all or nothing.

    The folder is created if needed. On any failure (including KeyboardInterrupt) the temporary
    file is removed, an existing `path` is left as it was, and the error propagates; what a
    writer of `path` killed outright left is removed first (`remove_leftovers`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    handle, temporary = tempfile.mkstemp(prefix=temporary_prefix(path), dir=path.parent)
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
