"""Feature extractors for generative metrics: torch-fidelity's Inception-v3 and a small digits classifier.

Every extractor maps images in [-1, 1] to ``features`` (for FID, precision, recall) and ``logits`` (for IS). Its
``metric_prefix`` labels the metrics it yields ("" for Inception: fid, is, ...; "digits_" for the digits
classifier), so numbers from different extractors are never mixed up.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn

from halton.utils.files import require_file


class FeatureExtractor(nn.Module, ABC):
    name: str            # identifies the network and its weights (part of the reference-statistics fingerprint)
    metric_prefix: str   # prefix of the metric names it yields
    values_per_image: int  # features + logits of one image (what an evaluation keeps per image)

    @abstractmethod
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [B, C, H, W] in [-1, 1] -> {"features": [B, D] float32, "logits": [B, K] float32}"""


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

    metric_prefix = ""
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

    metric_prefix = "digits_"
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


EXTRACTORS = {"inception": InceptionFeatures, "digits": DigitsFeatures}  # by the names extractor= takes


def fingerprint(*parts) -> str:
    """A short stable hash of the given values."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]
