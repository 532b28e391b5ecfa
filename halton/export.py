"""Write a model in the Hugging Face format: python -m halton.export checkpoint=runs/<name>/checkpoints/last.ckpt
out=DIR (see conf/export.yaml). The folder holds config.json and model.safetensors (the EMA weights of a train.py
checkpoint; a released .pth converts too) and loads with ``MaskTransformer.from_pretrained(DIR)`` (or
``TextMaskTransformer``, or :func:`halton.models.load_pretrained` for either), as ``checkpoint=DIR`` in every entry
point, and uploads whole (pipeline.json and the model card too) with ``hf upload you/name DIR``. It also holds
halton_export.json, the record of what the export wrote: exporting again replaces those files only, and any other
folder is refused."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import hydra
from omegaconf import DictConfig

from halton.cli import entry_point, run
from halton.utils.files import DiskFull, as_disk_full, atomic_write, default_mode, file_sha256
from halton.validation import CONFIG_DIR

log = logging.getLogger("halton.export")


# What an export wrote, with each file's size and SHA-256: the proof that a folder is an earlier export, and the
# list of the only files a new export may replace or remove there (a user's files beside them are kept).
RECORD = "halton_export.json"


def _version(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def _is_version(path: Path, versions: list[dict]) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    size = path.stat().st_size
    return any(v["size"] == size for v in versions) and _version(path) in versions


def _refusal(out: Path, why: str) -> ValueError:
    return ValueError(f"out={out} {why}; allowed: a new or empty folder, or an earlier export (nothing was written)")


def exported_files(out: Path) -> dict[str, list[dict]]:
    """The files an earlier export wrote in ``out`` ({name: the versions it may hold}; {} for a new or empty folder),
    or a one-line ValueError when ``out`` is anything else: a folder without the export's record, or one whose
    exported files were changed since (replacing them would lose someone's work)."""
    if out.is_symlink() and not out.exists():
        raise _refusal(out, "is a broken symbolic link")
    if not out.exists():
        return {}
    if not out.is_dir():
        raise _refusal(out, "is a file")
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return {}
    if RECORD not in names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise _refusal(out, f"exists and is not an earlier export (no {RECORD}; it holds {shown})")
    try:
        files = json.loads((out / RECORD).read_text())["files"]
        for name, versions in files.items():  # a record names files inside the folder only
            parts = PurePosixPath(name).parts
            if not parts or name.startswith("/") or ".." in parts or "\\" in name or name == RECORD:
                raise ValueError(f"file name {name!r} outside the folder")
            if not all(isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str) for v in versions):
                raise ValueError(f"versions of {name} without size and sha256")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise _refusal(out, f"holds a {RECORD} that is not an export record ({error})") from None
    for name, versions in sorted(files.items()):
        path = out / name
        if os.path.lexists(path) and not _is_version(path, versions):
            raise _refusal(out, f"is an earlier export whose {name} was changed since (move it away to export here)")
    return files


def _write_record(folder: Path, files: dict[str, list[dict]]) -> None:
    text = json.dumps({"written_by": "python -m halton.export", "files": files}, indent=1, sort_keys=True) + "\n"
    atomic_write(folder / RECORD, lambda tmp: Path(tmp).write_text(text))


def replace_folder(out: Path, write) -> Path:
    """``write(folder)`` into a new folder beside ``out``, then put its files in ``out``: a new folder is renamed into
    place whole; in an empty folder or an earlier export (:func:`exported_files`), only the export's own files are
    replaced or removed, and a user's files beside them stay. Anything else is refused before anything is written.
    Files and folders get the permissions the umask gives (``write`` may make private ones)."""
    earlier = exported_files(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        try:
            write(new)
        except Exception as error:  # a full disk: named by the folder (the file written was a temporary's)
            full = as_disk_full(error)
            if full is None:
                raise
            raise DiskFull(out, full.cause, atomic=True) from error  # the new folder is removed below
        mode = default_mode()
        folder_mode = mode | (mode & 0o444) >> 2  # searchable where readable, as mkdir makes it (mkdtemp: 0700)
        for path in new.rglob("*"):
            path.chmod(folder_mode if path.is_dir() else mode)
        written = {p.relative_to(new).as_posix(): [_version(p)] for p in sorted(new.rglob("*")) if p.is_file()}
        if not out.exists():
            _write_record(new, written)
            new.chmod(folder_mode)
            new.rename(out)
            return out
        taken = [name for name in written if name not in earlier and os.path.lexists(out / name)]
        if taken:  # a user's file of a name the earlier export did not write
            raise _refusal(out, f"holds a {taken[0]} that the earlier export did not write")
        # Until the last record is written, a crash leaves each file as one export or the other wrote it, and the
        # interim record names both versions, so the next export still recognises the folder as its own.
        _write_record(out, {name: earlier.get(name, []) + [v for v in written.get(name, [])
                                                           if v not in earlier.get(name, [])]
                            for name in earlier.keys() | written.keys()})
        for name in written:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(new / name, out / name)
        for name in earlier.keys() - written.keys():  # the earlier export's files this one no longer writes
            if _is_version(out / name, earlier[name]):
                (out / name).unlink()
        _write_record(out, written)
    finally:
        shutil.rmtree(new, ignore_errors=True)
    return out


PIPELINE_FILE = "pipeline.json"  # an export's tokenizer, condition kind, scheduler and sampling defaults


def recipe(tokenizer, condition, scheduler, sampling) -> dict:
    """An export's ``pipeline.json``: the tokenizer, the condition kind and the scheduler as specs Hydra builds
    again, and the sampling defaults (:class:`halton.options.SamplingOptions`), for ``halton.Pipeline``."""
    import dataclasses

    return {"tokenizer": tokenizer.recipe(), "condition": condition.spec(), "scheduler": scheduler.spec(),
            "sampling": {f.name: getattr(sampling, f.name) for f in dataclasses.fields(sampling)}}


def save_pipeline(folder: str | Path, model, pipeline: dict) -> None:
    """The model in the Hugging Face format (config.json, model.safetensors, the model card) and ``pipeline.json``."""
    model.save_pretrained(folder)
    (Path(folder) / PIPELINE_FILE).write_text(json.dumps(pipeline, indent=1) + "\n")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
@entry_point
def main(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    from halton.build import condition_kind
    from halton.models.loading import load_model
    from halton.options import SamplingOptions

    out = Path(cfg.out).expanduser()
    exported_files(out)  # a folder that is not ours is refused before the model loads
    log.info(f"exporting {cfg.checkpoint}: loading the model and its tokenizer")
    net = load_model(cfg.checkpoint, cfg.model.net, cfg.official_heads)
    pipeline = recipe(instantiate(cfg.data).tokenizer, condition_kind(cfg), instantiate(cfg.scheduler),
                      SamplingOptions.from_config(cfg))

    log.info(f"writing {out}: config.json, model.safetensors (the EMA weights), {PIPELINE_FILE}, README.md")
    out = replace_folder(out, lambda folder: save_pipeline(folder, net, pipeline))
    size = sum(p.numel() for p in net.parameters())
    log.info(f"wrote {out} ({type(net).__name__}, {size / 1e6:.2f}M parameters): load it with "
             f"Pipeline.from_pretrained('{out}'), checkpoint={out} or {type(net).__name__}.from_pretrained('{out}')")


if __name__ == "__main__":
    run(main, "export")
