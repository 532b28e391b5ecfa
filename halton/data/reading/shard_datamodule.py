"""The LightningDataModule over code shards (``train/`` and ``val/`` folders, each with its manifest)."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from halton.data.format.manifest import EXTRACT_COMMAND, MANIFEST_NAME, Manifest, ManifestMismatch
from halton.data.format.tokenizer_spec import same_tokenizer, tokenizer_spec
from halton.data.reading.epoch_loader import EpochDataLoader
from halton.data.reading.partition import check_batch_fits
from halton.data.reading.shard_stream import CodeShardStream
from halton.tokenizers import Tokenizer

log = logging.getLogger("halton.data")

# Our streams know their exact length per rank (see halton.data.reading.partition); Lightning's generic caution about
# __len__ on iterable data sets does not apply.
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")


class CodeShardsDataModule(pl.LightningDataModule):
    """Batches ``{"codes": LongTensor [B,h,w], "labels": LongTensor [B]}`` (plus ``captions`` when the shards
    have them, and ``text_emb`` bfloat16 [B,L,D] with ``text_mask`` bool [B,L] when they hold precomputed text
    embeddings) from ``<root>/<train_split>`` and ``<root>/<val_split>``.

    ``codebook_size``, ``grid`` and ``num_classes`` are the facts the model config reads, and for text-to-image
    data ``text_dim`` (the text embeddings' width) and ``text_length`` (tokens per caption); they are checked
    against the manifests in :meth:`setup` (the text facts only where the shards hold embeddings). Nothing is read
    before that: constructing the module needs no shards.
    ``tokenizer`` decodes codes to images (sample grids, sample.py, evaluate.py): a :class:`Tokenizer`, or a
    factory called with ``vq_checkpoint`` on first use (so the weights are loaded only when someone decodes).
    ``verify_checksums``: the loader checks each shard's SHA-256 against the manifest before using its samples and
    skips a shard that differs (see :class:`CodeShardStream`).
    """

    def __init__(self, root: str, batch_size: int = 256, num_workers: int = 4, flip: bool = False,
                 resampled: bool = False, seed: int = 0, pool_chunks: int = 16, shuffle_chunks: int = 8,
                 train_split: str = "train", val_split: str | None = "val", val_batch_size: int | None = None,
                 codebook_size: int = 16384, grid=(32, 32), num_classes: int = 1000,
                 tokenizer: Tokenizer | Callable[[str], Tokenizer] | None = None, vq_checkpoint: str | None = None,
                 vq_release: str | None = None, image_size: int | None = None, with_keys: bool = False,
                 pin_memory: bool = True, verify_checksums: bool = False, text_dim: int | None = None,
                 text_length: int | None = None):
        super().__init__()
        if batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise ValueError(f"batch_size={batch_size}, val_batch_size={val_batch_size}; allowed: >= 1")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} is out of range; allowed: >= 0")
        if len(grid) != 2:
            raise ValueError(f"grid={list(grid)} is not allowed; allowed: [height, width]")
        self.root = Path(root).expanduser()
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.flip, self.resampled, self.seed = num_workers, flip, resampled, seed
        self.pool_chunks, self.shuffle_chunks = pool_chunks, shuffle_chunks
        self.train_split, self.val_split = train_split, val_split
        self.codebook_size, self.grid, self.num_classes = codebook_size, [int(g) for g in grid], num_classes
        self.image_size, self.with_keys, self.pin_memory = image_size, with_keys, pin_memory
        self.verify_checksums = verify_checksums
        self.text_dim, self.text_length = text_dim, text_length
        self.vq_checkpoint, self.vq_release = vq_checkpoint, vq_release
        self._tokenizer = tokenizer if isinstance(tokenizer, Tokenizer) else None
        self._tokenizer_factory = None if isinstance(tokenizer, Tokenizer) else tokenizer
        self.manifests: dict[str, Manifest] = {}
        self.streams: dict[str, CodeShardStream] = {}
        self._logged_skips = 0

    # ------------------------------------------------------------------ tokenizer
    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            if self._tokenizer_factory is None:
                raise ValueError(f"no tokenizer configured for the codes in {self.root}; set data.tokenizer")
            if not self.vq_checkpoint:
                wanted = f" ({self.vq_release})" if self.vq_release else ""
                raise ValueError(f"decoding these codes needs the tokenizer weights{wanted}: pass vq_checkpoint=PATH")
            self._tokenizer = self._tokenizer_factory(self.vq_checkpoint)
        return self._tokenizer

    def tokenizer_spec(self) -> dict | None:
        source = self._tokenizer if self._tokenizer is not None else self._tokenizer_factory
        if isinstance(source, Tokenizer) or isinstance(source, functools.partial):
            return tokenizer_spec(source)
        return None

    # ------------------------------------------------------------------ shards
    def split_dir(self, split: str) -> Path:
        return self.root / split

    def load_manifest(self, split: str) -> Manifest:
        """The split's manifest, checked against the config's facts, the tokenizer and the files on disk."""
        folder = self.split_dir(split)
        if split == self.val_split and not (folder / MANIFEST_NAME).is_file():
            raise FileNotFoundError(f"no {MANIFEST_NAME} in {folder}: extract the validation split "
                                    f"({EXTRACT_COMMAND} ... split=val) or set data.val_split=null")
        manifest = Manifest.load(folder)
        manifest.check_facts(self.codebook_size, self.grid, self.num_classes, self.flip and split == self.train_split,
                             str(folder))
        manifest.check_text(self.text_dim, self.text_length, str(folder))
        if manifest.captions:
            log.info("the shards in %s hold %s", folder, manifest.describe_text())
        spec = self.tokenizer_spec()
        if spec is not None and not same_tokenizer(manifest.tokenizer, spec):
            raise ManifestMismatch(f"the shards in {folder} were made by {manifest.tokenizer.get('name')} "
                                   f"{manifest.tokenizer.get('config')}, the data config decodes them with "
                                   f"{spec['name']} {spec['config']}; use the matching data config")
        for problem in manifest.check_files(folder):
            log.warning("shard %s/%s does not match the manifest; it will be skipped if it cannot be read", folder,
                        problem)
        return manifest

    def precomputed_text(self, split: str | None = None) -> dict:
        """The manifest's ``text`` of ``split`` (default: the training split): which encoder made the stored
        embeddings, their ``max_length`` and ``width``; ``{}`` when the shards hold none (captions are then encoded
        in the training step)."""
        split = split or self.train_split
        if split not in self.manifests:
            self.manifests[split] = self.load_manifest(split)
        return dict(self.manifests[split].text)

    def setup(self, stage: str | None = None) -> None:
        splits = [self.train_split] if stage in (None, "fit") else []
        if self.val_split and stage in (None, "fit", "validate"):
            splits.append(self.val_split)
        for split in splits:
            if split not in self.manifests:
                self.manifests[split] = self.load_manifest(split)
        if stage == "fit" and not self.resampled:  # a resampled stream draws its batches across passes
            check_batch_fits(self.batch_size, self.manifests[self.train_split].samples, self._rank_and_world()[1],
                             str(self.split_dir(self.train_split)))

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def stream(self, split: str, train: bool) -> CodeShardStream:
        self.setup("fit" if train else "validate")
        if split not in self.manifests:
            self.manifests[split] = self.load_manifest(split)
        rank, world = self._rank_and_world()
        return CodeShardStream(
            self.split_dir(split), self.manifests[split], self.batch_size if train else self.val_batch_size,
            shuffle=train, resampled=self.resampled and train, drop_last=train, flip=self.flip and train,
            pool_chunks=self.pool_chunks, shuffle_chunks=self.shuffle_chunks, seed=self.seed, rank=rank,
            world_size=world, num_workers=self.num_workers, with_keys=self.with_keys,
            verify_checksums=self.verify_checksums)

    def _loader(self, stream: CodeShardStream, train: bool) -> EpochDataLoader:
        trainer = self.trainer
        epoch_source = (lambda: trainer.current_epoch) if trainer is not None and train else None
        self.streams["train" if train else "val"] = stream
        return EpochDataLoader(stream, batch_size=None, num_workers=self.num_workers,
                               persistent_workers=self.num_workers > 0,
                               pin_memory=self.pin_memory and torch.cuda.is_available(), epoch_source=epoch_source)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.stream(self.train_split, train=True), train=True)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_split:
            return []
        return self._loader(self.stream(self.val_split, train=False), train=False)

    # ------------------------------------------------------------------ bad shards in the logs
    @property
    def skipped_shards(self) -> int:
        return sum(stream.skipped_shards for stream in self.streams.values())

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        skipped = self.skipped_shards
        trainer = self.trainer
        if skipped != self._logged_skips and trainer is not None:
            self._logged_skips = skipped
            for logger in trainer.loggers:
                logger.log_metrics({"data/skipped_shards": skipped}, step=trainer.global_step)
        return batch
