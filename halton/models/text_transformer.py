"""Text-to-image MaskGIT transformer (cross-attention on frozen text-encoder embeddings), state-dict compatible with
the text-to-image network of the Halton-MaskGIT code (``Network/txt_transformer.py``).

Tokens of width ``c`` are normalised, patchified (a ``proj`` x ``proj`` strided convolution to width ``hidden_dim``),
run through pre-norm blocks (self-attention, cross-attention on the text, GELU MLP), unpatchified (1x1 convolution
and pixel shuffle) and scored against the tied token embeddings. As for the class model, the work is split into
``condition`` (the text side: every block's projection of the text and its keys and values, computed once per
sampling run), ``trunk_conditioned`` (the image side) and ``logits`` (the head, on the positions needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from halton.models.cache import (
    LayerCache,
    TrunkCache,
    local_inputs,
    patch_tokens,
    recomputed_count,
)
from halton.models.hub import HubModel
from halton.models.layers import init_linears, padded_logits
from halton.models.transformer import SIZES, grid_of

# The paper's text-to-image model: 32x32 VQ-8 tokens patchified 2x2, width 1024, depth 24, 16 heads, T5-XL text.
NULL_TEXTS = ("zeros", "mask_token")
PAPER_T2I = {"input_size": 32, "c": 1024, "hidden_dim": 1024, "text_dim": 2048, "codebook_size": 16384,
             "depth": 24, "heads": 16, "mlp_dim": 4096, "patch_size": 2}


@dataclass
class TextContext:
    """The text side of a forward pass: per block, the keys and values [B, heads, L, head_dim] of its
    cross-attention, and the attention mask [B, 1, 1, L] (True = attend; None: every token, as the reference)."""

    keys_values: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor | None


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameters (``mha.in_proj_weight`` = q, k, v stacked, ``mha.out_proj``) run
    through SDPA, so that cross-attention can take a padding mask and precomputed keys and values."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"heads={heads} does not divide the hidden width {dim}")
        self.mha = nn.MultiheadAttention(dim, heads, dropout=dropout, bias=True, batch_first=True)
        self.heads, self.dim, self.dropout = heads, dim, dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.dim
        k, v = F.linear(context, self.mha.in_proj_weight[d:], self.mha.in_proj_bias[d:]).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: torch.Tensor, keys_values: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None, cache: LayerCache | None = None,
                index: torch.Tensor | None = None) -> torch.Tensor:
        """``cache`` (self-attention only): see :class:`halton.models.cache.LayerCache`."""
        d = self.dim
        if keys_values is None:  # self-attention
            q, k, v = (self._split(t) for t in
                       F.linear(x, self.mha.in_proj_weight, self.mha.in_proj_bias).chunk(3, dim=-1))
            if cache is not None:
                k, v = cache.update(k, v, index)
        else:
            q = self._split(F.linear(x, self.mha.in_proj_weight[:d], self.mha.in_proj_bias[:d]))
            k, v = keys_values
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.mha.out_proj(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CrossAttentionBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention on the block's own projection of the text, MLP."""

    def __init__(self, dim: int, text_dim: int, heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim))  # the text projection
        self.ln1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attn = MultiheadAttention(dim, heads, dropout)
        self.ln2 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = MultiheadAttention(dim, heads, dropout)
        self.ln3 = nn.LayerNorm(dim, eps=1e-6)
        self.ff = FeedForward(dim, mlp_dim, dropout)

    def text_keys_values(self, text: torch.Tensor, drop: torch.Tensor | None = None,
                         null: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the projected text; with ``null`` [D], dropped samples attend to that vector instead
        (at every text position: attention over identical keys gives that vector's value)."""
        projected = self.mlp(text)
        if null is not None and drop is not None:
            projected = torch.where(drop.view(-1, 1, 1), null.to(projected.dtype), projected)
        return self.cross_attn.keys_values(projected)

    def forward(self, x: torch.Tensor, keys_values, mask: torch.Tensor | None, cache: LayerCache | None = None,
                index: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.ln1(x), cache=cache, index=index)
        x = x + self.cross_attn(self.ln2(x), keys_values, mask)
        return x + self.ff(self.ln3(x))


class TextMaskTransformer(nn.Module, HubModel):
    """Bidirectional transformer over a grid of VQ codes, conditioned on text-token embeddings by cross-attention.

    ``forward(codes, text, drop_label, text_mask=None)``: codes [B, H, W] (mask id = ``codebook_size``), text
    [B, L, text_dim] float, drop_label [B] bool (True: the null condition, zero embeddings, for CFG) or None,
    text_mask [B, L] bool (True = real token; padding then changes nothing) or None (every token attended, as the
    reference). Returns logits [B, H*W, codebook_size + 1].
    """

    def __init__(self, codebook_size: int, input_size: int | Sequence[int] = 16, c: int = 768,
                 hidden_dim: int = 768, text_dim: int = 768, depth: int = 12, heads: int = 16,
                 mlp_dim: int | None = None, patch_size: int = 1, dropout: float = 0.0, null_condition: str = "zeros"):
        super().__init__()
        self.record_config(locals())  # config.json of save_pretrained
        if null_condition not in NULL_TEXTS:
            raise ValueError(f"null_condition={null_condition!r} is not allowed; allowed: {', '.join(NULL_TEXTS)}")
        if null_condition == "mask_token" and c != hidden_dim:
            raise ValueError(f"null_condition=mask_token needs the token width c={c} equal to hidden_dim={hidden_dim}")
        self.null_condition = null_condition
        self.codebook_size = self.mask_id = codebook_size
        self.grid = grid_of(input_size)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.c, self.hidden_dim, self.text_dim, self.patch_size = c, hidden_dim, text_dim, patch_size
        if self.grid[0] % patch_size or self.grid[1] % patch_size:
            raise ValueError(f"token grid {self.grid} is not divisible by patch_size={patch_size}")
        self.tok_emb = nn.Embedding(codebook_size + 1, c)
        self.pos_emb = nn.Embedding(self.num_tokens, c)
        self.first_norm = nn.LayerNorm(c, eps=1e-6)
        self.in_proj = nn.Conv2d(c, hidden_dim, kernel_size=patch_size, stride=patch_size, bias=False)
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(
            CrossAttentionBlock(hidden_dim, text_dim, heads, mlp_dim or 4 * hidden_dim, dropout)
            for _ in range(depth))
        self.out_proj = nn.Sequential(nn.Conv2d(hidden_dim, c * patch_size ** 2, kernel_size=1, bias=False),
                                      nn.PixelShuffle(patch_size))
        self.last_norm = nn.LayerNorm(c, eps=1e-6)
        self.bias = nn.Parameter(torch.zeros(1, 1, codebook_size + 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference initialisation: Xavier linears, N(0, 0.02) embeddings, zero text projections."""
        init_linears(self)
        for block in self.transformer.layers:  # nn.MultiheadAttention's in_proj is not an nn.Linear
            for attn in (block.self_attn.mha, block.cross_attn.mha):
                nn.init.xavier_uniform_(attn.in_proj_weight)
                nn.init.zeros_(attn.in_proj_bias)
            nn.init.zeros_(block.mlp[0].weight)
            nn.init.zeros_(block.mlp[0].bias)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.xavier_uniform_(self.out_proj[0].weight)
        nn.init.zeros_(self.bias)

    def condition(self, text: torch.Tensor, drop_label: torch.Tensor | None = None,
                  text_mask: torch.Tensor | None = None) -> TextContext:
        """Every block's keys and values of the text; dropped samples get the null text: zero embeddings at every
        token (the reference), or with ``null_condition="mask_token"`` the mask token's embedding in place of the
        projected text (eMIGM's mask-token CFG)."""
        if text.shape[-1] != self.text_dim:
            raise ValueError(f"text embeddings are {text.shape[-1]} wide; this model takes text_dim={self.text_dim}")
        mask = None
        null = self.tok_emb.weight[self.mask_id] if self.null_condition == "mask_token" else None
        if drop_label is not None:
            text = torch.where(drop_label.view(-1, 1, 1), torch.zeros_like(text), text)
        if text_mask is not None:
            keep = text_mask.bool() if drop_label is None else text_mask.bool() | drop_label.view(-1, 1)
            mask = keep[:, None, None, :]
        return TextContext([block.text_keys_values(text, drop_label, null) for block in self.transformer.layers], mask)

    def trunk_conditioned(self, codes: torch.Tensor, context: TextContext, cache: TrunkCache | None = None,
                          positions: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, H*W, c] right before the output head. ``cache`` and ``positions``: a full call that
        fills the cache, or a local call at token ``positions`` [B, n] (self-attention cached, cross-attention to
        the text computed as always), as :meth:`MaskTransformer.trunk_conditioned` describes."""
        b = codes.shape[0]
        height, width = self.grid
        p = self.patch_size
        x = self.first_norm(self.tok_emb(codes.reshape(b, -1)) + self.pos_emb.weight)
        x = self.in_proj(x.transpose(1, 2).reshape(b, self.c, height, width))
        x = x.flatten(2).transpose(1, 2)
        x, index = local_inputs(x, positions, cache, self.grid, p)
        for i, (block, keys_values) in enumerate(zip(self.transformer.layers, context.keys_values)):
            x = block(x, keys_values, context.mask, None if cache is None else cache.layer(i), index)
        if index is not None:  # the 1x1 convolution as a linear map, then the pixel shuffle's (c p1 p2) order
            x = F.linear(x, self.out_proj[0].weight.flatten(1))
            x = x.unflatten(-1, (self.c, p * p)).transpose(-1, -2).reshape(b, -1, self.c)
            return cache.write(self.last_norm(x), patch_tokens(index, self.grid, p))
        x = x.transpose(1, 2).reshape(b, self.hidden_dim, height // p, width // p)
        x = self.out_proj(x).flatten(2).transpose(1, 2)
        hidden = self.last_norm(x)
        return hidden if cache is None else cache.write(hidden, None)

    def trunk_cost(self, positions: int | None = None) -> int:
        """Position-layers of one sample's trunk pass: (trunk positions, i.e. patches, or those a local call at
        ``positions`` token positions runs) x blocks."""
        length = (self.num_tokens // self.patch_size ** 2 if positions is None
                  else recomputed_count(positions, self.grid, self.patch_size))
        return length * len(self.transformer.layers)

    def trunk(self, codes: torch.Tensor, text: torch.Tensor, drop_label: torch.Tensor | None = None,
              text_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.trunk_conditioned(codes, self.condition(text, drop_label, text_mask))

    def logits(self, hidden: torch.Tensor, positions: torch.Tensor | None = None,
               num_classes: int | None = None) -> torch.Tensor:
        """Output head (tied embeddings plus a bias), on every position or only at ``positions`` [B, K];
        ``num_classes`` keeps the first classes only (``codebook_size`` drops the mask-token logit)."""
        if positions is not None:
            hidden = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        weight, bias = self.tok_emb.weight, self.bias.view(-1)
        if num_classes is not None:
            weight, bias = weight[:num_classes], bias[:num_classes]
        return F.linear(hidden, weight, bias)

    def training_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over every class at every position, padded with -inf classes to a matrix width that suits tensor
        cores (:func:`padded_logits`): what the training loss takes."""
        return padded_logits(hidden, self.tok_emb.weight, self.bias.view(-1))

    def forward(self, codes: torch.Tensor, text: torch.Tensor, drop_label: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(self.trunk(codes, text, drop_label, text_mask))


def build_text_transformer(size: str, codebook_size: int, input_size: int | Sequence[int], text_dim: int,
                           patch_size: int = 1, dropout: float = 0.0, null_condition: str = "zeros"
                           ) -> TextMaskTransformer:
    """A text-to-image transformer of one of the named sizes (those of the class model; ``large`` with
    ``patch_size=2``, 32x32 tokens, codebook 16384 and ``text_dim=2048`` is the paper's 480M model)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; allowed: {', '.join(SIZES)}")
    hidden, depth, heads = SIZES[size]
    return TextMaskTransformer(codebook_size, input_size, hidden, hidden, text_dim, depth, heads, 4 * hidden,
                               patch_size, dropout, null_condition)
