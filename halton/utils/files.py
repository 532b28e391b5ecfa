"""Files the project writes and reads: one atomic writer (the permissions a plain ``open()`` gives; a full disk
answered by :class:`DiskFull`, one line), a clear one-line error for an input file that is not there or not UTF-8
text. Standard library only: the entry points' checks import it before anything heavy."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from pathlib import Path

from halton.utils.hub import hub_file, is_hub_path


def default_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file under the process umask (0644 under 022)."""
    try:  # Linux: read the umask without changing it (os.umask would, for a moment, for every thread)
        with open("/proc/self/status") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def unused_path(path: str | Path, overwrite: bool = False) -> Path:
    """``path``, or when a file is there already (and not ``overwrite``) the first free ``<stem>_<n><suffix>``: an
    output is never replaced unless asked."""
    path = Path(path)
    candidate, number = path, 1
    while not overwrite and candidate.exists():
        candidate, number = path.with_name(f"{path.stem}_{number}{path.suffix}"), number + 1
    return candidate


# A write refused because the storage is full, by errno: what to do about it.
DISK_FULL = {
    errno.ENOSPC: "free space on that file system",
    errno.EDQUOT: "free space within your disk quota (or ask for a larger one)",
    errno.EFBIG: "raise the file size limit (ulimit -f) or use a file system that takes larger files",
}

RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust writers (safetensors) report an errno


def errno_text(code: int) -> str:
    """``No space left on device (ENOSPC)``."""
    return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"


class DiskFull(OSError):
    """A write that failed for want of space (:data:`DISK_FULL`); its message is one line naming the file, the
    cause and what to do, ``elsewhere`` saying how to write somewhere else (e.g. ``paths.runs_dir=DIR``).
    ``atomic``: the write was :func:`atomic_write`'s, so its temporary is removed and the file is as it was."""

    def __init__(self, path: str | Path | None, cause: OSError, elsewhere: str = "", atomic: bool = False):
        super().__init__(cause.errno, cause.strerror or os.strerror(cause.errno), None if path is None else str(path))
        self.path, self.cause = None if path is None else Path(path), cause
        self.elsewhere, self.atomic = elsewhere, atomic

    def __str__(self) -> str:
        also = f", or {self.elsewhere}" if self.elsewhere else ""
        kept = "nothing half-written was kept; " if self.atomic else "it may be left incomplete; "
        return (f"cannot write {self.path or 'a file'}: {errno_text(self.errno)}; {DISK_FULL[self.errno]}{also}, "
                f"and run again ({kept}files written before are intact)")

    def where(self, elsewhere: str) -> DiskFull:
        """The same failure, saying how to write elsewhere (the option that chooses the folder)."""
        return DiskFull(self.path, self.cause, elsewhere, self.atomic)


def as_disk_full(error: BaseException | None) -> DiskFull | None:
    """The full disk (ENOSPC, EDQUOT, EFBIG) behind ``error``, as a :class:`DiskFull`: ``error`` itself or an
    exception it was raised from or while handling (torch.save reports a failed write as ``unexpected pos``, the
    OSError only chained); None when there is none."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFull):
            return error
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return DiskFull(error.filename, error)
        code = RUST_OS_ERROR.search(str(error))  # safetensors' writer: "... File too large (os error 27)"
        if code and int(code[1]) in DISK_FULL:
            return DiskFull(None, OSError(int(code[1]), os.strerror(int(code[1]))))
        error = error.__cause__ or error.__context__
    return None


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``, so a crash never leaves a half-written file. The file
    gets the usual permissions (mkstemp's temporary is private to its owner): on a cluster, colleagues' jobs read
    checkpoints, shards and results. A write that fails for want of space raises :class:`DiskFull` (the
    temporary removed, ``path`` as it was)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except Exception as error:
        full = as_disk_full(error)
        if full is None or full is error:
            raise
        raise DiskFull(path, full.cause, atomic=True) from error
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def remove_stale_temporaries(folder: str | Path, name: str = "*") -> list[Path]:
    """Temporary files that :func:`atomic_write` left in ``folder`` when its writer was killed mid-write (kill -9,
    OOM killer, time limit); each can be as big as a checkpoint. Call it only where nothing is being written."""
    stale = sorted(Path(folder).glob(f".{name}.*.tmp")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def require_file(path: str | Path | None, what: str = "file", hint: str = "") -> Path:
    """The path as a Path (``hf://owner/repo/file``: its copy in the Hugging Face cache, fetched when missing), or
    a one-line FileNotFoundError naming it (followed by ``hint``)."""
    if path is None or str(path) in ("", "None", "null"):
        raise FileNotFoundError(f"no {what} given; pass {what}=PATH")
    if is_hub_path(str(path)):
        return hub_file(str(path), what)
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}{hint}")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{what} {path} is not readable (permissions {path.stat().st_mode & 0o777:o})")
    return path


def read_utf8(path: str | Path, key: str) -> str:
    """The text of the file that option ``key`` names, or a one-line ValueError naming the option, the file and
    the byte offset where it stops being UTF-8."""
    data = Path(path).expanduser().read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{key}={path} is not UTF-8 text: byte 0x{data[error.start]:02x} at offset {error.start} "
                         f"({error.reason}); allowed: a UTF-8 text file (convert it, e.g. iconv -f latin1 -t utf-8)"
                         ) from None


def read_lines(path: str | Path, key: str) -> list[str]:
    """The entries of a UTF-8 text file (prompts), one per line, stripped; blank lines and lines starting with #
    skipped (:func:`read_utf8` refuses a file that is not UTF-8)."""
    lines = (line.strip() for line in read_utf8(path, key).splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while data := handle.read(block):
            digest.update(data)
    return digest.hexdigest()

