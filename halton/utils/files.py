"""Files the project writes and reads: one atomic writer (the permissions a plain ``open()`` gives), and a clear
one-line error for an input file that is not there. Standard library only: the entry points' checks import it
before anything heavy."""

from __future__ import annotations

import hashlib
import os
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


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``, so a crash never leaves a half-written file. The file
    gets the usual permissions (mkstemp's temporary is private to its owner): on a cluster, colleagues' jobs read
    checkpoints, shards and results."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
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


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while data := handle.read(block):
            digest.update(data)
    return digest.hexdigest()


def reads_as_path(name: str) -> bool:
    """Whether a model name is written as a path (absolute, ./ ../ ~, backslashes, or more than one folder deep)
    rather than a Hugging Face hub name (``name``, ``org/name`` or ``hf://org/name``): such a name must exist here."""
    if is_hub_path(name):
        return False
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
