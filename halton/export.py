"""Write a model in the Hugging Face format: python -m halton.export checkpoint=runs/<name>/checkpoints/last.ckpt
out=DIR (see conf/export.yaml). The folder holds config.json and model.safetensors (the EMA weights of a train.py
checkpoint; a released .pth converts too) and loads with ``MaskTransformer.from_pretrained(DIR)`` (or
``TextMaskTransformer``, or :func:`halton.models.load_pretrained` for either), as ``checkpoint=DIR`` in every entry
point, and uploads with ``model.push_to_hub("you/name")``."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

from halton.cli import entry_point, run
from halton.validation import CONFIG_DIR

log = logging.getLogger("halton.export")


def replace_folder(out: Path, write) -> Path:
    """``write(folder)`` into a new folder beside ``out``, then put it in place of ``out`` (a crash leaves ``out``
    as it was, never half-written). An existing ``out`` is replaced only when it is a model folder."""
    from halton.models.loading import is_model_folder
    from halton.utils.files import default_mode
    from halton.utils.hub import MODEL_CONFIG

    if out.exists() and not is_model_folder(out) and any(out.iterdir()):
        raise ValueError(f"out={out} exists and is not a model folder (no {MODEL_CONFIG}); allowed: a new or empty "
                         "folder, or an earlier export")
    out.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    old = new.with_suffix(".old")
    try:
        write(new)
        mode = default_mode()
        new.chmod(mode | (mode & 0o444) >> 2)  # searchable where readable, as mkdir makes it (mkdtemp: 0700)
        if out.exists():
            out.rename(old)
        new.rename(out)
    finally:
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
@entry_point
def main(cfg: DictConfig) -> None:
    from halton.models.loading import load_model

    net = load_model(cfg.checkpoint, cfg.model.net, cfg.official_heads)
    out = replace_folder(Path(cfg.out).expanduser(), net.save_pretrained)
    size = sum(p.numel() for p in net.parameters())
    log.info(f"wrote {out} ({type(net).__name__}, {size / 1e6:.2f}M parameters): load it with checkpoint={out} or "
             f"{type(net).__name__}.from_pretrained('{out}')")


if __name__ == "__main__":
    run(main, "export")
