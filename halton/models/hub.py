"""Models in the Hugging Face format: a folder (or hub repository) holding ``config.json`` (the constructor's
arguments) and ``model.safetensors`` (the weights; no pickle, so loading runs no code). Through
``huggingface_hub.PyTorchModelHubMixin``: ``save_pretrained(DIR)``, ``push_to_hub("you/name")`` and
``from_pretrained(DIR or repo id)`` on the model classes, and :func:`load_pretrained` for either kind."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin, constants

from halton.utils.hub import hub_file, is_hub_path, offline, parse

WEIGHTS = constants.SAFETENSORS_SINGLE_FILE  # model.safetensors
CONFIG = constants.CONFIG_NAME              # config.json


class HubModel(PyTorchModelHubMixin, library_name="halton", repo_url="https://github.com/valeoai/Halton-MaskGIT",
               tags=["maskgit", "halton-scheduler", "image-generation"]):
    """The mixin with the constructor's arguments recorded as plain JSON (Hydra hands lists over as ListConfig,
    which the mixin would silently leave out of config.json) and a loader that reads safetensors only, strictly."""

    def record_config(self, arguments: dict) -> None:
        """Call at the top of ``__init__`` with ``locals()``."""
        def plain(value):
            return [plain(v) for v in value] if isinstance(value, Sequence) and not isinstance(value, str) else value
        self._hub_mixin_config = {k: plain(v) for k, v in arguments.items() if k not in ("self", "__class__")}

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         map_location: str = "cpu", strict: bool = True, **model_kwargs):
        from safetensors.torch import load_model

        model = cls(**model_kwargs)
        if Path(model_id).is_dir():
            weights = Path(model_id) / WEIGHTS
            if not weights.is_file():
                raise FileNotFoundError(f"{model_id} has no {WEIGHTS} (this project loads safetensors only)")
        else:
            weights = hub_file(f"hf://{model_id}/{WEIGHTS}", "model weights", revision=revision, cache_dir=cache_dir,
                               force_download=force_download, local_files_only=local_files_only, token=token)
        load_model(model, weights, strict=strict, device=str(map_location))
        return model.eval()


def pretrained_config(path: str) -> dict:
    """The config.json of a folder or of ``hf://owner/repo``, or a one-line error."""
    file = hub_file(f"{path.rstrip('/')}/{CONFIG}", "model config") if is_hub_path(path) \
        else Path(path).expanduser() / CONFIG
    try:
        config = json.loads(Path(file).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{file} is not a readable model config: {error}") from None
    if not isinstance(config, dict) or "codebook_size" not in config:
        raise ValueError(f"{file} is not the config of a halton model (no codebook_size)")
    return config


def load_pretrained(path: str, map_location: str | torch.device = "cpu"):
    """A class or text model saved with ``save_pretrained``: a local folder, or ``hf://owner/repo`` on the hub
    (fetched into its cache; ``HF_HUB_OFFLINE=1`` reads the cache only). The kind comes from config.json."""
    from halton.models.text_transformer import TextMaskTransformer
    from halton.models.transformer import MaskTransformer

    model_class = TextMaskTransformer if "text_dim" in pretrained_config(path) else MaskTransformer
    source = parse(path)[0] if is_hub_path(path) else str(Path(path).expanduser())
    return model_class.from_pretrained(source, local_files_only=offline(), map_location=str(map_location))
