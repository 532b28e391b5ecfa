"""Class-to-image MaskGIT transformer (AdaLN-zero), state-dict compatible with the released Halton-MaskGIT checkpoints.

The model is split into a *trunk* (embeddings, blocks, final modulated norm) and an output *head*, so a sampler can
run the head only on the positions whose logits a step actually needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from halton.models.cache import (
    TrunkCache,
    local_inputs,
    patch_tokens,
    recomputed_count,
)
from halton.models.hub import HubModel
from halton.models.layers import AdaLNBlock, AdaNorm, init_linears, padded_logits

# (hidden_dim, depth, heads) of the released sizes and of the paper's 705M class-to-image model.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (384, 6, 6),
    "small": (512, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "xl": (1152, 28, 16),
}


def grid_of(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    height, width = input_size
    return int(height), int(width)


NULL_CONDITIONS = ("null_class", "mask_token")


class ClassConditioning(nn.Embedding):
    """Class labels -> conditioning vector; row ``num_classes`` is the null (unconditional) class used for CFG."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__(num_classes + 1, dim)
        self.num_classes = num_classes

    def forward(self, labels: torch.Tensor, drop: torch.Tensor, null: torch.Tensor | None = None) -> torch.Tensor:
        """``null`` [D]: the vector dropped samples get instead of the null class (eMIGM's mask-token CFG)."""
        if null is not None:
            return torch.where(drop[:, None], null.to(self.weight.dtype), super().forward(labels))
        labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return super().forward(labels)


class MaskTransformer(nn.Module, HubModel):
    """Bidirectional transformer over a grid of VQ codes, conditioned on a class through AdaLN.

    ``forward(codes, labels, drop_label)`` takes codes [B, H, W] (mask id = ``codebook_size``), labels [B] and
    drop_label [B] bool (True: unconditional) and returns logits [B, H*W, codebook_size + 1].
    """

    def __init__(self, codebook_size: int, input_size: int | Sequence[int] = 16, hidden_dim: int = 768,
                 depth: int = 12, heads: int = 12, mlp_dim: int | None = None, num_classes: int = 1000,
                 registers: int = 1, patch_size: int = 1, dropout: float = 0.0, null_condition: str = "null_class"):
        super().__init__()
        self.record_config(locals())  # config.json of save_pretrained
        if null_condition not in NULL_CONDITIONS:
            raise ValueError(f"null_condition={null_condition!r} is not allowed; allowed: {', '.join(NULL_CONDITIONS)}")
        self.null_condition = null_condition
        self.codebook_size = codebook_size
        self.mask_id = codebook_size
        self.grid = grid_of(input_size)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.hidden_dim = hidden_dim
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.registers = registers
        if patch_size > 1 and (self.grid[0] % patch_size or self.grid[1] % patch_size):
            raise ValueError(f"token grid {self.grid} is not divisible by patch_size={patch_size}")

        self.cls_emb = ClassConditioning(num_classes, hidden_dim)
        self.tok_emb = nn.Embedding(codebook_size + 1, hidden_dim)
        self.pos_emb = nn.Embedding(self.num_tokens, hidden_dim)
        if patch_size > 1:
            # Patchify: a strided conv merges p x p token embeddings; a linear layer splits them back.
            self.in_proj = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=patch_size, stride=patch_size, bias=False)
            self.out_proj = nn.Linear(hidden_dim, hidden_dim * patch_size ** 2, bias=False)
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(
            AdaLNBlock(hidden_dim, heads, mlp_dim or 4 * hidden_dim, dropout) for _ in range(depth))
        self.last_norm = AdaNorm(hidden_dim)
        self.head = nn.Linear(hidden_dim, codebook_size + 1)
        self.head.weight = self.tok_emb.weight  # tied input/output embeddings, as in the paper
        if registers > 0:
            self.reg_tokens = nn.Embedding(registers, hidden_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_linears(self)
        for emb in (self.cls_emb, self.tok_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)
        if self.registers > 0:
            nn.init.normal_(self.reg_tokens.weight, std=0.02)
        if self.patch_size > 1:
            nn.init.xavier_uniform_(self.in_proj.weight)
        for block in self.transformer.layers:  # AdaLN-zero: every block starts as the identity
            nn.init.zeros_(block.mlp[1].weight)
            nn.init.zeros_(block.mlp[1].bias)

    def condition(self, labels: torch.Tensor, drop_label: torch.Tensor) -> torch.Tensor:
        """Conditioning vectors [B, D]; dropped samples get the null class, or with ``null_condition="mask_token"``
        the learned embedding of the mask token (the null class row then stays unused, so released checkpoints load
        either way)."""
        null = self.tok_emb.weight[self.mask_id] if self.null_condition == "mask_token" else None
        return self.cls_emb(labels, drop_label, null)

    def trunk_conditioned(self, codes: torch.Tensor, cond: torch.Tensor, cache: TrunkCache | None = None,
                          positions: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, H*W, D] right before the output head, from the conditioning vectors [B, D].

        ``cache`` (:mod:`halton.models.cache`): without ``positions``, a full call that also fills the cache; with
        token ``positions`` [B, n], a local call that runs the blocks only at the trunk positions holding them
        (their patches), attending to the cached keys and values of the others; only the returned rows at
        ``positions`` are computed by the call."""
        b = codes.shape[0]
        height, width = self.grid
        x = self.tok_emb(codes.reshape(b, -1)) + self.pos_emb.weight
        p = self.patch_size
        if p > 1:
            x = rearrange(x, "b (h w) c -> b c h w", h=height, w=width)
            x = rearrange(self.in_proj(x), "b c h w -> b (h w) c")
        if self.registers > 0:
            x = torch.cat([x, self.reg_tokens.weight.unsqueeze(0).expand(b, -1, -1)], dim=1)
        x, index = local_inputs(x, positions, cache, self.grid, p)
        for i, block in enumerate(self.transformer.layers):
            x = block(x, cond, None if cache is None else cache.layer(i), index)
        if index is not None:  # the recomputed patches' tokens, normed, written into the cached hidden states
            tokens = patch_tokens(index, self.grid, p)
            if p > 1:  # each patch's p * p tokens, as the rearrange below orders them: (p1 p2 c)
                x = self.out_proj(x).reshape(b, -1, x.shape[-1])
            return cache.write(self.last_norm(x, cond), tokens)
        x = x[:, : x.shape[1] - self.registers]
        if p > 1:
            x = rearrange(self.out_proj(x), "b (h w) (p1 p2 c) -> b (h p1 w p2) c",
                          h=height // p, w=width // p, p1=p, p2=p)
        hidden = self.last_norm(x, cond)
        return hidden if cache is None else cache.write(hidden, None)

    def trunk_cost(self, positions: int | None = None) -> int:
        """Position-layers of one sample's trunk pass: (trunk positions, i.e. patches and registers, or those a local
        call at ``positions`` token positions runs) x blocks."""
        length = (self.num_tokens // self.patch_size ** 2 + self.registers if positions is None
                  else recomputed_count(positions, self.grid, self.patch_size))
        return length * len(self.transformer.layers)

    def trunk(self, codes: torch.Tensor, labels: torch.Tensor, drop_label: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, H*W, D] right before the output head."""
        return self.trunk_conditioned(codes, self.condition(labels, drop_label))

    def logits(self, hidden: torch.Tensor, positions: torch.Tensor | None = None,
               num_classes: int | None = None) -> torch.Tensor:
        """Output head, on every position or only at ``positions`` [B, K]; ``num_classes`` keeps the first classes
        only (``codebook_size`` drops the mask-token logit, which a sampler never draws)."""
        if positions is not None:
            hidden = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        if num_classes is None:
            return self.head(hidden)
        return nn.functional.linear(hidden, self.head.weight[:num_classes], self.head.bias[:num_classes])

    def training_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over every class at every position, padded with -inf classes to a matrix width that suits tensor
        cores (:func:`padded_logits`): what the training loss takes."""
        return padded_logits(hidden, self.head.weight, self.head.bias)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor, drop_label: torch.Tensor) -> torch.Tensor:
        return self.logits(self.trunk(codes, labels, drop_label))


def build_transformer(size: str, codebook_size: int, input_size: int | Sequence[int], num_classes: int,
                      registers: int = 1, patch_size: int = 1, dropout: float = 0.0,
                      null_condition: str = "null_class") -> MaskTransformer:
    """A transformer of one of the named sizes (tiny, small, base, large, xl)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; allowed: {', '.join(SIZES)}")
    hidden, depth, heads = SIZES[size]
    return MaskTransformer(codebook_size, input_size, hidden, depth, heads, 4 * hidden, num_classes,
                           registers, patch_size, dropout, null_condition)
