"""Files on the Hugging Face Hub by name, in the grammar of huggingface_hub's ``HfFileSystem``:
``hf://[datasets/|spaces/]<owner>/<repo>[@<revision>]/<file>`` (a checkpoint, a tokenizer) or the same without
``/<file>`` (a model folder in the Hugging Face format); a revision is a branch, tag or commit (``refs/pr/1``
written ``refs%2Fpr%2F1``). ``huggingface_hub`` fetches them once into its usual cache (``HF_HOME``,
``HF_HUB_CACHE``) and reuses them; with ``HF_HUB_OFFLINE=1`` only the cache is read."""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from halton.utils.errors import first_line

PREFIX = "hf://"
# A model folder in the Hugging Face format (huggingface_hub's CONFIG_NAME and SAFETENSORS_SINGLE_FILE)
MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"


def is_hub_path(path) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


# HfFileSystem's prefixes of repositories that are not models
REPO_TYPES = {"datasets/": "dataset", "spaces/": "space"}
FILE_GRAMMAR = "hf://[datasets/]<owner>/<repo>[@<revision>]/<file>"
GRAMMAR = f"{FILE_GRAMMAR} (a file) or hf://<owner>/<repo>[@<revision>] (a model folder saved with save_pretrained)"


@dataclass(frozen=True)
class HubName:
    """A parsed ``hf://`` name: the repository, its type (huggingface_hub's model, dataset or space), the revision
    (None: the default branch) and the file in it (None: the repository, a model folder)."""

    repo_id: str
    repo_type: str = "model"
    revision: str | None = None
    filename: str | None = None

    def file(self, filename: str) -> HubName:
        return dataclasses.replace(self, filename=filename)

    def __str__(self) -> str:
        prefix = next((p for p, t in REPO_TYPES.items() if t == self.repo_type), "")
        revision = f"@{quote(self.revision, safe='')}" if self.revision else ""
        return f"{PREFIX}{prefix}{self.repo_id}{revision}" + (f"/{self.filename}" if self.filename else "")


def parse(path: str) -> HubName:
    """The parts of ``hf://[datasets/|spaces/]owner/repo[@revision][/file]``, or a one-line ValueError."""
    prefix = next((p for p in REPO_TYPES if path[len(PREFIX):].startswith(p)), "")
    owner, _, rest = path[len(PREFIX) + len(prefix):].partition("/")
    repo, _, filename = rest.partition("/")
    name, at, revision = repo.partition("@")
    if not owner or not name or (at and not revision) or (filename and not all(filename.split("/"))):
        raise ValueError(f"{path} is not a hub name; allowed: {GRAMMAR}")
    return HubName(f"{owner}/{name}", REPO_TYPES.get(prefix, "model"), unquote(revision) or None, filename or None)


def hub_parts(path: str) -> HubName | None:
    """:func:`parse` without its error: None for a malformed hub name."""
    try:
        return parse(path)
    except ValueError:
        return None


def reads_as_path(name: str) -> bool:
    """Whether a model name is written as a path (absolute, ./ ../ ~, backslashes, or more than one folder deep)
    rather than a Hugging Face hub name (``name``, ``org/name`` or ``hf://org/name``): such a name must exist here."""
    if is_hub_path(name):
        return False
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def hub_model(name: str) -> tuple[str, str | None]:
    """What transformers' ``from_pretrained`` takes for ``hf://org/name[@revision]``: (``org/name``, revision);
    other names (a local folder, ``org/name``) as given, with no revision."""
    if not is_hub_path(name):
        return name, None
    parsed = parse(name.rstrip("/"))
    return parsed.repo_id, parsed.revision


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    return value.upper() in ("1", "ON", "YES", "TRUE") if value is not None else bool(constants.HF_HUB_OFFLINE)


def hub_file(path: str, what: str = "file", **download) -> Path:
    """The local copy of ``hf://owner/repo/file``, downloaded into the hub cache when it is not there yet (and
    the machine is online), or a one-line FileNotFoundError naming the file. ``download``: more arguments of
    ``hf_hub_download`` (``revision``, ``cache_dir``, ``token``, ``force_download``, ``local_files_only``)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    name = parse(path)
    repo_id, filename = name.repo_id, name.filename
    if filename is None:
        raise ValueError(f"{what} {path} names a repository, not a file; allowed: {FILE_GRAMMAR}")
    try:
        local_only = bool(download.pop("local_files_only", False)) or offline()
        download.setdefault("revision", name.revision)
        return Path(hf_hub_download(repo_id, filename, repo_type=name.repo_type, local_files_only=local_only,
                                    **download))
    except LocalEntryNotFoundError:
        reason = "HF_HUB_OFFLINE=1 reads the cache only" if offline() else "the hub cannot be reached"
        raise FileNotFoundError(f"{what} {path} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                                f"{reason}; download it once online, or pass a local path") from None
    except GatedRepoError:
        raise PermissionError(f"{what} {path}: the repository {repo_id} is gated; accept its terms on the hub and "
                              "log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{what} {path}: no repository {repo_id} on the hub (or it is private)") from None
    except EntryNotFoundError:
        raise FileNotFoundError(f"{what} {path}: the repository {repo_id} has no file {filename}") from None
    except (HfHubHTTPError, OSError) as error:
        raise FileNotFoundError(f"{what} {path} could not be downloaded: {first_line(error)}") from None


@contextmanager
def quiet_loading():
    """transformers' progress bar of each load ("Loading weights") off while a frozen network loads: noise in the
    entry points' one-line-per-event logs."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_frozen(what: str, source: str, allowed: str, *classes, **kwargs) -> list:
    """``cls.from_pretrained(source, **kwargs)`` for each of ``classes`` (a transformers model, its processor),
    quietly: ``source`` a local folder in the Hugging Face format, a hub name or ``hf://owner/repo[@revision]``. A
    missing folder, missing files or an unreachable hub answer one line naming ``what`` and ``allowed``."""
    name, revision = hub_model(str(source))
    path = Path(name).expanduser()
    local = path.exists() or reads_as_path(name)
    if local and not path.is_dir():
        raise ValueError(f"{what} folder not found: {path}; {allowed}")
    try:
        with quiet_loading():
            return [cls.from_pretrained(path if local else name, local_files_only=local, revision=revision, **kwargs)
                    for cls in classes]
    except (OSError, ValueError) as error:  # no config / weights there, or the hub cannot be reached
        raise ValueError(f"cannot load the {what} {name!r} ({first_line(error)}); {allowed}") from None
