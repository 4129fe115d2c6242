"""One writer per folder: ``folder_lock(folder, purpose)`` holds ``folder/.mechscope.lock`` while
a harvest or a training run writes there, so two processes never mix their files. The lock
file is created with O_CREAT | O_EXCL and holds the pid; an flock (released by the kernel when
its holder dies, even by kill -9) makes taking over a dead holder's lock race-free."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from mechscope.errors import OutputFolderError

LOCK_FILE = ".mechscope.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process / not a pid: leave it alone
        return True
    try:  # a zombie (dead, not yet reaped) still answers kill(0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _flock(fd: int) -> bool:
    """A non-blocking exclusive flock; True without fcntl (Windows: then only the pid decides)."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _acquire(path: Path, purpose: str) -> int:
    """The descriptor of ``path``, created with O_CREAT | O_EXCL and holding our pid, or taken
    over from a holder that died. The flock (released by the kernel when its holder dies, even
    by kill -9) makes takeover race-free; the pid also refuses a hand-written lock of a live pid."""
    for _ in range(50):
        try:
            fd, holder = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644), None
        except FileExistsError:
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue  # released between the two opens
            text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
            holder = int(text) if text.isdigit() else None
        except OSError as error:
            raise OutputFolderError(f"cannot create the lock {path} ({error}): is {path.parent} writable?") from error
        # Our own pid with the flock free is a dead earlier process that had the same pid (pid 1
        # in a container after a kill -9): another holder in this process would hold the flock.
        live_holder = holder is not None and holder != os.getpid() and _pid_alive(holder)
        if not _flock(fd) or live_holder:
            os.close(fd)
            owner = f"process {holder}" if holder is not None else "another process"
            raise OutputFolderError(f"{path.parent} is in use by another {purpose} ({owner} holds {path}); two "
                                    f"writers would mix their files. Wait for it to finish, or delete {path} if "
                                    "no such process runs")
        if not _same_file(fd, path):  # the holder released (unlinked) it meanwhile: start over
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return fd
    raise OutputFolderError(f"could not take the lock {path}: it keeps changing; is another {purpose} starting?")


@contextlib.contextmanager
def folder_lock(folder: Path, purpose: str) -> Iterator[Path]:
    """Hold ``folder/.mechscope.lock`` while the block runs (a second writer is refused with an
    OutputFolderError naming the holder's pid); released on exit and on exceptions."""
    path = Path(folder) / LOCK_FILE
    fd = _acquire(path, purpose)
    try:
        yield path
    finally:
        if _same_file(fd, path):  # unlink before closing: nobody may flock a file we still list
            path.unlink(missing_ok=True)
        os.close(fd)
