"""One writer per run folder: an exclusive lock that the kernel releases when its process dies.

``train`` holds ``RUN/.cloudcps.lock`` from before it touches the folder until it ends, on every
exit path. The lock is ``flock(2)`` on that file, so a process killed with SIGKILL (or a power
cut) leaves no lock that blocks the next run: its stale file is recognised (no process holds it)
and taken over. Where the file system has no ``flock`` (some network mounts) the file is created
exclusively and holds the owner's host and pid, and a stale one of a dead process on this host is
replaced.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from cloudcps.errors import InputError
from cloudcps.io import _pid_alive

log = logging.getLogger(__name__)

LOCK_NAME = ".cloudcps.lock"

# flock belongs to the open file, which forked children (DataLoader workers) share: they close
# their copy at once, so a killed run's workers never keep its folder locked
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)
_HOST = socket.gethostname() or "host"


def _holder(path: Path) -> str:
    """Who holds the lock at ``path``, for the error message."""
    try:
        info = json.loads(path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(info["since"])))
        return f"pid {info['pid']} on {info['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class RunLock:
    """An exclusive lock on ``folder`` (created if missing) for the life of a command.

    Args:
        folder: the run folder.
        option: the option that named it, for the message (``--out``).
    """

    def __init__(self, folder: Path, option: str = "--out") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.option = option
        self._fd: int | None = None
        self._exclusive_file = False

    @property
    def held(self) -> bool:
        return self._fd is not None or self._exclusive_file

    def _busy(self) -> InputError:
        return InputError(
            f"{self.option} {self.folder} is in use by another cloudcps run "
            f"({_holder(self.path)}); wait for it to end, or choose another {self.option}"
        )

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy() from None
            except (ImportError, OSError) as exc:  # no flock here: an exclusive pid file
                empty = os.fstat(fd).st_size == 0
                os.close(fd)
                if isinstance(exc, OSError) and exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                    raise
                if empty:  # the file just opened for flock: no holder's record in it
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                self._acquire_pid_file()
                return
            try:  # the file may have been removed (and re-made) by the holder releasing it
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            stale = os.fstat(fd).st_size > 0
            if stale:
                log.info("took over the stale lock %s (%s)", self.path, _holder(self.path))
            os.ftruncate(fd, 0)
            os.write(fd, self._record().encode())
            self._fd = fd
            _HELD.add(fd)
            return
        raise self._busy()  # pragma: no cover - 20 lost races in a row

    def _record(self) -> str:
        return json.dumps({"pid": os.getpid(), "host": _HOST, "since": time.time()})

    def _acquire_pid_file(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
            info = json.loads(self.path.read_text() or "{}")
            if info.get("host") == _HOST and not _pid_alive(int(info.get("pid", 0))):
                log.info("removed the stale lock %s of pid %s", self.path, info.get("pid"))
                self.path.unlink()
        # the record is written first and linked into place, so the lock file is never seen
        # without its holder (no empty file that would block every later run)
        tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
        tmp.write_text(self._record())
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            raise self._busy() from None
        finally:
            tmp.unlink(missing_ok=True)
        self._exclusive_file = True

    def release(self) -> None:
        """Give the lock up (removing its file while still holding it, so no one who opens the
        file afterwards shares a stale inode)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            _HELD.discard(self._fd)
            os.close(self._fd)
            self._fd = None
        elif self._exclusive_file:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self._exclusive_file = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:  # a Trainer dropped without fit(): the fd goes, the file too
        with contextlib.suppress(Exception):
            self.release()
