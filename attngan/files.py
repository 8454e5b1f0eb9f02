"""Whole files this project writes and the hashes it records of the files it reads.

`write_atomically` writes a file through a temporary file in the same folder, flushed to disk
and renamed over the target, so a crash or a full disk mid-write never leaves a truncated
checkpoint or pickle, and an existing file is replaced only by a complete new one; what a
writer killed outright (SIGKILL) left behind is removed by the next write, and only once its
process is gone, so two writers never remove each other's work. The new file gets the
permissions an ordinary `open(path, "w")` would give it (0666 less the umask):
`tempfile.mkstemp` creates its file readable by its owner only, which, kept through the rename,
made every checkpoint and metadata pickle unreadable to the other users of a shared data folder.
A file that cannot be written (no permission, a read-only or full disk) is one `OutputError`
naming it, the reason and the fix: `require_writable` checks an output folder before any work,
`write_atomically` reports a failure mid-write (the previous file intact). `make_folder` creates
an output folder a user named, or says which option to change. `hold_folder` gives one process at
a time a folder (an advisory lock). `file_sha256` is the SHA-256 that runs and evaluations record
of every file they were made from.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, Union

__all__ = [
    "OutputError",
    "FolderInUse",
    "write_atomically",
    "write_text_atomically",
    "temporary_prefix",
    "remove_leftovers",
    "default_permissions",
    "make_folder",
    "require_writable",
    "output_error",
    "hold_folder",
    "file_sha256",
]

# Why a write failed, by errno, and what to do about it.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_ALLOWED = (errno.EACCES, errno.EPERM, errno.EROFS)


class OutputError(ValueError):
    """A file or folder that cannot be written (the message names it, why, and the fix)."""


class FolderInUse(ValueError):
    """A folder another live process holds (`hold_folder`)."""


def _os_error_in(error: BaseException) -> Optional[OSError]:
    """`error` itself or the first OSError it was raised from (torch.save wraps the stream's
    OSError in a RuntimeError of its own)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def output_error(
    path: Union[str, Path], error: BaseException, fix: str = "choose another output path"
) -> Optional[OutputError]:
    """The OutputError for a failure to write `path`, or None when `error` is not an operating
    system's refusal to write (a bug, which should propagate as it is)."""
    cause = _os_error_in(error)
    if cause is None:
        return None
    reason = cause.strerror or os.strerror(cause.errno)
    if cause.errno in _NO_SPACE:
        advice = f"free space on that disk or {fix}"
    elif cause.errno in _NOT_ALLOWED:
        advice = f"make it writable or {fix}"
    else:
        advice = fix
    return OutputError(f"cannot write {path} ({reason}); {advice}")


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
    cannot be made is an OutputError naming it and the option to change."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder; pass another {option}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"cannot make the folder {folder} ({error.strerror or error}); pass another {option}"
        ) from None
    return folder


def require_writable(folder: Union[str, Path], option: str) -> Path:
    """Create `folder` if needed and check that files can be created in it, before any work
    whose results would go there; an OutputError names the folder and `option` otherwise."""
    folder = make_folder(folder, option)
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=temporary_prefix(folder / "probe")):
            pass
    except OSError as error:
        raise output_error(folder, error, f"pass another {option}") from None
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
        pid = leftover.name[len(f".{path.name}.tmp-") :].split("-", 1)[0]
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
    except PermissionError:  # another user's process: alive
        return True
    return True


def write_atomically(
    path: Union[str, Path], write: Callable[[BinaryIO], None], fix: str = "write it elsewhere"
) -> Path:
    """Create or replace `path` with what `write(stream)` writes, all or nothing.

    The folder is created if needed. On any failure (including KeyboardInterrupt) the temporary
    file is removed, an existing `path` is left as it was, and the error propagates: as an
    OutputError ending in `fix` when the system refused the write (no permission, a full or
    read-only disk). What a writer of `path` killed outright left is removed first
    (`remove_leftovers`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(path)
        handle, temporary = tempfile.mkstemp(prefix=temporary_prefix(path), dir=path.parent)
    except OSError as error:
        raise output_error(path, error, fix) from None
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, default_permissions())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        failure = output_error(path, error, fix)
        if failure is None:
            raise
        raise failure from None
    return path


def write_text_atomically(
    path: Union[str, Path], text: str, fix: str = "write it elsewhere"
) -> Path:
    """`write_atomically` for a UTF-8 text file."""
    data = text.encode("utf-8")
    return write_atomically(path, lambda stream: stream.write(data), fix)


LOCK_NAME = ".attngan-lock"
_held: set[Path] = set()  # the folders this process holds


def _owner(handle) -> dict:
    handle.seek(0)
    try:
        owner = json.loads(handle.read() or "{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
    return (
        f"`{owner.get('command', '?')}` (pid {owner.get('pid', '?')} on "
        f"{owner.get('host', '?')}, since {started})"
    )


@contextlib.contextmanager
def hold_folder(folder: Union[str, Path], what: str, command: str) -> Iterator[Path]:
    """Hold `folder` (created if needed) for this process while the block runs: another
    process, or another block of this one, asking for it gets a FolderInUse naming the holder,
    and changes nothing. The lock is the kernel's (a POSIX lock on <folder>/.attngan-lock, which
    records the holder's pid and host): a holder killed outright releases it, and its record is
    taken over, saying so. Data-loader workers forked meanwhile do not inherit it. A folder made
    here that holds nothing else at the end is removed. `what` names the folder in messages
    ("--out folder"), `command` the holder."""
    created = not Path(folder).exists()
    folder = make_folder(folder, what)
    key = folder.resolve()
    path = folder / LOCK_NAME
    try:
        handle = open(path, "a+")
    except OSError as error:
        raise output_error(path, error, f"pass another {what}") from None
    with handle:
        try:
            if key in _held:
                raise BlockingIOError
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if not isinstance(error, BlockingIOError) and error.errno not in (
                errno.EACCES,
                errno.EAGAIN,
            ):
                raise output_error(path, error, f"pass another {what}") from None
            raise FolderInUse(
                f"{folder} is in use by {_describe(_owner(handle))}; wait until "
                f"it ends or pass another {what}"
            ) from None
        previous = _owner(handle)
        if previous.get("pid") is not None:
            print(
                f"attngan: taking over {folder} from {_describe(previous)}, which ended "
                "without releasing it",
                file=sys.stderr,
            )
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "command": command,
                    "since": time.time(),
                }
            )
        )
        handle.flush()
        _held.add(key)
        try:
            yield folder
        finally:
            _held.discard(key)
            if created and [entry.name for entry in folder.iterdir()] == [LOCK_NAME]:
                path.unlink()  # a run that wrote nothing leaves no folder behind
                folder.rmdir()
            else:
                handle.seek(0)
                handle.truncate()
                handle.flush()


def file_sha256(path: Union[str, Path]) -> str:
    """The SHA-256 of a file's bytes, in hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
