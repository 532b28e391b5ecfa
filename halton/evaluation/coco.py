"""COCO captions for zero-shot text-to-image evaluation: N images drawn with a seeded generator from a COCO captions
file (``annotations/captions_val2014.json`` or ``captions_val2017.json``) and one caption per image, drawn with the
same generator. The generated images are made from the captions; the reference statistics from the same images
(``reference_statistics("coco", ...)``)."""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from halton.utils.files import require_file

COCO_IMAGES = 30000  # the usual zero-shot COCO protocol: 30k captions of the validation set, one per image
ALLOWED = "allowed: a COCO captions file such as annotations/captions_val2014.json"


@dataclass(frozen=True)
class CocoCaptions:
    """The chosen images and their captions, in the order drawn (so the first k of N images with a seed are the
    k images with that seed)."""

    files: list[str]        # file_name of each image, relative to the COCO image folder (e.g. val2014/)
    captions: list[str]     # its caption, stripped
    image_ids: list[int]

    def __len__(self) -> int:
        return len(self.files)

    def pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.files, self.captions))


def _entries(data, key: str, fields: tuple[str, ...], path: Path) -> list[dict]:
    """data[key], a list of objects each with ``fields``, or a one-line error naming what is missing."""
    entries = data.get(key) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path} is not a COCO captions file: no {key!r} list; {ALLOWED}")
    for i, entry in enumerate(entries):
        missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise ValueError(f"{path} is not a COCO captions file: {key}[{i}] has no {missing[0]!r}; {ALLOWED}")
    return entries


def sample_captions(path: str | Path, num_images: int = COCO_IMAGES, seed: int = 0) -> CocoCaptions:
    """Draw ``num_images`` distinct images that have captions, and one caption of each, with a generator seeded by
    ``seed``; the same file, number and seed always give the same pairs, whatever the order of the file."""
    if isinstance(num_images, bool) or not isinstance(num_images, numbers.Integral) or num_images < 1:
        raise ValueError(f"num_images={num_images!r} is not a positive integer; allowed: 1, 2, ...")
    path = require_file(path, "COCO captions file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not JSON ({error}); {ALLOWED}") from None
    images = _entries(data, "images", ("id", "file_name"), path)
    annotations = _entries(data, "annotations", ("image_id", "caption"), path)
    files = {entry["id"]: str(entry["file_name"]) for entry in images}
    unknown = next((a["image_id"] for a in annotations if a["image_id"] not in files), None)
    if unknown is not None:
        raise ValueError(f"{path} has captions of image_id {unknown!r}, which is not in its 'images'; {ALLOWED}")
    # captions grouped by image, in the order (image id, annotation id, text): independent of the file's order
    ordered = sorted(annotations, key=lambda a: (a["image_id"], a.get("id", 0), str(a["caption"])))
    ids = np.array([a["image_id"] for a in ordered])
    image_ids, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if num_images > len(image_ids):
        raise ValueError(f"num_images={num_images} is more than the {len(image_ids)} images with captions in {path}; "
                         f"allowed: 1 to {len(image_ids)}")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(image_ids), generator=generator)[:num_images].numpy()
    pick = (torch.rand(num_images, generator=generator, dtype=torch.float64).numpy() * counts[chosen]).astype(int)
    captions = [str(ordered[i]["caption"]).strip() for i in first[chosen] + pick]
    return CocoCaptions([files[i] for i in image_ids[chosen].tolist()], captions, image_ids[chosen].tolist())
