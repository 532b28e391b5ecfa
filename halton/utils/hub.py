"""Files on the Hugging Face Hub by name: ``hf://<owner>/<repo>/<file>`` (a checkpoint, a tokenizer) or
``hf://<owner>/<repo>`` (a model folder in the Hugging Face format). ``huggingface_hub`` fetches them once into its
usual cache (``HF_HOME``, ``HF_HUB_CACHE``) and reuses them; with ``HF_HUB_OFFLINE=1`` only the cache is read."""

from __future__ import annotations

import os
from pathlib import Path

PREFIX = "hf://"
# A model folder in the Hugging Face format (huggingface_hub's CONFIG_NAME and SAFETENSORS_SINGLE_FILE)
MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"


def is_hub_path(path) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def hub_model_name(name: str) -> str:
    """The name transformers' ``from_pretrained`` takes for ``hf://org/name`` (``org/name``); other names as given."""
    return name[len(PREFIX):].strip("/") if is_hub_path(name) else name


def parse(path: str) -> tuple[str, str | None]:
    """(repository id, file in it or None) of ``hf://owner/repo[/file]``, or a one-line ValueError."""
    parts = path[len(PREFIX):].split("/")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"{path} is not a hub name; allowed: hf://<owner>/<repo>/<file> (a file) or "
                         "hf://<owner>/<repo> (a model folder saved with save_pretrained)")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None


def hub_parts(path: str) -> tuple[str, str | None] | None:
    """:func:`parse` without its error: None for a malformed hub name."""
    try:
        return parse(path)
    except ValueError:
        return None


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

    repo_id, filename = parse(path)
    if filename is None:
        raise ValueError(f"{what} {path} names a repository, not a file; allowed: hf://<owner>/<repo>/<file>")
    try:
        local_only = bool(download.pop("local_files_only", False)) or offline()
        return Path(hf_hub_download(repo_id, filename, local_files_only=local_only, **download))
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
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise FileNotFoundError(f"{what} {path} could not be downloaded: {first}") from None
