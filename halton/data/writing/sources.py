"""Where extraction reads images from, cut into units of work: one unit = one output shard.

- :class:`ImageFolderSource`: ``root/<class>/<image>`` (ImageNet's layout; classes are the sorted folder names,
  so ImageNet's synsets get the usual ids 0..999). The files are shuffled with a fixed seed before they are cut
  into shards, so that every chunk mixes classes (a chunk of one class would make the loader's batches hold a
  few classes only) and a resumed extraction cuts the same shards.
- :class:`WebDatasetSource`: image shards as img2dataset writes them (``.jpg``/``.png``/``.webp`` with ``.cls``,
  ``.txt`` and/or ``.json``); one output shard per input shard.
- :class:`DigitsSource`: scikit-learn's digits (one split of :func:`halton.data.digits.in_memory.load_digits_split`),
  optionally captioned (:mod:`halton.data.digits.captions`).

``Source.has_captions()`` says whether the images come with captions (what storing text embeddings needs).
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from halton.options.choices import SOURCE_FORMATS

log = logging.getLogger("halton.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
WDS_IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
SPLIT_IDS = {"train": 0, "val": 1}  # the digits' captions are drawn from [seed, split id]


@dataclass(frozen=True)
class Unit:
    """One output shard's worth of input: ``name`` is the shard's file name."""

    index: int
    name: str
    origin: str               # human-readable: which inputs (a range of files, an input tar)
    samples: int | None       # known in advance for files and arrays, not for tar inputs


@dataclass
class Item:
    image: torch.Tensor       # [C, S, S]: uint8 pixels, or float in [-1, 1] for array sources
    label: int
    key: str
    caption: str | None = None


@dataclass
class Skip:
    """An input that could not be read (recorded in the shard's record and the manifest)."""

    key: str
    reason: str


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """ADM's center crop (used to extract ImageNet codes for LlamaGen and MaskGIT): halve with a box filter
    while the short side is at least twice the target, resize the short side to ``size`` (bicubic), crop the
    center."""
    image = image.convert("RGB")
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


class Source(ABC):
    num_classes: int | None = None
    classes: list[str] = []

    @abstractmethod
    def units(self) -> list[Unit]: ...

    @abstractmethod
    def read(self, unit: Unit) -> Iterator[Item | Skip]: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]: ...

    def has_captions(self) -> bool:
        return False


class ImageFolderSource(Source):
    def __init__(self, path: str | Path, image_size: int, shard_size: int = 10000, shuffle_seed: int | None = 0):
        self.root = Path(path).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        if shard_size < 1:
            raise ValueError(f"shard_size={shard_size} is out of range; allowed: >= 1")
        self.image_size, self.shard_size, self.shuffle_seed = image_size, shard_size, shuffle_seed
        self.classes = sorted(d.name for d in os.scandir(self.root) if d.is_dir())
        if not self.classes:
            raise ValueError(f"{self.root} has no class folders; allowed: an ImageFolder layout root/<class>/<image>")
        self.num_classes = len(self.classes)
        files = []
        for label, name in enumerate(self.classes):
            for dirpath, _, filenames in os.walk(self.root / name):
                files.extend((os.path.join(dirpath, f), label) for f in filenames
                             if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise ValueError(f"{self.root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        files.sort()
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(len(files))
            files = [files[i] for i in order]
        self.files = files

    def units(self) -> list[Unit]:
        return [Unit(i, f"{i:06d}.tar", f"files {start}..{min(start + self.shard_size, len(self.files)) - 1}",
                     min(self.shard_size, len(self.files) - start))
                for i, start in enumerate(range(0, len(self.files), self.shard_size))]

    def read(self, unit: Unit) -> Iterator[Item | Skip]:
        start = unit.index * self.shard_size
        for path, label in self.files[start:start + self.shard_size]:
            key = os.path.splitext(os.path.relpath(path, self.root))[0]
            try:
                with Image.open(path) as image:
                    yield Item(to_tensor(center_crop(image, self.image_size)), label, key)
            except Exception as error:  # PIL raises many types for broken files
                yield Skip(key, f"{type(error).__name__}: {error}")

    def describe(self) -> dict[str, Any]:
        return {"kind": "imagefolder", "path": str(self.root), "images": len(self.files),
                "shard_size": self.shard_size, "shuffle_seed": self.shuffle_seed}


def expand_shards(spec: str) -> list[str]:
    """A folder (its ``*.tar``), a glob, or brace notation (``/data/{00000..01281}.tar``)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        urls = sorted(str(p) for p in path.glob("*.tar"))
    elif "{" in spec:
        urls = wds.shardlists.expand_urls(spec)
    else:
        urls = sorted(glob.glob(str(path)))
    if not urls:
        raise FileNotFoundError(f"no webdataset shards found at {spec}; allowed: a folder of .tar files, a glob "
                                "or {000..123} brace notation")
    return urls


class WebDatasetSource(Source):
    def __init__(self, path: str, image_size: int, label_key: str = "label", num_classes: int | None = None):
        self.spec, self.urls = path, expand_shards(path)
        self.image_size, self.label_key, self.num_classes = image_size, label_key, num_classes

    def units(self) -> list[Unit]:
        return [Unit(i, f"{i:06d}.tar", os.path.basename(url), None) for i, url in enumerate(self.urls)]

    def _label_and_caption(self, sample: dict) -> tuple[int, str | None]:
        meta = json.loads(sample["json"]) if "json" in sample else {}
        if "cls" in sample:
            label = int(sample["cls"].decode().strip())
        elif self.label_key in meta:
            label = int(meta[self.label_key])
        else:
            label = -1
        if "txt" in sample:
            caption = sample["txt"].decode()
        else:
            caption = meta.get("caption")
        return label, caption

    def read(self, unit: Unit) -> Iterator[Item | Skip]:
        url = self.urls[unit.index]
        samples = wds.tarfile_samples([{"url": url}])
        while True:
            try:
                sample = next(samples)
            except StopIteration:
                return
            except Exception as error:  # a truncated or corrupt input tar: keep what was read, report the rest
                yield Skip(f"{os.path.basename(url)}/*", f"input shard unreadable from here on: {error}")
                return
            key = sample["__key__"]
            member = next((m for m in WDS_IMAGE_MEMBERS if m in sample), None)
            if member is None:
                yield Skip(key, f"no image member ({', '.join(WDS_IMAGE_MEMBERS)})")
                continue
            try:
                label, caption = self._label_and_caption(sample)
                with Image.open(io.BytesIO(sample[member])) as image:
                    yield Item(to_tensor(center_crop(image, self.image_size)), label, key, caption)
            except Exception as error:
                yield Skip(key, f"{type(error).__name__}: {error}")

    def describe(self) -> dict[str, Any]:
        return {"kind": "webdataset", "path": self.spec, "input_shards": len(self.urls), "label_key": self.label_key}

    def has_captions(self) -> bool:
        """Whether the first sample of the first input shard has a caption (a ``.txt``, or ``caption`` in its
        ``.json``): one sample read, so that a data set without captions is refused before any work."""
        try:
            sample = next(iter(wds.tarfile_samples([{"url": self.urls[0]}])))
            return bool((self._label_and_caption(sample)[1] or "").strip())
        except Exception:  # noqa: BLE001  an unreadable first shard: the extraction itself reports it
            return True


class DigitsSource(Source):
    """One split of the seeded digits split, as float images in [-1, 1] (the PixelTokenizer's input). ``captions``:
    each image also gets a caption, one of :data:`~halton.data.digits.captions.TRAIN_PHRASINGS` of its digit,
    drawn per image from ``seed`` and the split."""

    classes = [str(d) for d in range(10)]
    num_classes = 10

    def __init__(self, split: str = "train", val_fraction: float = 0.1, seed: int = 0, shard_size: int = 256,
                 captions: bool = False):
        from halton.data.digits.in_memory import load_digits_split
        from halton.data.digits.captions import captions_for

        if split not in ("train", "val"):
            raise ValueError(f"unknown digits split {split!r}; allowed: train, val")
        if shard_size < 1:
            raise ValueError(f"shard_size={shard_size} is out of range; allowed: >= 1")
        train, val = load_digits_split(val_fraction, seed)
        self.images, self.labels = train if split == "train" else val
        self.split, self.val_fraction, self.seed, self.shard_size = split, val_fraction, seed, shard_size
        self.captions = captions_for(self.labels.numpy(), np.random.default_rng([seed, SPLIT_IDS[split]])) \
            if captions else None

    def units(self) -> list[Unit]:
        total = len(self.labels)
        return [Unit(i, f"{i:06d}.tar", f"{self.split} {start}..{min(start + self.shard_size, total) - 1}",
                     min(self.shard_size, total - start))
                for i, start in enumerate(range(0, total, self.shard_size))]

    def read(self, unit: Unit) -> Iterator[Item | Skip]:
        start = unit.index * self.shard_size
        for index in range(start, min(start + self.shard_size, len(self.labels))):
            yield Item(self.images[index], int(self.labels[index]), f"{self.split}/{index:05d}",
                       None if self.captions is None else self.captions[index])

    def describe(self) -> dict[str, Any]:
        from halton.data.digits.captions import PHRASINGS_ID

        described = {"kind": "digits", "split": self.split, "val_fraction": self.val_fraction, "seed": self.seed,
                     "shard_size": self.shard_size}
        if self.captions is not None:  # (uncaptioned shards made before captions existed stay current)
            described["captions"] = PHRASINGS_ID
        return described

    def has_captions(self) -> bool:
        return self.captions is not None


def build_source(kind: str, path: str | None, image_size: int | None, **options) -> Source:
    """``kind``: imagefolder, webdataset, digits or auto (a folder of class folders, else shards)."""
    if kind not in SOURCE_FORMATS:
        raise ValueError(f"unknown source format {kind!r}; allowed: {', '.join(SOURCE_FORMATS)}")
    if kind == "digits":
        return DigitsSource(split=options.get("split", "train"), val_fraction=options.get("val_fraction", 0.1),
                            seed=options.get("seed", 0), shard_size=options.get("shard_size") or 256,
                            captions=bool(options.get("captions", False)))
    if not path:
        raise ValueError("source.path is not set; allowed: an ImageFolder root or webdataset image shards")
    if not image_size or image_size < 1:
        raise ValueError(f"image_size={image_size} is out of range; allowed: >= 1 (pixels per side)")
    if kind == "auto":
        folder = Path(path).expanduser()
        kind = "webdataset" if not folder.is_dir() or any(folder.glob("*.tar")) else "imagefolder"
    if kind == "imagefolder":
        return ImageFolderSource(path, image_size, options.get("shard_size") or 10000, options.get("shuffle_seed", 0))
    return WebDatasetSource(path, image_size, options.get("label_key", "label"), options.get("num_classes"))
