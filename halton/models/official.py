"""Load checkpoints in the Halton-MaskGIT formats as they are: the released class-to-image ones
(``ImageNet_{256,384}_*.pth``) and the text-to-image format of the reference code (``Network/txt_transformer.py``)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from halton.models.layers import swiglu_hidden_dim
from halton.models.text_transformer import TextMaskTransformer
from halton.models.transformer import MaskTransformer
from halton.utils.checkpoint import read_checkpoint

_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes, in any order or number."""
    cleaned = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        cleaned[key] = value
    return cleaned


def official_state_dict(checkpoint, path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a released checkpoint as read (``model_state_dict``, or the weights themselves)."""
    state = checkpoint.get("model_state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or "tok_emb.weight" not in strip_prefixes(state):
        raise ValueError(f"{path} is not a Halton-MaskGIT checkpoint (no model_state_dict with tok_emb.weight)")
    return strip_prefixes(state)


def _square_side(state: dict[str, torch.Tensor], path) -> int:
    num_tokens = state["pos_emb.weight"].shape[0]
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{path}: {num_tokens} positions do not form a square token grid")
    return side


def _depth(state: dict[str, torch.Tensor]) -> int:
    return len({k.split(".")[2] for k in state if k.startswith("transformer.layers.")})


def from_official_checkpoint(path: str | Path, heads: int) -> MaskTransformer | TextMaskTransformer:
    """Build the model a Halton-MaskGIT checkpoint holds, its sizes read from the tensor shapes, and load the
    weights: a :class:`TextMaskTransformer` for the text-to-image format (a ``cross_attn`` in its blocks), else a
    :class:`MaskTransformer`. The head count is not stored in the file, so it is given (class-to-image: tiny 6,
    small 6, base 12, large 16; the paper's text-to-image model 16)."""
    return from_official_state(read_checkpoint(path, "checkpoint"), heads, path)


def from_official_state(checkpoint: dict, heads: int, path: str | Path) -> MaskTransformer | TextMaskTransformer:
    """:func:`from_official_checkpoint` of a checkpoint already read (``path`` names it in errors)."""
    state = official_state_dict(checkpoint, path)
    if "transformer.layers.0.cross_attn.mha.in_proj_weight" in state:
        return _text_model(state, heads, path)
    num_classes = state["cls_emb.weight"].shape[0] - 1
    codebook_size, hidden = state["tok_emb.weight"].shape[0] - 1, state["tok_emb.weight"].shape[1]
    side = _square_side(state, path)
    ff_hidden = state["transformer.layers.0.ff.w1.weight"].shape[0]
    mlp_dim = 4 * hidden
    if swiglu_hidden_dim(mlp_dim) != ff_hidden:
        mlp_dim = ff_hidden  # any mlp_dim whose SwiGLU width rounds to ff_hidden gives identical shapes
    registers = state["reg_tokens.weight"].shape[0] if "reg_tokens.weight" in state else 0
    patch = state["in_proj.weight"].shape[-1] if "in_proj.weight" in state else 1
    inner = state["transformer.layers.0.attn.wq.weight"].shape[0]
    if heads < 1 or heads * (hidden // heads) != inner:
        raise ValueError(f"heads={heads} does not fit {path}: attention width {inner} = heads * (hidden {hidden} // heads)")
    model = MaskTransformer(codebook_size, side, hidden, _depth(state), heads, mlp_dim, num_classes, registers,
                            patch)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _text_model(state: dict[str, torch.Tensor], heads: int, path) -> TextMaskTransformer:
    codebook_size, c = state["tok_emb.weight"].shape[0] - 1, state["tok_emb.weight"].shape[1]
    hidden, text_dim = state["transformer.layers.0.mlp.0.weight"].shape
    if heads < 1 or hidden % heads:
        raise ValueError(f"heads={heads} does not fit {path}: it must divide the hidden width {hidden}")
    model = TextMaskTransformer(codebook_size, _square_side(state, path), c, hidden, text_dim, _depth(state), heads,
                                state["transformer.layers.0.ff.net.0.weight"].shape[0],
                                state["in_proj.weight"].shape[-1])
    model.load_state_dict(state, strict=True)
    return model.eval()
