"""Building blocks of the MaskGIT transformer (names and maths follow the released Halton-MaskGIT checkpoints)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from halton.models.cache import LayerCache


def init_linears(root: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` under ``root`` (both reference models)."""
    for module in root.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def padded_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, multiple: int = 64) -> torch.Tensor:
    """``F.linear(hidden, weight, bias)`` with the classes padded to a multiple of ``multiple`` by columns of -inf.

    A codebook plus the mask token (16,385 classes) is an odd matrix width, for which cuBLAS falls back to slow
    tensor-core kernels (measured on an H100: the training head took a fifth of the XL step); a multiple of 64 gets
    the fast ones. A -inf logit has probability 0, so softmax, cross-entropy (and its gradient) and argmax over the
    padded logits equal those over the real classes."""
    pad = -weight.shape[0] % multiple
    if pad == 0:
        return F.linear(hidden, weight, bias)
    weight = F.pad(weight, (0, 0, 0, pad))
    bias = torch.cat([bias, bias.new_full((pad,), float("-inf"))])
    return F.linear(hidden, weight, bias)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN modulation; shift and scale are per sample [B, D], broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 (as the reference), with optional weight and bias."""

    def __init__(self, dim: int, eps: float = 1e-5, weight: bool = True, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        out = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
        if self.weight is not None:
            out = out * self.weight
        if self.bias is not None:
            out = out + self.bias
        return out


def swiglu_hidden_dim(mlp_dim: int, multiple_of: int = 256) -> int:
    """Hidden width of the SwiGLU: 2/3 of mlp_dim, rounded up to a multiple of 256."""
    hidden = int(2 * mlp_dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class FeedForward(nn.Module):
    """SwiGLU feed-forward without biases: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        hidden = swiglu_hidden_dim(mlp_dim)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.dropout(F.silu(self.w1(x)) * self.w3(x)))


class Attention(nn.Module):
    """Multi-head attention with QK-norm (parameter-free RMSNorm over the full width, before the head split).

    The inner width is ``heads * (dim // heads)``, as in the reference (the released ``small`` model has 512 / 6
    heads, so 510). With ``context`` it is cross-attention: queries from ``x``, keys and values from ``context``.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, context_dim: int | None = None):
        super().__init__()
        if heads < 1 or dim // heads < 1:
            raise ValueError(f"heads={heads} is not valid for hidden width {dim}; allowed: 1..{dim}")
        self.heads = heads
        self.head_dim = dim // heads
        inner = heads * self.head_dim
        kv_dim = context_dim or dim
        self.wq = nn.Linear(dim, inner, bias=False)
        self.wk = nn.Linear(kv_dim, inner, bias=False)
        self.wv = nn.Linear(kv_dim, inner, bias=False)
        self.wo = nn.Linear(inner, dim, bias=False)
        self.q_norm = RMSNorm(inner, weight=False)
        self.k_norm = RMSNorm(inner, weight=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, cache: LayerCache | None = None,
                index: torch.Tensor | None = None) -> torch.Tensor:
        """``cache`` (self-attention): store the keys and values (``index`` None) or replace them at the trunk
        positions ``index`` [B, n] of ``x``'s rows and attend to all cached ones (:class:`LayerCache`)."""
        b, n, _ = x.shape
        kv = x if context is None else context
        v = self.wv(kv)
        q = self.q_norm(self.wq(x)).to(v.dtype)
        k = self.k_norm(self.wk(kv)).to(v.dtype)
        q, k, v = (t.view(b, -1, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(k, v, index)
        attn_mask = None if context_mask is None else context_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.wo(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class AdaLNBlock(nn.Module):
    """DiT-style block: AdaLN-zero modulation of attention and SwiGLU from a conditioning vector."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.ln1 = RMSNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.ln2 = RMSNorm(dim)
        self.ff = FeedForward(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, cache: LayerCache | None = None,
                index: torch.Tensor | None = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.mlp(cond).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.ln1(x), shift1, scale1), cache=cache, index=index)
        x = x + gate2.unsqueeze(1) * self.ff(modulate(self.ln2(x), shift2, scale2))
        return x


class AdaNorm(nn.Module):
    """Final RMSNorm (weight and bias) modulated by the conditioning vector."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm_final = RMSNorm(dim, weight=True, bias=True)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.mlp(cond).chunk(2, dim=1)
        return modulate(self.norm_final(x), shift, scale)
