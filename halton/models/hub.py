"""Models in the Hugging Face format: a folder (or hub repository) holding ``config.json`` (the constructor's
arguments) and ``model.safetensors`` (the weights; no pickle, so loading runs no code). Through
``huggingface_hub.PyTorchModelHubMixin``: ``save_pretrained(DIR)``, ``push_to_hub("you/name")`` and
``from_pretrained(DIR or repo id)`` on the model classes (:func:`halton.models.loading.load_pretrained` for either
kind). The model classes import this module; it imports none of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import PyTorchModelHubMixin

from halton.utils.hub import MODEL_WEIGHTS, hub_file


# The model card an export (save_pretrained, push_to_hub) writes: this project's, naming the paper it implements.
MODEL_CARD = """
---
{{ card_data }}
---

A Masked Generative Image Transformer (MaskGIT) trained or converted with **halton**, the Hydra and Lightning
framework that trains, samples and evaluates MaskGIT models with the Halton scheduler.

- Paper: "Halton Scheduler for Masked Generative Image Transformer", ICLR 2025 (the authors' code:
  https://github.com/valeoai/Halton-MaskGIT).
- Files: `config.json` (the transformer's arguments), `model.safetensors` (its weights), and, when written by
  `python -m halton.export`, `pipeline.json` (the tokenizer, the kind of condition, the scheduler and the sampling
  defaults).

```python
from halton import Pipeline

pipe = Pipeline.from_pretrained("THIS_FOLDER_OR_hf://OWNER/REPO")
images = pipe(classes=[0, 1], steps=32).images   # or pipe(prompt="...") for a text-to-image model
```
"""


class HubModel(PyTorchModelHubMixin, library_name="halton", model_card_template=MODEL_CARD,
               tags=["maskgit", "halton-scheduler", "image-generation"]):
    """The mixin with the constructor's arguments recorded as plain JSON (Hydra hands lists over as ListConfig,
    which the mixin would silently leave out of config.json) and a loader that reads safetensors only, strictly."""

    def record_config(self, arguments: dict) -> None:
        """Call at the top of ``__init__`` with ``locals()``."""
        def plain(value):
            return [plain(v) for v in value] if isinstance(value, Sequence) and not isinstance(value, str) else value
        self._hub_mixin_config = {k: plain(v) for k, v in arguments.items() if k not in ("self", "__class__")}

    @property
    def init_config(self) -> dict:
        """The constructor's arguments, plain (what config.json holds): ``type(model)(**model.init_config)``."""
        return dict(self._hub_mixin_config)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         map_location: str = "cpu", strict: bool = True, **model_kwargs):
        from safetensors.torch import load_model

        model = cls(**model_kwargs)
        if Path(model_id).is_dir():
            weights = Path(model_id) / MODEL_WEIGHTS
            if not weights.is_file():
                raise FileNotFoundError(f"{model_id} has no {MODEL_WEIGHTS} (this project loads safetensors only)")
        else:
            weights = hub_file(f"hf://{model_id}/{MODEL_WEIGHTS}", "model weights", revision=revision,
                               cache_dir=cache_dir, force_download=force_download, local_files_only=local_files_only,
                               token=token)
        load_model(model, weights, strict=strict, device=str(map_location))
        return model.eval()

