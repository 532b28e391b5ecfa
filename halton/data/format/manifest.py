"""The manifest of a folder of code shards: what the shards hold (grid, codebook, classes, tokenizer) and, per
shard, its samples, chunk sizes, byte size and SHA-256. Loaders trust it for planning; it is checked against
the data config and against the files before any reading."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from halton.utils.files import atomic_write, file_sha256

FORMAT, VERSION = "halton-code-shards", 1
MANIFEST_NAME = "manifest.json"
EXTRACT_COMMAND = "python -m halton.data.writing.extract_codes"  # what makes a folder of shards and its manifest


class ManifestMismatch(ValueError):
    """The manifest and the shards, or the manifest and the data config, disagree."""


@dataclass
class ShardRecord:
    """One finished shard: ``chunks`` lists the sample count of each chunk, in member order."""

    name: str
    samples: int
    chunks: list[int]
    bytes: int
    sha256: str
    source: str = ""                                     # the input it was made from (files range, tar name)
    skipped: list[str] = field(default_factory=list)     # inputs that could not be read (corrupt images)
    max_label: int = -1
    captions: bool = False
    text_embeddings: bool = False                        # every chunk holds text_emb.npy and text_mask.npy

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ShardRecord":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Manifest:
    grid: list[int]                # tokens per image, [h, w]
    codebook_size: int
    num_classes: int
    chunk_size: int                # samples per chunk (the last chunk of a shard may hold fewer)
    flipped: bool                  # chunks also hold the codes of the horizontally flipped images
    captions: bool
    tokenizer: dict[str, Any]      # name and settings
    image_size: int | None
    source: dict[str, Any]
    shards: list[ShardRecord]
    classes: list[str] = field(default_factory=list)
    # Precomputed text embeddings: {"embeddings": "precompute", "encoder": name or path, "max_length": L,
    # "width": D}; empty when the shards hold none (captions only, or none; also manifests older than this field).
    text: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    version: int = VERSION

    @property
    def samples(self) -> int:
        return sum(shard.samples for shard in self.shards)

    @property
    def text_embeddings(self) -> bool:
        return bool(self.text)

    @property
    def text_shape(self) -> list[int] | None:
        """[max_length, width] of the stored text embeddings, None when there are none."""
        return [int(self.text["max_length"]), int(self.text["width"])] if self.text else None

    def describe_text(self) -> str:
        if not self.text:
            return "captions only (encoded in the training step)" if self.captions else "no captions"
        return (f"precomputed text embeddings of {self.text.get('encoder')} ({self.text['max_length']} tokens x "
                f"{self.text['width']}, bf16)")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["samples"] = self.samples
        return data

    def save(self, folder: str | Path) -> Path:
        text = json.dumps(self.to_dict(), indent=1)
        return atomic_write(Path(folder) / MANIFEST_NAME, lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load(cls, folder: str | Path) -> "Manifest":
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {MANIFEST_NAME} in {folder}: extract the shards first "
                                    f"({EXTRACT_COMMAND} ...), or an extraction there is unfinished")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ManifestMismatch(f"{path} is not valid JSON ({error})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ManifestMismatch(f"{path} is not a code-shard manifest (format {data.get('format')!r}, "
                                   f"allowed: {FORMAT!r})" if isinstance(data, dict) else f"{path} is not a manifest")
        if data.get("version") != VERSION:
            raise ManifestMismatch(f"{path} has version {data.get('version')}; allowed: {VERSION}")
        try:
            shards = [ShardRecord.from_dict(s) for s in data["shards"]]
            fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "shards"}
            manifest = cls(shards=shards, **fields)
        except (KeyError, TypeError) as error:
            raise ManifestMismatch(f"{path} is missing or has a bad field: {error}") from None
        if "samples" in data and data["samples"] != manifest.samples:
            raise ManifestMismatch(f"{path} says {data['samples']} samples but its shards add up to "
                                   f"{manifest.samples}")
        for shard in manifest.shards:
            if sum(shard.chunks) != shard.samples:
                raise ManifestMismatch(f"{path}: shard {shard.name} has {shard.samples} samples but its chunks "
                                       f"add up to {sum(shard.chunks)}")
        return manifest

    def check_facts(self, codebook_size: int, grid, num_classes: int, flip: bool, where: str) -> None:
        """The data config's facts (which the model config reads) must be those of the shards."""
        expected = {"codebook_size": self.codebook_size, "grid": list(self.grid), "num_classes": self.num_classes}
        given = {"codebook_size": codebook_size, "grid": [int(g) for g in grid], "num_classes": num_classes}
        for key in expected:
            if expected[key] != given[key]:
                raise ManifestMismatch(f"data.{key}={given[key]} but the shards in {where} have {key}="
                                       f"{expected[key]} (tokenizer {self.tokenizer.get('name')}); use a data config "
                                       "that matches them or extract them again")
        if flip and not self.flipped:
            raise ManifestMismatch(f"data.flip=true needs the codes of flipped images, which the shards in {where} "
                                   "do not hold; extract with flip=true or set data.flip=false")

    def check_text(self, text_dim: int | None, text_length: int | None, where: str) -> None:
        """The data config's text facts (``text_dim``, ``text_length``: what a text model config reads) must be those
        of the precomputed embeddings; shards without embeddings fit any (the captions are encoded online)."""
        if not self.text:
            return
        for key, given, stored in (("text_dim", text_dim, self.text["width"]),
                                   ("text_length", text_length, self.text["max_length"])):
            if given is not None and int(given) != int(stored):
                raise ManifestMismatch(f"data.{key}={given} but the shards in {where} hold "
                                       f"{self.describe_text()}; use data.{key}={stored} or extract them again")

    def check_files(self, folder: str | Path, checksums: bool = False) -> list[str]:
        """Missing shards are an error (the manifest does not describe this folder); shards whose size differs
        from the manifest are returned, to be read with care (a truncated or rewritten file). ``checksums``: also
        hash the shards of the right size (reads every byte: for small folders) and return those that differ."""
        folder = Path(folder)
        missing = [s.name for s in self.shards if not (folder / s.name).is_file()]
        if missing:
            raise ManifestMismatch(f"{folder}/{MANIFEST_NAME} lists {len(self.shards)} shards but {len(missing)} are "
                                   f"missing (first: {missing[0]}); extract again into {folder} (finished shards "
                                   "are kept)")
        problems = []
        for shard in self.shards:
            size = (folder / shard.name).stat().st_size
            if size != shard.bytes:
                problems.append(f"{shard.name} ({size} bytes, the manifest says {shard.bytes})")
            elif checksums and file_sha256(folder / shard.name) != shard.sha256:
                problems.append(f"{shard.name} (its SHA-256 differs from the manifest's)")
        return problems
