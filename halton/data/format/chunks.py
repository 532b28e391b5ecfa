"""Chunks: the unit of storage and of reading in a code shard.

A shard is a plain tar file (readable with webdataset or ``tar``) in which every webdataset "sample" is a chunk of
about a thousand images::

    00000.codes.npy      uint16 [n, h, w]   the tokenizer's codes
    00000.labels.npy     int32 [n]          class ids (-1 when the source has none)
    00000.keys.json      [n strings]        the source's sample keys (e.g. n01440764/n01440764_10026)
    00000.flipped.npy    uint16 [n, h, w]   optional: codes of the horizontally flipped images
    00000.captions.json  [n strings]        optional: captions
    00000.text_emb.npy   uint16 [n, L, D]   optional: the captions' token embeddings by a frozen text encoder, as
                                            the bits of bfloat16 values (numpy has no bfloat16):
                                            ``torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)``
    00000.text_mask.npy  bool [n, L]        with text_emb: the padding mask (True = real token)
    00001.codes.npy ...

The text embeddings are padded to the encoder's ``max_length`` L and are D wide; the manifest's ``text`` says
which encoder, L and D (``python -m halton.data.writing.extract_codes text.embeddings=precompute``). They are by far
the largest member: 120 x 2048 bf16 is 480 KiB per caption against 2 KiB for 32x32 codes.

Why chunks rather than one tar member per image: 16x16 codes are 512 bytes, so per-member Python work (tar
header parsing, decoding, collation) would cost far more than the data; a chunk is decoded with one
``np.load`` per array and batches are then cut with numpy indexing.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds

from halton.data.format.manifest import ShardRecord
from halton.utils.files import atomic_write

CODE_DTYPE = np.uint16
MAX_CODEBOOK = int(np.iinfo(CODE_DTYPE).max) + 1
LABEL_DTYPE = np.int32
TEXT_DTYPE = np.uint16     # bfloat16 bits
REQUIRED = ("codes.npy", "labels.npy", "keys.json")


def chunk_name(index: int) -> str:
    return f"{index:05d}"


class BadChunk(ValueError):
    """A chunk that cannot be decoded or does not fit the manifest."""


@dataclass
class Chunk:
    codes: np.ndarray                    # [n, h, w] uint16
    labels: np.ndarray                   # [n] int32
    keys: np.ndarray | None              # [n] object (str): numpy so batches index it without a Python loop;
                                         # None when the reader does not need them (decoding them costs time)
    flipped: np.ndarray | None = None    # [n, h, w] uint16
    captions: np.ndarray | None = None   # [n] object (str)
    text_emb: np.ndarray | None = None   # [n, L, D] uint16: bfloat16 bits (see the module's docstring)
    text_mask: np.ndarray | None = None  # [n, L] bool, True = real token

    def __post_init__(self):
        n = len(self.codes)
        sizes = {name: len(array) for name, array in zip(FIELDS, self._arrays()) if array is not None}
        wrong = {k: v for k, v in sizes.items() if v != n}
        if wrong:
            raise BadChunk(f"{n} code grids but {wrong}")
        if (self.text_emb is None) != (self.text_mask is None):
            raise BadChunk("text embeddings and text masks come together; this chunk has only one of them")
        if self.text_emb is not None and self.text_emb.shape[:2] != self.text_mask.shape:
            raise BadChunk(f"text embeddings {list(self.text_emb.shape)} and text masks {list(self.text_mask.shape)}"
                           " do not match; expected [n, L, D] and [n, L]")

    def __len__(self) -> int:
        return len(self.codes)

    def slice(self, start: int, stop: int) -> "Chunk":
        if (start, stop) == (0, len(self)):
            return self
        part = slice(start, stop)
        return Chunk(*(None if a is None else a[part] for a in self._arrays()))

    def _arrays(self) -> tuple:
        return tuple(getattr(self, name) for name in FIELDS)

    @staticmethod
    def concatenate(chunks: list["Chunk"]) -> "Chunk":
        if len(chunks) == 1:
            return chunks[0]
        parts = {}
        for name in FIELDS:
            present = [getattr(c, name) is not None for c in chunks]
            if any(present) and not all(present):
                raise BadChunk(f"some chunks have {name} and some do not")
            parts[name] = np.concatenate([getattr(c, name) for c in chunks]) if all(present) else None
        return Chunk(**parts)

    def take(self, index: np.ndarray) -> "Chunk":
        return Chunk(*(None if a is None else a[index] for a in self._arrays()))


FIELDS = tuple(Chunk.__dataclass_fields__)  # codes, labels, keys, flipped, captions, text_emb, text_mask


def bf16_bits(embeddings) -> np.ndarray:
    """Float embeddings (a torch tensor, any float dtype and device) -> uint16 numpy holding their bfloat16 bits."""
    import torch

    return embeddings.detach().to(device="cpu", dtype=torch.bfloat16).view(torch.int16).numpy().view(TEXT_DTYPE)


def strings(values) -> np.ndarray:
    """A 1-D object array of strings (``np.array`` of strings would make a fixed-width unicode array)."""
    values = list(values)
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _load_npy(data: bytes, what: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as error:  # a truncated or garbled member: numpy raises ValueError/EOFError/OSError
        raise BadChunk(f"{what} does not decode ({str(error).splitlines()[0]})") from None


def _load_json(data: bytes, what: str) -> list:
    try:
        values = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadChunk(f"{what} does not decode ({error})") from None
    if not isinstance(values, list):
        raise BadChunk(f"{what} is not a list")
    return values


def chunk_members(chunk: Chunk) -> dict[str, bytes]:
    """The tar members of a chunk (without the ``__key__``)."""
    if chunk.keys is None:
        raise BadChunk("a chunk to write needs its sample keys")
    members = {"codes.npy": _npy(chunk.codes.astype(CODE_DTYPE, copy=False)),
               "labels.npy": _npy(chunk.labels.astype(LABEL_DTYPE, copy=False)),
               "keys.json": json.dumps(list(chunk.keys)).encode()}
    if chunk.flipped is not None:
        members["flipped.npy"] = _npy(chunk.flipped.astype(CODE_DTYPE, copy=False))
    if chunk.captions is not None:
        members["captions.json"] = json.dumps(list(chunk.captions)).encode()
    if chunk.text_emb is not None:
        members["text_emb.npy"] = _npy(chunk.text_emb.astype(TEXT_DTYPE, copy=False))
        members["text_mask.npy"] = _npy(chunk.text_mask.astype(bool, copy=False))
    return members


def decode_chunk(sample: dict, grid, codebook_size: int, keys: bool = True, text_shape=None) -> Chunk:
    """A webdataset sample (one chunk's members, grouped by key) -> :class:`Chunk`, checked against the
    manifest's grid and codebook: codes outside the codebook are refused, naming the largest one. ``keys``:
    also decode the sample keys. ``text_shape``: the manifest's [max_length, width] of the text embeddings, which
    the chunk's must then have."""
    key = sample.get("__key__")
    missing = [m for m in REQUIRED if m not in sample]
    if missing:
        raise BadChunk(f"chunk {key} has no {', '.join(missing)}")
    codes = _load_npy(sample["codes.npy"], f"chunk {key} codes")
    flipped = _load_npy(sample["flipped.npy"], f"chunk {key} flipped codes") if "flipped.npy" in sample else None
    for name, array in (("codes", codes), ("flipped codes", flipped)):
        if array is None:
            continue
        if array.dtype != CODE_DTYPE or array.ndim != 3 or list(array.shape[1:]) != list(grid):
            raise BadChunk(f"chunk {key} {name} are {array.dtype} {list(array.shape)}; the manifest says "
                           f"{np.dtype(CODE_DTYPE).name} [n, {grid[0]}, {grid[1]}]")
        if array.size and int(array.max()) >= codebook_size:
            raise BadChunk(f"chunk {key} {name} hold code {int(array.max())}, outside the codebook; allowed: "
                           f"0 to {codebook_size - 1}")
    labels = _load_npy(sample["labels.npy"], f"chunk {key} labels")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise BadChunk(f"chunk {key} labels are {labels.dtype} {list(labels.shape)}; expected integers [n]")
    names = strings(_load_json(sample["keys.json"], f"chunk {key} keys")) if keys else None
    captions = strings(_load_json(sample["captions.json"], f"chunk {key} captions")) \
        if "captions.json" in sample else None
    text_emb, text_mask = _load_text(sample, key, text_shape)
    return Chunk(codes, labels, names, flipped, captions, text_emb, text_mask)


def _load_text(sample: dict, key, text_shape) -> tuple[np.ndarray | None, np.ndarray | None]:
    if "text_emb.npy" not in sample and "text_mask.npy" not in sample:
        if text_shape is not None:
            raise BadChunk(f"chunk {key} has no text_emb.npy; the manifest says the shards hold text embeddings")
        return None, None
    if "text_emb.npy" not in sample or "text_mask.npy" not in sample:
        raise BadChunk(f"chunk {key} has only one of text_emb.npy and text_mask.npy")
    emb = _load_npy(sample["text_emb.npy"], f"chunk {key} text embeddings")
    mask = _load_npy(sample["text_mask.npy"], f"chunk {key} text masks")
    if emb.dtype != TEXT_DTYPE or emb.ndim != 3 or (text_shape is not None and
                                                     list(emb.shape[1:]) != [int(t) for t in text_shape]):
        shape = "[n, L, D]" if text_shape is None else f"[n, {text_shape[0]}, {text_shape[1]}]"
        raise BadChunk(f"chunk {key} text embeddings are {emb.dtype} {list(emb.shape)}; expected "
                       f"{np.dtype(TEXT_DTYPE).name} (bfloat16 bits) {shape}")
    if mask.dtype != bool or list(mask.shape) != list(emb.shape[:2]):
        raise BadChunk(f"chunk {key} text masks are {mask.dtype} {list(mask.shape)}; expected bool "
                       f"{list(emb.shape[:2])}")
    return emb, mask


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, target):
        super().__init__()
        self.target, self.sha256, self.size = target, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.target.write(data)


def write_shard(path: str | Path, chunks: list[Chunk], source: str = "", skipped: list[str] | None = None
                ) -> ShardRecord:
    """Write ``chunks`` as one tar shard, atomically (temporary file, then rename), reproducibly (fixed mtime,
    sorted members: the same codes give the same bytes and SHA-256)."""
    path = Path(path)
    digest = {}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as raw:
            hashing = _HashingFile(raw)
            with wds.TarWriter(hashing, encoder=False, mtime=0, user="halton", group="halton", mode=0o444) as tar:
                for index, chunk in enumerate(chunks):
                    tar.write({"__key__": chunk_name(index), **chunk_members(chunk)})
            digest.update(sha256=hashing.sha256.hexdigest(), bytes=hashing.size)

    atomic_write(path, write)
    labels = [int(c.labels.max()) for c in chunks if len(c)]
    return ShardRecord(name=path.name, samples=sum(len(c) for c in chunks), chunks=[len(c) for c in chunks],
                       bytes=digest["bytes"], sha256=digest["sha256"], source=source, skipped=list(skipped or []),
                       max_label=max(labels, default=-1), captions=any(c.captions is not None for c in chunks),
                       text_embeddings=bool(chunks) and all(c.text_emb is not None for c in chunks))


def split_into_chunks(chunk: Chunk, chunk_size: int) -> list[Chunk]:
    return [chunk.slice(start, min(start + chunk_size, len(chunk))) for start in range(0, len(chunk), chunk_size)]
