"""Reference statistics: mu/sigma (and features, for precision/recall) of a real image set, computed once per
data + extractor + image size and cached, or loaded precomputed (ADM-style .npz with mu/sigma, or a .pt with
mu/cov such as the official ImageNet_256_train_stats.pt). Kind ``coco``: exactly the COCO images whose captions
are the prompts (``halton.evaluation.coco``)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from halton.evaluation.coco import sample_captions
from halton.evaluation.features import FeatureExtractor, fingerprint
from halton.evaluation.metrics import feature_statistics
from halton.options.choices import REFERENCE_KINDS
from halton.utils.checkpoint import read_checkpoint
from halton.utils.files import atomic_write, file_sha256, require_file
from halton.utils.progress import progress as progress_bar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
KINDS = REFERENCE_KINDS  # halton.options.choices


@dataclass
class ReferenceStats:
    stats: dict[str, np.ndarray]           # mu [D], sigma [D, D]
    features: torch.Tensor | None          # [N, D] (a seeded subset for large sets) for precision/recall
    extractor: str | None                  # name of the extractor that made them (None: unknown, precomputed)
    image_size: tuple[int, int] | None
    num_images: int
    source: str

    def check(self, extractor: FeatureExtractor, image_size: tuple[int, int]) -> None:
        """Refuse statistics made with another extractor or at another image size."""
        if self.extractor is not None and self.extractor != extractor.name:
            raise ValueError(f"reference statistics {self.source} were made with extractor {self.extractor!r}; "
                             f"this run uses {extractor.name!r}")
        if self.image_size is not None and tuple(self.image_size) != tuple(image_size):
            raise ValueError(f"reference statistics {self.source} are for images of {list(self.image_size)}; "
                             f"this run generates {list(image_size)}")

    def check_features(self, dimensions: int, extractor: str) -> None:
        """Refuse statistics of another feature space than the ``dimensions`` features of ``extractor`` (a
        precomputed file says nothing else about its extractor)."""
        if self.stats["mu"].shape[0] != dimensions:
            raise ValueError(f"reference statistics {self.source} are of {self.stats['mu'].shape[0]}-dimensional "
                             f"features; extractor={extractor} makes {dimensions}-dimensional ones")

    def save(self, path: str | Path) -> Path:
        arrays = {"mu": self.stats["mu"], "sigma": self.stats["sigma"],
                  "meta": np.array(json.dumps({"extractor": self.extractor, "image_size": self.image_size,
                                               "num_images": self.num_images, "source": self.source}))}
        if self.features is not None:
            arrays["features"] = self.features.numpy()

        def write(tmp):
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            Path(tmp).write_bytes(buffer.getvalue())

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> ReferenceStats:
        path = require_file(path, "reference statistics")
        if path.suffix == ".npz":
            data = np.load(path, allow_pickle=False)
            if "mu" not in data or "sigma" not in data:
                raise ValueError(f"{path} has no mu/sigma arrays (keys: {', '.join(data.files)})")
            meta = json.loads(str(data["meta"])) if "meta" in data else {}
            features = torch.from_numpy(data["features"]) if "features" in data else None
            stats = {"mu": data["mu"].astype(np.float64), "sigma": data["sigma"].astype(np.float64)}
        elif path.suffix in (".pt", ".pth"):
            data = read_checkpoint(path, "reference statistics")
            if not isinstance(data, dict) or "mu" not in data or not ("cov" in data or "sigma" in data):
                raise ValueError(f"{path} is not a statistics file with mu and cov")
            cov = data["cov"] if "cov" in data else data["sigma"]
            stats = {"mu": torch.as_tensor(data["mu"]).double().numpy(), "sigma": torch.as_tensor(cov).double().numpy()}
            meta, features = {}, None
        else:
            raise ValueError(f"unknown statistics format {path.suffix!r} for {path}; allowed: .npz, .pt")
        size = meta.get("image_size")
        return cls(stats, features, meta.get("extractor"), tuple(size) if size else None,
                   int(meta.get("num_images", 0)), str(path))


def extract_features(extractor: FeatureExtractor, batches, device: torch.device, desc: str) -> dict[str, torch.Tensor]:
    """Run the extractor over an iterable of image batches in [-1, 1]; its outputs (features, and the logits of a
    classifier) on the CPU."""
    outputs: dict[str, list[torch.Tensor]] = {}
    extractor = extractor.to(device)
    for images in progress_bar(batches, desc=desc, leave=False):
        for name, value in extractor(images.to(device)).items():
            outputs.setdefault(name, []).append(value.cpu())
    return {name: torch.cat(values) for name, values in outputs.items()}


# ------------------------------------------------------------------ real image sets
def _resize_center_crop(image, size: tuple[int, int]) -> torch.Tensor:
    from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

    image = resize(image.convert("RGB"), min(size), antialias=True)
    return center_crop(pil_to_tensor(image), list(size)).float() / 127.5 - 1


def _folder_images(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


def _open_image(path: Path):
    from halton.utils.pixels import open_image, unreadable

    image = open_image(path, f"reference image {path}")  # the pixel count checked from the header
    try:
        image.load()
    except (OSError, SyntaxError) as error:
        raise ValueError(f"reference image {path} cannot be read as an image: {unreadable(error)}") from None
    return image


def _batched(images: Iterator[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    batch = []
    for image in images:
        batch.append(image)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def _folder_files(root: str | None, max_images: int) -> tuple[str, list[Path]]:
    """(identity, image files) of the first ``max_images`` images under ``root``, in sorted order."""
    root = Path(root or "")
    if not root.is_dir():
        raise FileNotFoundError(f"reference image folder not found: {root}")
    files = _folder_images(root)[:max_images]
    identity = fingerprint(root.resolve(), *[(str(f.relative_to(root)), f.stat().st_size) for f in files])
    return f"folder-{identity}", files


def _coco_files(root: str | None, captions: str | None, num_images: int, seed: int) -> tuple[str, list[Path]]:
    """(identity, image files) of the COCO images chosen by ``sample_captions(captions, num_images, seed)``: the
    images whose captions are the prompts, under the image folder ``root`` (e.g. val2014/)."""
    if not captions or not root:
        raise ValueError("reference.kind=coco needs reference.captions=PATH (a COCO captions file such as "
                         "annotations/captions_val2014.json) and reference.path=FOLDER (its images, e.g. val2014/)")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"COCO image folder not found: {folder}")
    chosen = sample_captions(captions, num_images, seed)
    files = [folder / name for name in chosen.files]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"COCO image not found: {missing[0]} ({len(missing)} of the {len(files)} chosen "
                                f"images of {captions} are missing under {folder})")
    # the captions file's content (not its path alone) and the images chosen from it name the set
    identity = fingerprint(file_sha256(captions), folder.resolve(), num_images, seed,
                           *[(name, f.stat().st_size) for name, f in zip(chosen.files, files)])
    return f"coco-{identity}", files


def reference_source(kind: str, path: str | None, image_size: tuple[int, int], max_images: int,
                     batch_size: int = 100, captions: str | None = None, seed: int = 0):
    """(identity string, number of images, iterable of image batches in [-1, 1]) of a real image set. For
    ``coco``, ``path`` is the image folder, ``captions`` the captions file, and the ``max_images`` images are the
    ones ``sample_captions(captions, max_images, seed)`` chooses (the prompts' images)."""
    if kind == "digits":
        from halton.data.digits.in_memory import load_digits_split

        (images, _), _ = load_digits_split(seed=0)
        if tuple(image_size) != tuple(images.shape[-2:]):
            raise ValueError(f"the digits are {list(images.shape[-2:])} images; this run generates {list(image_size)}")
        images = images[:max_images]
        return "digits-train-seed0", len(images), list(images.split(batch_size))
    if kind in ("folder", "coco"):
        if kind == "coco":
            identity, files = _coco_files(path, captions, max_images, seed)
        else:
            identity, files = _folder_files(path, max_images)
        loader = (_resize_center_crop(_open_image(f), image_size) for f in files)
        return identity, len(files), _batched(loader, batch_size)
    if kind == "webdataset":
        import webdataset as wds

        shards = sorted(Path().glob(path)) if path and any(c in path for c in "*?[") else [Path(path or "")]
        missing = [s for s in shards if not s.is_file()]
        if not shards or missing:
            raise FileNotFoundError(f"reference shards not found: {path}")
        identity = fingerprint(*[(s.resolve(), s.stat().st_size) for s in shards])
        dataset = wds.WebDataset([str(s) for s in shards], shardshuffle=False).decode("pil").to_tuple(
            "jpg;jpeg;png;webp")
        images = (_resize_center_crop(sample[0], image_size) for sample, _ in zip(dataset, range(max_images)))
        return f"webdataset-{identity}", None, _batched(images, batch_size)
    raise ValueError(f"unknown reference kind {kind!r}; allowed: {', '.join(KINDS)}")


def reference_statistics(kind: str, path: str | None, extractor: FeatureExtractor, image_size: tuple[int, int],
                         cache_dir: str | Path, device: torch.device, max_images: int = 50000,
                         max_features: int = 50000, captions: str | None = None, seed: int = 0) -> ReferenceStats:
    """Load precomputed statistics (kind=file) or compute them from a real image set, cached under a fingerprint
    of the data, the extractor and the image size. ``captions`` and ``seed``: kind=coco only (reference_source)."""
    if kind == "file":
        if not path:
            raise ValueError("reference.kind=file needs reference.path=PATH (an .npz with mu/sigma or a .pt with "
                             "mu/cov), or reference.kind=folder|webdataset|coco|digits to compute the statistics")
        reference = ReferenceStats.load(path)
        reference.check(extractor, image_size)
        return reference
    identity, _, batches = reference_source(kind, path, image_size, max_images, captions=captions, seed=seed)
    key = fingerprint(identity, extractor.name, tuple(image_size), max_images, max_features)
    cache = Path(cache_dir) / f"reference_{kind}_{key}.npz"
    if cache.is_file():
        reference = ReferenceStats.load(cache)
        reference.check(extractor, image_size)
        return reference
    extracted = extract_features(extractor, batches, device, desc=f"reference features ({kind})")
    features = extracted["features"]
    kept = features
    if len(features) > max_features:  # precision/recall on a seeded subset of a large set
        kept = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(0))[:max_features]]
    reference = ReferenceStats(feature_statistics(features), kept.float(), extractor.name, tuple(image_size),
                               len(features), identity)
    reference.save(cache)
    reference.source = str(cache)
    return reference
