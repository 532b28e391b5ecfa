"""Context caching for the trunk (ReCAP, arXiv 2505.19089): keep every block's self-attention keys and values
from a full evaluation, then run later steps' trunk only at the positions that must be recomputed.

A *full* call of ``model.trunk_conditioned(codes, cond, cache=cache)`` computes every position, as without a cache,
and stores each block's keys and values [B, heads, S, head_dim] of the S trunk positions (patches, then registers)
and the output hidden states [B, N, D]. A *local* call, ``trunk_conditioned(codes, cond, cache=cache,
positions=p)`` with token positions p [B, n], runs every block only at the trunk positions holding them: their
fresh keys and values replace the cached ones at those positions (in place), and their queries attend to all S.
The other positions' keys and values stay those of the last full call (or the last local call that recomputed
them), which is the approximation; cross-attention to a text is computed as without a cache. The local call writes
its hidden states at p into the cache's and returns that tensor: only the rows at ``positions`` are this call's.

The sampler recomputes, at each local step, the tokens decoded since the last full call (their input changed
from the mask token) and the positions whose logits the step needs; both sets only grow until the next full call,
so the in-place update equals replacing the positions in a copy.
"""

from __future__ import annotations

import torch


class LayerCache:
    """One block's self-attention keys and values [B, heads, S, head_dim]."""

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, keys: torch.Tensor, values: torch.Tensor, index: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values to attend to. ``index`` None (a full call): ``keys`` and ``values`` are every
        position's; they are stored and returned as they are. ``index`` [B, n] (a local call): the trunk positions
        of the n fresh ``keys`` / ``values`` [B, heads, n, head_dim], which replace the stored ones there."""
        if index is None:
            self.keys, self.values = keys, values
            return keys, values
        if self.keys is None:
            raise RuntimeError("a local trunk call needs a full call on the same cache first")
        where = index[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[-1])
        self.keys.scatter_(2, where, keys.to(self.keys.dtype))
        self.values.scatter_(2, where, values.to(self.values.dtype))
        return self.keys, self.values


class TrunkCache:
    """Every block's :class:`LayerCache` and the trunk's output hidden states [B, N, D] of one batch (for CFG the
    concatenated [conditional; unconditional] batch, so each half keeps its own keys and values)."""

    def __init__(self):
        self.layers: list[LayerCache] = []
        self.hidden: torch.Tensor | None = None

    def layer(self, block: int) -> LayerCache:
        while len(self.layers) <= block:
            self.layers.append(LayerCache())
        return self.layers[block]

    @property
    def filled(self) -> bool:
        return self.hidden is not None

    def write(self, hidden: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """Store the output hidden states: all of them (``tokens`` None, a full call) or [B, n, D] at the token
        positions ``tokens`` [B, n] (a local call). Returns the stored [B, N, D]."""
        if tokens is None:
            self.hidden = hidden
        else:
            self.hidden.scatter_(1, tokens.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]), hidden.to(self.hidden.dtype))
        return self.hidden


def patch_index(positions: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """The trunk position (patch, row-major over the patch grid) of each token position [B, n] of a ``grid``
    token grid patchified ``patch`` x ``patch``; the positions themselves when ``patch`` is 1."""
    if patch == 1:
        return positions
    width = grid[1]
    rows, cols = positions // width, positions % width
    return (rows // patch) * (width // patch) + cols // patch


def local_inputs(x: torch.Tensor, positions: torch.Tensor | None, cache, grid: tuple[int, int], patch: int
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The trunk's inputs ``x`` [B, N, C] a call runs: all of them (``positions`` None), or for a local call the
    recomputed patches' (:func:`recomputed_patches`), with their trunk positions [B, m]."""
    if positions is None:
        return x, None
    if cache is None:
        raise ValueError("a trunk call at given positions needs the cache of a full call")
    index = recomputed_patches(positions, grid, patch)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1])), index


def recomputed_patches(positions: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """The trunk positions [B, m] a local call runs for the token ``positions`` [B, n]: the tokens themselves when
    ``patch`` is 1; else the patches holding them, each once, m = min(n, patches) a fixed shape (no host
    synchronisation): the marked patches first, then (where a sample's tokens share patches) unmarked ones, whose
    recomputation is merely fresh. :func:`recomputed_count` is m."""
    if patch == 1:
        return positions
    count = recomputed_count(positions.shape[1], grid, patch)
    marked = torch.zeros(positions.shape[0], count_of_patches(grid, patch), dtype=torch.bool, device=positions.device)
    marked.scatter_(1, patch_index(positions, grid, patch), True)
    return torch.argsort((~marked).to(torch.uint8), dim=1, stable=True)[:, :count]


def count_of_patches(grid: tuple[int, int], patch: int) -> int:
    return (grid[0] // patch) * (grid[1] // patch)


def recomputed_count(tokens: int, grid: tuple[int, int], patch: int) -> int:
    """How many trunk positions a local call at ``tokens`` token positions runs (:func:`recomputed_patches`)."""
    return tokens if patch == 1 else min(tokens, count_of_patches(grid, patch))


def patch_tokens(patches: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """The token positions [B, n * patch^2] of patches [B, n], each patch's tokens row by row within it."""
    if patch == 1:
        return patches
    width = grid[1]
    top = (patches // (width // patch)) * patch
    left = (patches % (width // patch)) * patch
    offsets = torch.arange(patch, device=patches.device)
    rows = top[..., None, None] + offsets[:, None]
    cols = left[..., None, None] + offsets[None, :]
    return (rows * width + cols).flatten(1)  # [B, n, patch, patch] -> [B, n * patch^2]
