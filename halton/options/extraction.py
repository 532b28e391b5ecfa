"""What extraction (``python -m halton.data.extract``) needs of its data config: a tokenizer to encode with, and
the weights of a tokenizer that loads them (``_partial_: true``)."""

from __future__ import annotations

from typing import Any

from halton.options.rules import Invalid


def check_extraction_tokenizer(data: Any, vq_checkpoint: str | None) -> None:
    """``data``: the data config (a dict or a DictConfig)."""
    tokenizer = data.get("tokenizer")
    if tokenizer is None:
        raise Invalid(f"data={data.get('_target_')} has no tokenizer to extract with; allowed: a data config with "
                      "data.tokenizer (e.g. data=imagenet_codes)")
    if tokenizer.get("_partial_") and not (vq_checkpoint or data.get("vq_checkpoint")):
        release = data.get("vq_release")
        raise Invalid("vq_checkpoint is not set: extraction needs the tokenizer weights"
                      f"{f' ({release})' if release else ''}; pass vq_checkpoint=PATH")
