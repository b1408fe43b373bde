"""One run per output folder: an advisory lock that makes a second run on the same ``--out`` stop with a clear message.

Two trainings writing one folder would leave a mix of both (checkpoints of one seed, reports of the other). A run
takes the folder's lock for as long as it writes there::

    with RunLock("runs/mine", what="train all"):
        ...                                  # train, export, write reports

A second process asking for the same folder gets a :class:`RunLockError` naming the first run (pid, machine, start
time, command line) and what to do. The lock is ``flock`` on ``folder/.lock``: the operating system releases it when
its process ends, however it ends (even ``kill -9``), so a lock file left behind never blocks a later run; the file
just keeps describing its last owner.

Within one process the lock is re-entrant: a command that holds the lock on ``runs/mine`` may call code (such as
``Trainer.fit``) that locks ``runs/mine`` again; the folder is released when the outermost holder lets go.
Where ``fcntl`` or ``flock`` is not available (Windows, some network file systems) the lock only records its owner and
warns that it cannot exclude other runs.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".lock"

# folder (resolved path) -> {"fd": int or None, "count": int, "pid": int}; the locks this process holds
_HELD: dict[str, dict] = {}
_HELD_GUARD = threading.Lock()


class RunLockError(RuntimeError):
    """Another process holds the folder's lock. ``folder`` and ``owner`` (the lock file's record, or ``{}``)."""

    def __init__(self, message: str, folder: Path, owner: dict):
        super().__init__(message)
        self.folder, self.owner = folder, owner

    def __reduce__(self):  # picklable, so that distributed training can send it from rank 0 to the other ranks
        return type(self), (str(self), self.folder, self.owner)


class RunLock:
    """An advisory, re-entrant lock on an output folder, held by one process at a time.

    :param folder: the run's output folder; created if missing.
    :param what: a few words for the lock file and for the message another run gets (e.g. ``"training decoder"``).

    Use it as a context manager, or call :meth:`acquire` and :meth:`release`.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "a dalle2_edu run"):
        self.folder = Path(folder)
        self.what = what
        self._key: str | None = None

    @property
    def path(self) -> Path:
        """The lock file, ``folder/.lock``."""
        return self.folder / LOCK_NAME

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._key is not None

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`RunLockError` at once (never waits) when another process holds it.

        :raises RunLockError: another process holds the folder.
        :raises OSError: the folder cannot be created or written (the message says which and why).
        """
        if self._key is not None:
            raise RuntimeError(f"this RunLock on '{self.folder}' is already held; use a new RunLock object to nest")
        _make_folder(self.folder)
        key = os.path.realpath(self.folder)
        with _HELD_GUARD:
            entry = _HELD.get(key)
            if entry is not None and entry["pid"] == os.getpid():
                entry["count"] += 1  # this process holds the folder already: nest
                self._key = key
                return self
            fd = self._lock_file()
            _HELD[key] = {"fd": fd, "count": 1, "pid": os.getpid()}
            self._key = key
        return self

    def release(self) -> None:
        """Let go of the lock (the folder is free once the outermost holder in this process releases it)."""
        key, self._key = self._key, None
        if key is None:
            return
        with _HELD_GUARD:
            entry = _HELD.get(key)
            if entry is None:
                return
            entry["count"] -= 1
            if entry["count"] > 0:
                return
            del _HELD[key]
            fd = entry["fd"]
        if fd is not None:
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.folder)!r}, what={self.what!r}, held={self.held})"

    def _lock_file(self) -> int | None:
        """Open and flock ``folder/.lock``, then write this process's record into it. Returns the open descriptor."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise _folder_error(self.folder, err) from err
        if fcntl is None:
            warnings.warn(
                f"cannot lock '{self.folder}' on this system (no fcntl): nothing stops a second run from writing "
                "into the same folder",
                stacklevel=4,
            )
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                owner = read_lock_info(self.folder)
                raise RunLockError(_busy_message(self.folder, owner, self.what), self.folder, owner) from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    raise
                warnings.warn(
                    f"the file system of '{self.folder}' does not support locks ({err.strerror}): nothing stops a "
                    "second run from writing into the same folder",
                    stacklevel=4,
                )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": _command_line(),
            "what": self.what,
        }
        data = (json.dumps(record) + "\n").encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError:
            pass  # the record is a courtesy; the lock itself is what matters
        return fd


def read_lock_info(folder: str | os.PathLike) -> dict:
    """The record in ``folder/.lock`` (pid, host, started, command, what) of the run that holds or last held it;
    ``{}`` when there is no readable record."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text(encoding="utf-8")
        info = json.loads(text)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def held_folders() -> list[Path]:
    """The folders this process holds locks on."""
    with _HELD_GUARD:
        return [Path(key) for key, entry in _HELD.items() if entry["pid"] == os.getpid()]


# ----------------------------------------------------------------------------------------------------------------------
# helpers


def _make_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"'{folder}' exists and is not a folder: choose another output folder (--out)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _folder_error(folder, err) from err


def _folder_error(folder: Path, err: OSError) -> OSError:
    reason = err.strerror or str(err)
    return type(err)(
        err.errno, f"cannot write into '{folder}' ({reason}): choose a folder you can write to as the output (--out)"
    )


def _command_line() -> str:
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(str(a) for a in argv)


def _busy_message(folder: Path, owner: dict, what: str) -> str:
    if owner.get("pid"):
        host = owner.get("host")
        where = f" on {host}" if host and host != socket.gethostname() else ""
        who = (
            f"pid {owner['pid']}{where} ({owner.get('what', 'a run')}, started {owner.get('started', '?')}), "
            f"command: {owner.get('command', '?')}"
        )
        stop = f"stop it (kill {owner['pid']}{where})"
    else:
        who = "another process (its lock file names no owner yet)"
        stop = "stop it"
    return (
        f"'{folder}' is in use by another run: {who}. Two runs writing one folder would mix their files, so "
        f"{what} will not start here. Wait for that run to finish, {stop}, or give this run another output "
        "folder (--out)."
    )
