"""The extraction command: an image data set into shards of tokenizer codes (see conf/extract.yaml):

    python -m halton.data.writing.extract_codes data=imagenet_codes split=train \\
        source.path=/datasets/imagenet/train vq_checkpoint=/ckpt/vq_ds8_c2i.pt

writes ``<data.root>/<split>/`` (the folder the data config reads): shards, one record per shard and, once every
shard is finished, ``manifest.json``. Runs on every device Lightning is given (each rank writes its own shards);
run it again after an interruption and the finished shards are skipped. (``python -m halton.data.extract``, its
first path, runs the same command.)

Captions are stored when the source has them; ``text.embeddings=precompute`` also stores their token embeddings by
``text.encoder`` (bf16, with padding masks), so that training reads them instead of encoding every caption again.
"""

from __future__ import annotations

import functools
import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from halton.cli import CONFIG_DIR, entry_point, run
from halton.options.extraction import ExtractionOptions, TextEncodingOptions, check_captions, check_extraction_tokenizer
from halton.options.rules import from_config, under

log = logging.getLogger("halton.extract")


def build_text_encoder(cfg: DictConfig, source):
    """The frozen text encoder of ``text.embeddings=precompute`` (None for ``online``), checked against the data
    config's ``text_dim`` when it states one. A source without captions is refused before the encoder loads."""
    with under("text."):
        text = from_config(TextEncodingOptions, cfg.get("text") or {})
    if check_captions(text.embeddings, source.has_captions(), f"the {source.describe()['kind']} source") == "online":
        return None  # captions only, encoded in the training step
    from halton.text import TextEncoder

    # the encoder's dtype follows the extraction's precision: auto = bf16 on GPUs, float32 on CPUs
    encoder = TextEncoder(str(text.encoder), max_length=text.max_length, dtype=cfg.precision)
    if cfg.data.get("text_dim") is not None:
        encoder.check_width(cfg.data.text_dim, what="data.text_dim")
    return encoder


def build_tokenizer(cfg: DictConfig):
    """The data config's tokenizer: built as it is, or, for a lazy one (``_partial_: true``), loaded from
    ``vq_checkpoint``."""
    check_extraction_tokenizer(cfg.data, cfg.get("vq_checkpoint"))
    tokenizer = instantiate(cfg.data.tokenizer)
    if isinstance(tokenizer, functools.partial):
        tokenizer = tokenizer(cfg.get("vq_checkpoint") or cfg.data.get("vq_checkpoint"))
    return tokenizer


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="extract")
@entry_point
def main(cfg: DictConfig) -> None:
    from halton.data.writing.extraction import extract_with_lightning
    from halton.data.writing.sources import build_source

    tokenizer = build_tokenizer(cfg)
    encoding = from_config(ExtractionOptions, cfg)
    options = OmegaConf.to_container(cfg.source, resolve=True)
    kind, path = options.pop("format"), options.pop("path")
    if kind == "digits":  # the split of the data config (what DigitsShardsDataModule.prepare_data extracts)
        options.update(split=cfg.split, val_fraction=cfg.data.get("val_fraction", 0.1), seed=cfg.data.get("seed", 0))
        options["shard_size"] = options.get("shard_size") or cfg.data.get("shard_size")
    source = build_source(kind, path, encoding.image_size, **options)
    text_encoder = build_text_encoder(cfg, source)
    manifest = extract_with_lightning(
        source, tokenizer, cfg.out_dir, OmegaConf.to_container(cfg.trainer, resolve=True),
        grid=list(cfg.data.grid), image_size=encoding.image_size, flip=encoding.flip, chunk_size=encoding.chunk_size,
        batch_size=encoding.batch_size, num_workers=encoding.num_workers, precision=encoding.precision,
        checkpoint=cfg.get("vq_checkpoint"), text_encoder=text_encoder)
    if manifest is not None:
        log.info(f"wrote {manifest.samples} samples in {len(manifest.shards)} shards to {cfg.out_dir} "
                 f"({manifest.grid[0]}x{manifest.grid[1]} codes, codebook {manifest.codebook_size}; "
                 f"{manifest.describe_text()})")


if __name__ == "__main__":
    run(main, "extract")
