"""A tokenizer's identity (class name and settings), recorded in a manifest and compared when loading, so codes
are never decoded (or extended) with a different tokenizer than the one that made them."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from halton.tokenizers import Tokenizer

LAZY_ARGUMENT = "path"  # the argument a lazy tokenizer factory receives: the weights file


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def tokenizer_spec(tokenizer: Tokenizer | functools.partial) -> dict[str, Any]:
    """``{"name": ..., "config": {...}}`` of a tokenizer, or of a ``functools.partial`` that builds one from a
    weights path (as Hydra's ``_partial_: true`` gives), without building it."""
    if isinstance(tokenizer, functools.partial):
        func = tokenizer.func
        owner = getattr(func, "__self__", None)  # a classmethod such as LlamaGenVQ.from_checkpoint
        name = owner.__name__ if isinstance(owner, type) else getattr(func, "__name__", str(func))
        parameters = inspect.signature(func).parameters
        config = {k: p.default for k, p in parameters.items()
                  if k != LAZY_ARGUMENT and p.default is not inspect.Parameter.empty}
        config.update({k: v for k, v in tokenizer.keywords.items() if k != LAZY_ARGUMENT})
        return {"name": name, "config": {k: _plain(v) for k, v in sorted(config.items())}}
    config = getattr(tokenizer, "config", None)
    if config is None:
        config = {"codebook_size": tokenizer.codebook_size}
    return {"name": type(tokenizer).__name__, "config": {k: _plain(v) for k, v in sorted(config.items())}}


def same_tokenizer(recorded: dict[str, Any], spec: dict[str, Any]) -> bool:
    return recorded.get("name") == spec["name"] and recorded.get("config") == spec["config"]
