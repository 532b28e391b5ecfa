"""CLIP score of generated images against the prompts they were generated from, through torchmetrics' CLIPScore.

The score of an image and its prompt is 100 * cos(CLIP image embedding, CLIP text embedding); the reported number
is the mean over the images, clipped at 0 (torchmetrics' definition). The usual model for zero-shot COCO is
``openai/clip-vit-large-patch14`` (ViT-L/14), the default.

Note: the reference Halton-MaskGIT code passes the real COCO images to its CLIP score, which measures how well
COCO's images match COCO's captions, not the model. Here the *generated* images are scored against their prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from halton.evaluation.features import to_uint8_rgb
from halton.utils.hub import load_frozen

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


class _ProjectedCLIP(nn.Module):
    """A CLIPModel whose ``get_image_features`` / ``get_text_features`` return the projected embeddings as tensors,
    as torchmetrics' CLIPScore expects: transformers 5 returns them inside a BaseModelOutputWithPooling
    (``pooler_output``), transformers 4 returned the tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config  # torchmetrics reads the text length limit from it

    @staticmethod
    def _tensor(output) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def load_clip(model_name_or_path: str | Path = DEFAULT_CLIP) -> tuple[nn.Module, object]:
    """(model, processor) of a CLIP saved with ``save_pretrained`` in a local folder, or of a Hugging Face hub
    name. A name that is a path (absolute, relative with ./ or ~, or more than one folder deep) must be a folder."""
    from transformers import CLIPModel, CLIPProcessor

    allowed = (f"allowed: a local folder saved with CLIPModel/CLIPProcessor.save_pretrained, or a Hugging Face hub "
               f"name such as {DEFAULT_CLIP}")
    model, processor = load_frozen("CLIP model", model_name_or_path, allowed, CLIPModel, CLIPProcessor)
    return _ProjectedCLIP(model.eval().requires_grad_(False)), processor


class CLIPScorer:
    """Mean CLIP score of generated images against their prompts, accumulated over batches (torchmetrics'
    ``CLIPScore``, whose states also sum across processes under torch.distributed).

    ``model_name_or_path``: a local folder (``save_pretrained`` layout) or a hub name; default
    ``openai/clip-vit-large-patch14``, the usual choice for zero-shot COCO. Images are float [B, C, H, W] in
    [-1, 1] (the framework's convention), C = 1 (repeated to RGB) or 3; CLIP's processor resizes and crops them.
    """

    def __init__(self, model_name_or_path: str | Path = DEFAULT_CLIP, device: torch.device | str | None = None):
        from torchmetrics.multimodal.clip_score import CLIPScore

        self.name = str(model_name_or_path)
        loaded = load_clip(model_name_or_path)
        self.metric = CLIPScore(model_name_or_path=lambda: loaded)  # a callable: any CLIP, local folders included
        self.device = torch.device("cpu")
        self.to(device or "cpu")

    def to(self, device: torch.device | str) -> CLIPScorer:
        self.device = torch.device(device)
        self.metric.to(self.device)
        return self

    def _inputs(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"CLIP score images of shape {shape}; allowed: float [B, C, H, W] in [-1, 1], C = 1 or 3")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(images) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"CLIP score of {len(images)} images with {len(prompts)} prompts; allowed: one prompt "
                             f"(a string) per image")
        return to_uint8_rgb(images.to(self.device)), prompts  # the 0-255 RGB CLIP's processor expects

    @torch.no_grad()
    def update(self, images: torch.Tensor, prompts: Sequence[str]) -> None:
        self.metric.update(*self._inputs(images, prompts))

    def compute(self) -> float:
        if int(self.metric.n_samples) == 0:
            raise ValueError("no CLIP score to compute: no images were given; call update(images, prompts) first")
        return float(self.metric.compute())

    def reset(self) -> None:
        self.metric.reset()

    @torch.no_grad()
    def scores(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """The score of each image against its prompt, [B] on the CPU (not clipped, not accumulated)."""
        from torchmetrics.functional.multimodal.clip_score import _clip_score_update

        score, _ = _clip_score_update(*self._inputs(images, prompts), self.metric.model, self.metric.processor)
        return score.float().cpu()
