"""One run per run folder at a time: train.py holds ``<run folder>/.run.lock`` from before Hydra writes its config
and log there until it exits, so a second ``train.py`` with the same ``name`` (a job resubmitted while the first
still runs) is refused in one line naming the holder, and never writes into the first run's metrics, log or
checkpoints. With the lock held, temporaries found in the folder were left by a dead run.

The lock is an operating-system lock (``filelock``: ``flock``, or its marker-file fallback where the file system has
no ``flock``), so the kernel releases it however the holder ends, ``kill -9`` included. Beside it,
``.run.lock.owner`` names the holder (host, PID, start time) for the message; a holder that is gone leaves only that
file, which the next run replaces, saying so. Standard library and ``filelock`` only: the entry point takes the lock
before anything heavy is imported."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from halton.utils.files import atomic_write

LOCK_NAME = ".run.lock"
OWNER_NAME = ".run.lock.owner"
# How long to wait for a lock whose recorded holder is dead on this host: processes it forked (data loader workers)
# hold the inherited lock until they notice and exit, within seconds.
ORPHAN_WAIT_S = 30.0
# Variables that give a process's rank (torchrun, SLURM, Lightning's own launcher): rank 0 of the run, or the process
# that launches the others, takes the lock; the others run inside the run it holds.
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")
_notes: list[str] = []


class RunFolderInUse(ValueError):
    """Another live process holds the run folder."""


def launching_process() -> bool:
    """Whether this process is rank 0 of a run, or the one that starts the other ranks (a plain ``python train.py``)."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "0").strip() or "0"
        if value.isdigit() and int(value) != 0:
            return False
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RunFolderLock:
    """``with RunFolderLock(folder).acquire():`` holds ``folder`` for this process; refused with
    :class:`RunFolderInUse` (one line naming the holder's host and PID) while another process holds it."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.lock = FileLock(self.folder / LOCK_NAME)
        self.owner_path = self.folder / OWNER_NAME
        self._sigterm = None

    def owner(self) -> dict:
        """The recorded holder: host, pid, started (empty when none is recorded or the record is unreadable)."""
        try:
            owner = json.loads(self.owner_path.read_text())
            return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else {}
        except (OSError, ValueError):
            return {}

    def _holder_is_dead(self, owner: dict) -> bool:
        return owner.get("host") == socket.gethostname() and not pid_alive(owner["pid"])

    def _describe(self, owner: dict) -> str:
        if not owner:
            return "another process (its host and PID are not recorded yet)"
        return f"PID {owner['pid']} on host {owner.get('host', '?')} (since {owner.get('started', '?')})"

    def acquire(self) -> RunFolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            owner = self.owner()
            if not (owner and self._holder_is_dead(owner)):
                raise RunFolderInUse(
                    f"run folder {self.folder} is in use by {self._describe(owner)}; one run per folder: wait for "
                    "it to end, or give this run another name=NAME") from None
            try:  # its recorded holder is dead: a process it started still holds the lock, for seconds
                self.lock.acquire(timeout=ORPHAN_WAIT_S)
            except Timeout:
                raise RunFolderInUse(
                    f"run folder {self.folder} is locked by a process started by {self._describe(owner)}, which is "
                    f"no longer running; end that process (fuser -v {self.folder / LOCK_NAME}) and start again"
                ) from None
        previous = self.owner()
        if previous and previous.get("pid") != os.getpid():
            state = "no longer running" if self._holder_is_dead(previous) else "its lock released"
            _notes.append(f"took over run folder {self.folder} from {self._describe(previous)}, {state}")
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            atomic_write(self.owner_path, lambda tmp: Path(tmp).write_text(json.dumps(me) + "\n"))
        except BaseException:  # a full disk: the run does not start, and holds nothing
            self.lock.release()
            raise
        # Before training, SIGTERM would end the process without unwinding: exit through SystemExit instead, so the
        # lock is released here too (during training the preemption callback handles SIGTERM).
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def release(self) -> None:
        if not self.lock.is_locked:
            return
        if self.owner().get("pid") == os.getpid():
            self.owner_path.unlink(missing_ok=True)
        self.lock.release()
        if self._sigterm is not None and signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:
            signal.signal(signal.SIGTERM, self._sigterm)

    def __enter__(self) -> RunFolderLock:
        return self if self.lock.is_locked else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _exit_on_sigterm(signum, frame) -> None:
    sys.exit(128 + signal.SIGTERM)


def notes() -> list[str]:
    """What taking the lock found (a dead run's lock taken over), for the run's log once logging is set up."""
    taken, _notes[:] = list(_notes), []
    return taken

