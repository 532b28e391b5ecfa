"""Extraction: images -> tokenizer codes -> shards of chunks (see :mod:`halton.data.format.chunks`) and a manifest.

The work is cut into units (one unit = one output shard, see :mod:`halton.data.writing.sources`); unit i belongs to rank
i mod world_size, so every rank writes its own shards and a resumed run assigns the same units. A unit is finished
when its shard and its record (``<shard>.json``, written after the shard, both atomically) exist and agree;
finished units are skipped. When every unit is finished, rank 0 writes ``manifest.json``.

Two drivers share everything but the loop: :func:`extract_locally` (one process: the digits, tests) and, in
:mod:`halton.data.writing.extract_codes`, Lightning's ``Trainer.predict`` on several devices.

Text: the captions of a captioned source are always stored. Given a :class:`~halton.text.TextEncoder`
(``text.embeddings=precompute``), each batch's captions are also encoded next to its images and the embeddings
stored as bfloat16 with their padding masks (``text_emb.npy``, ``text_mask.npy``); images without a caption are
then skipped (recorded like unreadable ones), and a source without captions is refused before any work.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from halton.data.format.chunks import MAX_CODEBOOK, Chunk, bf16_bits, split_into_chunks, strings, write_shard
from halton.data.format.manifest import MANIFEST_NAME, Manifest, ShardRecord
from halton.data.format.tokenizer_spec import tokenizer_spec
from halton.data.writing.sources import Item, Skip, Source, Unit
from halton.options.extraction import ExtractionOptions, check_captions
from halton.tokenizers import Tokenizer
from halton.utils.files import atomic_write, remove_stale_temporaries
from halton.utils.progress import progress

log = logging.getLogger("halton.data")

# Batches carry their unit and keys; the sample indices Lightning would track for prediction writers are not used.
warnings.filterwarnings("ignore", message=r".*Couldn't infer the batch indices fetched from your dataloader.*")


class CodesOutOfRange(ValueError):
    """The tokenizer produced codes outside its own codebook (a broken tokenizer or config)."""


# ---------------------------------------------------------------------------------------------------- settings
def extraction_settings(tokenizer: Tokenizer, source: Source, image_size: int | None, flip: bool, chunk_size: int,
                        grid: list[int], checkpoint: str | None = None, text_encoder=None) -> dict[str, Any]:
    """Everything that decides the shards' content; a resumed run must have the same."""
    spec = tokenizer_spec(tokenizer)
    if checkpoint:
        spec["checkpoint"] = Path(checkpoint).name
    settings = {"tokenizer": spec, "source": source.describe(), "image_size": image_size, "flip": flip,
                "chunk_size": chunk_size, "grid": list(grid), "codebook_size": tokenizer.codebook_size}
    if text_encoder is not None:  # (absent otherwise: extractions begun before text embeddings existed resume)
        settings["text"] = text_settings(text_encoder)
    return settings


def text_settings(text_encoder) -> dict[str, Any]:
    """The manifest's ``text``: which encoder made the stored embeddings, their length and width."""
    return {"embeddings": "precompute", **text_encoder.describe()}


def record_path(out_dir: Path, unit: Unit) -> Path:
    return out_dir / (Path(unit.name).stem + ".json")


def finished_units(out_dir: Path, units: list[Unit], settings: dict[str, Any]) -> set[str]:
    """Names of the units whose shard and record are present and consistent. A record made with other settings
    is an error: the folder holds another extraction."""
    done = set()
    for unit in units:
        record_file, shard_file = record_path(out_dir, unit), out_dir / unit.name
        if not record_file.is_file():
            continue
        try:
            data = json.loads(record_file.read_text())
            data["shard"]["bytes"]
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s is unreadable; extracting %s again", record_file, unit.name)
            continue
        if data.get("settings") != settings:
            raise ValueError(f"{out_dir} holds shards extracted with other settings ({record_file.name}); "
                             "allowed: the same settings to resume, or a new out_dir")
        if shard_file.is_file() and shard_file.stat().st_size == data["shard"]["bytes"]:
            done.add(unit.name)
        else:
            log.warning("%s is missing or does not match its record; extracting it again", shard_file)
    return done


def assigned_units(units: list[Unit], rank: int, world_size: int, done: set[str]) -> list[Unit]:
    return [u for u in units if u.index % world_size == rank and u.name not in done]


# ---------------------------------------------------------------------------------------------------- reading
class EncodeStream(IterableDataset):
    """Batches of preprocessed images, unit by unit (a unit's batches never mix with another's), the units split
    between DataLoader workers. Each batch says which unit it belongs to, whether it is the unit's last, and
    which inputs were skipped since the previous one."""

    def __init__(self, source: Source, units: list[Unit], batch_size: int, require_captions: bool = False):
        super().__init__()
        self.source, self.units, self.batch_size = source, units, batch_size
        self.require_captions = require_captions

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for unit in self.units[worker::workers]:
            yield from self._unit_batches(unit)

    def _unit_batches(self, unit: Unit) -> Iterator[dict[str, Any]]:
        held = None  # one batch of look-ahead, to mark the unit's last batch
        for batch in self._batches(unit):
            if held is not None:
                yield held
            held = batch
        if held is None:  # nothing readable in this unit: an empty last batch still closes it
            held = self._batch(unit, [], [])
        held["last"] = True
        yield held

    def _batches(self, unit: Unit) -> Iterator[dict[str, Any]]:
        items: list[Item] = []
        skipped: list[list[str]] = []
        for entry in self.source.read(unit):
            if self.require_captions and isinstance(entry, Item) and not (entry.caption or "").strip():
                entry = Skip(entry.key, "no caption (text.embeddings=precompute needs one per image)")
            if isinstance(entry, Skip):
                log.warning("skipping input %s of %s: %s", entry.key, unit.origin, entry.reason)
                skipped.append([entry.key, entry.reason])
                continue
            items.append(entry)
            if len(items) == self.batch_size:
                yield self._batch(unit, items, skipped)
                items, skipped = [], []
        if items or skipped:
            yield self._batch(unit, items, skipped)

    @staticmethod
    def _batch(unit: Unit, items: list[Item], skipped: list[list[str]]) -> dict[str, Any]:
        captions = [i.caption for i in items]
        has_captions = any(c is not None for c in captions)
        return {"images": torch.stack([i.image for i in items]) if items else torch.zeros(0, dtype=torch.uint8),
                "labels": torch.tensor([i.label for i in items], dtype=torch.long),
                "keys": [i.key for i in items],
                "captions": [c or "" for c in captions] if has_captions else None,
                "unit": unit.index, "last": False, "skipped": skipped}


def encode_images(tokenizer: Tokenizer, images: torch.Tensor, flip: bool, autocast_dtype: torch.dtype | None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Codes (uint16 numpy) of ``images`` (uint8 pixels, or floats in [-1, 1]) and of their mirror images."""
    if images.shape[0] == 0:
        return np.zeros((0, 0, 0), np.uint16), (np.zeros((0, 0, 0), np.uint16) if flip else None)
    if images.dtype == torch.uint8:
        images = images.float() / 127.5 - 1
    device = images.device
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        codes = tokenizer.encode(images)
        flipped = tokenizer.encode(images.flip(-1)) if flip else None
    return check_codes(codes, tokenizer.codebook_size), (None if flipped is None else
                                                         check_codes(flipped, tokenizer.codebook_size))


def encode_captions(text_encoder, captions: list[str] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The captions' token embeddings as bfloat16 bits (uint16 numpy [B, L, D]) and padding masks (bool [B, L])."""
    if text_encoder is None:
        return None
    if not captions:
        return (np.zeros((0, text_encoder.max_length, text_encoder.width), np.uint16),
                np.zeros((0, text_encoder.max_length), bool))
    embeddings, mask = text_encoder.encode(captions)
    return bf16_bits(embeddings), mask.cpu().numpy()


def check_codes(codes: torch.Tensor, codebook_size: int) -> np.ndarray:
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= codebook_size:
        raise CodesOutOfRange(f"the tokenizer produced code {high if high >= codebook_size else low}; allowed: "
                              f"0 to {codebook_size - 1} (its codebook)")
    return codes.to(device="cpu", dtype=torch.int32).numpy().astype(np.uint16)


# ---------------------------------------------------------------------------------------------------- writing
class ShardAssembler:
    """Collects the encoded batches of each unit and, at a unit's last batch, writes its shard then its record."""

    def __init__(self, out_dir: str | Path, units: list[Unit], chunk_size: int, settings: dict[str, Any],
                 progress: tqdm | None = None, rank: int = 0):
        self.out_dir, self.chunk_size, self.settings, self.progress = Path(out_dir), chunk_size, settings, progress
        self.units, self.rank = {u.index: u for u in units}, rank
        self.pending: dict[int, dict[str, list]] = {}
        self.written: list[ShardRecord] = []

    def add(self, batch: dict[str, Any], codes: np.ndarray, flipped: np.ndarray | None,
            text: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """``text``: the captions' embeddings (bfloat16 bits) and masks, from :func:`encode_captions`."""
        parts = self.pending.setdefault(batch["unit"], {"chunks": [], "skipped": []})
        if len(codes):
            labels = batch["labels"].cpu().numpy() if torch.is_tensor(batch["labels"]) else np.asarray(batch["labels"])
            captions = batch.get("captions")
            parts["chunks"].append(Chunk(codes, labels.astype(np.int32), strings(batch["keys"]), flipped,
                                         None if captions is None else strings(captions), *(text or (None, None))))
        parts["skipped"].extend(f"{key}: {reason}" for key, reason in batch["skipped"])
        if self.progress is not None:
            self.progress.update(len(codes))
        if batch["last"]:
            self._write(self.units[batch["unit"]], self.pending.pop(batch["unit"]))

    def _write(self, unit: Unit, parts: dict[str, list]) -> None:
        # Only this process writes this unit: a temporary of its shard or record is a killed writer's (0 bytes up
        # to a whole shard), which the run that finishes the unit removes.
        for name in (unit.name, record_path(self.out_dir, unit).name):
            for stale in remove_stale_temporaries(self.out_dir, name):
                log.info("removed %s, left by a write that was interrupted", stale)
        chunks = split_into_chunks(Chunk.concatenate(parts["chunks"]), self.chunk_size) if parts["chunks"] else []
        record = write_shard(self.out_dir / unit.name, chunks, source=unit.origin, skipped=parts["skipped"])
        text = json.dumps({"settings": self.settings, "shard": record.__dict__, "rank": self.rank}, indent=1)
        atomic_write(record_path(self.out_dir, unit), lambda tmp: Path(tmp).write_text(text))
        self.written.append(record)
        if self.progress is not None:
            self.progress.set_postfix(shards=len(self.written), refresh=False)

    def unfinished(self) -> list[str]:
        return [self.units[index].name for index in self.pending]


def finalize_manifest(out_dir: str | Path, source: Source, units: list[Unit], settings: dict[str, Any]) -> Manifest:
    """Gather the records of all units into ``manifest.json`` (atomic); every unit must be finished."""
    out_dir = Path(out_dir)
    missing = [u.name for u in units if u.name not in finished_units(out_dir, [u], settings)]
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(units)} shards in {out_dir} are not finished (first: {missing[0]})"
                           "; run the extraction again to finish them")
    records = [ShardRecord.from_dict(json.loads(record_path(out_dir, u).read_text())["shard"]) for u in units]
    records = [r for r in records if r.samples > 0]
    if "text" in settings and not all(r.text_embeddings for r in records):
        bad = next(r.name for r in records if not r.text_embeddings)
        raise RuntimeError(f"shard {bad} in {out_dir} has no text embeddings although the settings say "
                           "precompute; extract into a new out_dir")
    num_classes = source.num_classes
    if num_classes is None:
        num_classes = max((r.max_label for r in records), default=-1) + 1
    skipped = sum(len(r.skipped) for r in records)
    if skipped:
        log.warning("%d inputs could not be read and are not in the shards (listed per shard in the manifest)",
                    skipped)
    remove_stale_temporaries(out_dir, MANIFEST_NAME)  # every unit is finished: an earlier run's interrupted write
    manifest = Manifest(grid=settings["grid"], codebook_size=settings["codebook_size"], num_classes=num_classes,
                        chunk_size=settings["chunk_size"], flipped=settings["flip"],
                        captions=any(r.captions for r in records), tokenizer=settings["tokenizer"],
                        image_size=settings["image_size"], source=settings["source"], shards=records,
                        classes=list(source.classes), text=dict(settings.get("text", {})))
    manifest.save(out_dir)
    return manifest


def check_extraction(tokenizer: Tokenizer, grid: list[int], options: ExtractionOptions, source: Source | None = None,
                     text_encoder=None) -> None:
    """Refuse settings that would write shards the data config cannot read, before any work."""
    image_size = options.image_size
    if text_encoder is not None and source is not None:
        check_extraction_text(source)
    if tokenizer.codebook_size > MAX_CODEBOOK:
        raise ValueError(f"codebook_size={tokenizer.codebook_size} does not fit uint16 codes; allowed: <= "
                         f"{MAX_CODEBOOK}")
    if image_size is not None:
        side = image_size // tokenizer.downsample
        if image_size % tokenizer.downsample or [side, side] != list(grid):
            raise ValueError(f"image_size={image_size} with {type(tokenizer).__name__} (downsample "
                             f"{tokenizer.downsample}) gives {image_size / tokenizer.downsample:g}x"
                             f"{image_size / tokenizer.downsample:g} codes but data.grid={list(grid)}")


def check_extraction_text(source: Source) -> None:
    """Precomputing text embeddings needs captions."""
    check_captions("precompute", source.has_captions(), f"the {source.describe()['kind']} source")


def progress_bar(units: list[Unit], rank: int, world_size: int, enabled: bool = True) -> tqdm | None:
    if rank != 0 or not enabled:
        return None
    sizes = [u.samples for u in units]
    total = sum(sizes) if all(s is not None for s in sizes) else None
    suffix = f" (rank 0 of {world_size})" if world_size > 1 else ""
    return progress(total=total, unit="img", unit_scale=True, desc=f"extracting{suffix}", dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------------- drivers
def extract_locally(source: Source, tokenizer: Tokenizer, out_dir: str | Path, *, grid: list[int],
                    image_size: int | None = None, flip: bool = False, chunk_size: int = 1000, batch_size: int = 64,
                    checkpoint: str | None = None, device: str | torch.device = "cpu",
                    autocast_dtype: torch.dtype | None = None, progress: bool = True, text_encoder=None) -> Manifest:
    """Extract in this process (no Lightning, no workers): small data sets and tests. ``text_encoder`` (a
    :class:`~halton.text.TextEncoder`): also store the captions' embeddings."""
    out_dir = Path(out_dir)
    options = ExtractionOptions(image_size=image_size, flip=flip, chunk_size=chunk_size, batch_size=batch_size)
    check_extraction(tokenizer, grid, options, source, text_encoder)
    settings = extraction_settings(tokenizer, source, image_size, flip, chunk_size, grid, checkpoint, text_encoder)
    units = source.units()
    todo = assigned_units(units, 0, 1, finished_units(out_dir, units, settings))
    tokenizer = tokenizer.to(device).eval()
    if text_encoder is not None:
        text_encoder.to(device)
    bar = progress_bar(todo, 0, 1, progress and bool(todo))
    assembler = ShardAssembler(out_dir, todo, chunk_size, settings, bar)
    try:
        for batch in EncodeStream(source, todo, batch_size, require_captions=text_encoder is not None):
            codes, flipped = encode_images(tokenizer, batch["images"].to(device), flip, autocast_dtype)
            assembler.add(batch, codes, flipped, encode_captions(text_encoder, batch["captions"]))
    finally:  # also when a write fails: the error's line is then printed after the bar's, not inside it
        if bar is not None:
            bar.close()
    return finalize_manifest(out_dir, source, units, settings)


class TokenizerPredictor(pl.LightningModule):
    """``Trainer.predict`` runs the tokenizer's encoder on each device (bf16 autocast on GPUs), and the text
    encoder on the captions when one is given (a plain attribute: moved here, never part of a state dict)."""

    def __init__(self, tokenizer: Tokenizer, flip: bool, autocast: str = "auto", text_encoder=None):
        super().__init__()
        self.tokenizer, self.flip, self.autocast = tokenizer.eval(), flip, autocast
        self.text_encoder = text_encoder

    def on_predict_start(self) -> None:
        if self.text_encoder is not None:
            self.text_encoder.to(self.device)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        bf16 = self.autocast == "bf16" or (self.autocast == "auto" and self.device.type == "cuda")
        codes, flipped = encode_images(self.tokenizer, batch["images"], self.flip, torch.bfloat16 if bf16 else None)
        return {"codes": codes, "flipped": flipped, "text": encode_captions(self.text_encoder, batch["captions"])}


class ShardWriterCallback(BasePredictionWriter):
    """Hands each encoded batch to this rank's :class:`ShardAssembler` (each rank writes its own shards)."""

    def __init__(self, assembler: ShardAssembler):
        super().__init__(write_interval="batch")
        self.assembler = assembler

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.assembler.add(batch, prediction["codes"], prediction["flipped"], prediction.get("text"))


class ExtractionData(pl.LightningDataModule):
    """The images of the units assigned to this rank (known only once Lightning has set the ranks up)."""

    def __init__(self, source: Source, units_for_rank, batch_size: int, num_workers: int,
                 require_captions: bool = False):
        super().__init__()
        self.source, self.units_for_rank = source, units_for_rank
        self.batch_size, self.num_workers, self.require_captions = batch_size, num_workers, require_captions

    def predict_dataloader(self) -> DataLoader:
        units = self.units_for_rank(self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(EncodeStream(self.source, units, self.batch_size, self.require_captions), batch_size=None,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available())


def extract_with_lightning(source: Source, tokenizer: Tokenizer, out_dir: str | Path, trainer_options: dict, *,
                           grid: list[int], image_size: int | None, flip: bool, chunk_size: int, batch_size: int,
                           num_workers: int, precision: str = "auto", checkpoint: str | None = None,
                           text_encoder=None) -> Manifest | None:
    """Extract on every device Lightning is given; returns the manifest on rank 0 (None elsewhere).
    ``text_encoder``: also store the captions' embeddings."""
    out_dir = Path(out_dir)
    options = ExtractionOptions(image_size=image_size, flip=flip, chunk_size=chunk_size, batch_size=batch_size,
                                num_workers=num_workers, precision=precision)
    check_extraction(tokenizer, grid, options, source, text_encoder)
    settings = extraction_settings(tokenizer, source, image_size, flip, chunk_size, grid, checkpoint, text_encoder)
    units = source.units()
    done = finished_units(out_dir, units, settings)
    state: dict[str, Any] = {}

    def units_for_rank(rank: int, world_size: int) -> list[Unit]:
        todo = assigned_units(units, rank, world_size, done)
        state["assembler"].units, state["assembler"].rank = {u.index: u for u in todo}, rank
        state["assembler"].progress = progress_bar(todo, rank, world_size, bool(todo))
        return todo

    state["assembler"] = ShardAssembler(out_dir, [], chunk_size, settings)
    trainer = pl.Trainer(**trainer_options, callbacks=[ShardWriterCallback(state["assembler"])], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False)
    log.info("%d of %d shards already finished in %s", len(done), len(units), out_dir)
    assembler = state["assembler"]
    try:
        trainer.predict(TokenizerPredictor(tokenizer, flip, precision, text_encoder),
                        datamodule=ExtractionData(source, units_for_rank, batch_size, num_workers,
                                                  require_captions=text_encoder is not None),
                        return_predictions=False)
    finally:  # also when a write fails: the error's line is then printed after the bar's, not inside it
        if assembler.progress is not None:
            assembler.progress.close()
    if assembler.unfinished():
        raise RuntimeError(f"rank {trainer.global_rank}: shards left unfinished: {', '.join(assembler.unfinished())}")
    trainer.strategy.barrier("extraction finished")
    if trainer.is_global_zero:
        return finalize_manifest(out_dir, source, units, settings)
    return None
