"""Feature extractors for generative metrics: torch-fidelity's Inception-v3, a small digits classifier and DINOv2.

Every extractor maps images in [-1, 1] to ``features`` (for the Frechet distance, precision, recall) and, when it is
a classifier, ``logits`` (for IS). The names ``extractor=`` takes, the class of each and the metric columns it yields
(prefixed, so numbers from different feature spaces are never mixed up) are :data:`halton.options.choices.EXTRACTORS`;
each class builds itself from the config (:meth:`FeatureExtractor.from_config`).
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from halton.options.choices import EXTRACTORS
from halton.utils.files import require_file
from halton.utils.hub import load_frozen


class FeatureExtractor(nn.Module, ABC):
    name: str            # identifies the network and its weights (part of the reference-statistics fingerprint)
    values_per_image: int  # features + logits of one image (what an evaluation keeps per image; a lower bound)

    @abstractmethod
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [B, C, H, W] in [-1, 1] -> {"features": [B, D] float32, "logits": [B, K] float32 (classifiers)}"""

    @classmethod
    def from_config(cls, cfg) -> FeatureExtractor:
        """The extractor evaluate.py's config asks for (its weights option, its cache folder)."""
        raise NotImplementedError(f"{cls.__name__} is not built from evaluate.py's config")


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    images = images.clamp(-1, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return ((images + 1) * 127.5).round().to(torch.uint8)


# torch-fidelity's port of the TensorFlow FID Inception (the file it downloads, and the one inception_weights= takes)
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[-1]


class InceptionFeatures(FeatureExtractor):
    """The standard Inception-v3 of FID/IS (torch-fidelity's ``inception-v3-compat``): 2048-d pool features and
    the unbiased logits. Weights from ``weights_path`` (``INCEPTION_FILE``, torch-fidelity's format) or, when
    ``weights_path`` is None and the machine is online, torch-fidelity's usual download of ``INCEPTION_URL``."""

    values_per_image = 2048 + 1008

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        if weights_path is not None:
            weights_path = str(require_file(weights_path, "Inception weights"))  # hf://owner/repo/file too
        self.name = "inception-v3-compat"
        try:
            self.net = FeatureExtractorInceptionV3(self.name, ["2048", "logits_unbiased"],
                                                   feature_extractor_weights_path=weights_path)
        except OSError as error:  # no network: urllib's URLError is an OSError
            raise ValueError(f"could not download the Inception-v3 weights ({error}); download {INCEPTION_URL} "
                             f"and pass inception_weights=PATH/{INCEPTION_FILE}") from None

    @classmethod
    def from_config(cls, cfg) -> InceptionFeatures:
        return cls(cfg.get("inception_weights"))

    @torch.no_grad()
    def forward(self, images):
        features, logits = self.net(to_uint8_rgb(images))
        return {"features": features.float(), "logits": logits.float()}


class DigitsClassifier(nn.Module):
    """A small MLP over the 8x8 digits: 64 -> 256 -> 64 (the features) -> 10 (the logits)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, images):
        features = self.body(images)
        return features, self.head(features)


class DigitsFeatures(FeatureExtractor):
    """A digits classifier trained once on the digits training split (seeded), cached under ``cache_dir``.

    Its metrics are named digits_fid, digits_is, digits_precision, digits_recall: they are not Inception metrics.
    """

    values_per_image = 64 + 10
    VERSION = 1  # bump when the architecture or the training recipe changes

    def __init__(self, cache_dir: str | Path, seed: int = 0, steps: int = 600):
        super().__init__()
        self.seed, self.steps = seed, steps
        self.name = f"digits-mlp-v{self.VERSION}-seed{seed}-steps{steps}"
        self.net = DigitsClassifier()
        path = Path(cache_dir) / f"{self.name}.safetensors"
        if path.is_file():
            from safetensors.torch import load_file

            self.net.load_state_dict(load_file(path))
        else:
            self._train()
            from safetensors.torch import save_file

            from halton.utils.files import atomic_write

            atomic_write(path, lambda tmp: save_file(self.net.state_dict(), tmp))
        self.net.eval().requires_grad_(False)

    @classmethod
    def from_config(cls, cfg) -> DigitsFeatures:
        return cls(Path(cfg.paths.data_dir) / "cache")

    def _train(self) -> None:
        from halton.data.digits.in_memory import load_digits_split

        (images, labels), _ = load_digits_split(seed=0)
        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            self.net = DigitsClassifier()
        optimizer = torch.optim.Adam(self.net.parameters(), lr=2e-3, weight_decay=1e-4)
        for _ in range(self.steps):
            batch = torch.randint(len(labels), (256,), generator=generator)
            noisy = images[batch] + 0.1 * torch.randn(images[batch].shape, generator=generator)
            loss = nn.functional.cross_entropy(self.net(noisy)[1], labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    @torch.no_grad()
    def forward(self, images):
        features, logits = self.net(images.float().clamp(-1, 1))
        return {"features": features, "logits": logits}

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return (self(images)["logits"].argmax(-1) == labels).float().mean().item()


# ------------------------------------------------------------------ DINOv2 (FD-DINOv2)
DINOV2_DEFAULT = "facebook/dinov2-large"  # ViT-L/14, dgm-eval's default DINOv2
DINOV2_SIZE = 224  # dgm-eval resizes every image to 224 x 224: a 16 x 16 grid of 14-pixel patches
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the torch.hub DINOv2 (facebookresearch/dinov2) interpolates its 37 x 37 position embeddings to the grid with
# bicubic scale factors (grid + 0.1) / 37, not to the grid's size as transformers' port does
POSITION_OFFSET = 0.1


def dinov2_pixels(images: torch.Tensor, size: int = DINOV2_SIZE) -> torch.Tensor:
    """The DINOv2 input of images [B, C, H, W] in [-1, 1], as dgm-eval prepares a saved image: 8-bit RGB, resized
    to ``size`` x ``size`` with PIL's bicubic filter (torchvision's Resize of a PIL image), then ``/ 255`` and the
    ImageNet mean and deviation. PIL resizes an 8-bit image in two passes, across then down, each rounded to 8 bits;
    the same passes with torch's antialiased bicubic (PIL's kernel) match it to 2 levels at most, and exactly on 95%
    to 100% of the values (docs/evaluation.md has the measurement). Batched, on the images' device."""
    pixels = to_uint8_rgb(images).float()
    height, width = pixels.shape[-2:]
    if width != size:
        pixels = nn.functional.interpolate(pixels, size=(height, size), mode="bicubic", antialias=True)
        pixels = pixels.round().clamp(0, 255)
    if height != size:
        pixels = nn.functional.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True)
        pixels = pixels.round().clamp(0, 255)
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels / 255 - mean) / std


def load_dinov2(weights: str | Path = DINOV2_DEFAULT):
    """transformers' ``Dinov2Model`` from a local folder (the Hugging Face format: config.json and
    model.safetensors) or a hub name (``facebook/dinov2-large``, ``hf://owner/repo[@revision]``)."""
    from transformers import Dinov2Model

    allowed = (f"allowed: a local folder in the Hugging Face format (huggingface-cli download {DINOV2_DEFAULT} "
               f"--local-dir DIR, then dinov2_weights=DIR) or a hub name such as {DINOV2_DEFAULT}")
    # float32 as the torch.hub model runs, whatever the file's
    (model,) = load_frozen("DINOv2 weights", weights, allowed, Dinov2Model, dtype=torch.float32)
    return model


def weights_fingerprint(module: nn.Module) -> str:
    """A digest of a network's parameter values (not of where its files lie)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


class DinoV2Features(FeatureExtractor):
    """DINOv2's image embedding: the class token after the final layer norm (``pooler_output``, 1024 values for
    ViT-L/14), what the torch.hub model returns, of images prepared as dgm-eval does (:func:`dinov2_pixels`; Stein
    et al. 2023, "Exposing flaws of generative model evaluation metrics"). Not a classifier: no IS. Its metrics are
    dinov2_fd (the Frechet distance, FD-DINOv2), dinov2_precision and dinov2_recall.

    ``weights``: a local folder in the Hugging Face format or a hub name (default ``facebook/dinov2-large``)."""

    values_per_image = 384  # the smallest DINOv2 (ViT-S/14); ViT-L/14 keeps 1024

    def __init__(self, weights: str | Path = DINOV2_DEFAULT, size: int = DINOV2_SIZE):
        super().__init__()
        self.net = load_dinov2(weights).eval().requires_grad_(False)
        self.size = size
        self._place_positions(size // self.net.config.patch_size)
        config = self.net.config
        self.name = (f"dinov2-{config.hidden_size}x{config.num_hidden_layers}-p{config.patch_size}-{size}px-"
                     f"{weights_fingerprint(self.net)}")

    def _place_positions(self, grid: int) -> None:
        """Interpolate the position embeddings once to the ``grid`` x ``grid`` patches of the input, as the torch.hub
        model does on every call (transformers' port then uses them as they are)."""
        embeddings = self.net.embeddings
        table = embeddings.position_embeddings.detach()
        side = math.isqrt(table.shape[1] - 1)
        if side == grid:
            return
        patches = table[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        scale = (grid + POSITION_OFFSET) / side
        patches = nn.functional.interpolate(patches, scale_factor=(scale, scale), mode="bicubic", antialias=False)
        patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(table.dtype)
        embeddings.position_embeddings = nn.Parameter(torch.cat([table[:, :1], patches], 1), requires_grad=False)

    @classmethod
    def from_config(cls, cfg) -> DinoV2Features:
        return cls(cfg.get("dinov2_weights") or DINOV2_DEFAULT)

    @torch.no_grad()
    def forward(self, images):
        pixels = dinov2_pixels(images, self.size).to(self.net.dtype)
        return {"features": self.net(pixel_values=pixels).pooler_output.float()}


def extractor_class(name: str) -> type[FeatureExtractor]:
    """The class of the extractor ``extractor=name`` names (:data:`halton.options.choices.EXTRACTORS`)."""
    return globals()[EXTRACTORS[name].cls]


def build_extractors(names: Sequence[str], cfg) -> dict[str, FeatureExtractor]:
    """The extractors ``names`` (``extractor=``), each built from evaluate.py's config, by name."""
    return {name: extractor_class(name).from_config(cfg) for name in names}


def fingerprint(*parts) -> str:
    """A short stable hash of the given values."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]
