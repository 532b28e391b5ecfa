"""LlamaGen's VQGAN (Sun et al. 2024), the tokenizer of the released Halton-MaskGIT checkpoints.

Loads ``vq_ds16_c2i.pt`` (VQ-16: 16x downsampling, ``ch_mult=(1, 1, 2, 2, 4)``) and ``vq_ds8_c2i.pt`` (VQ-8,
``ch_mult=(1, 2, 2, 4)``) as they are: the module tree below reproduces their state-dict keys one for one
(``encoder.conv_blocks.<level>.{res,attn,downsample}``, ``decoder.mid``, ``quantize.embedding``, ...).
Architecture: a convolutional encoder/decoder with GroupNorm(32, eps 1e-6) and swish, self-attention only at the
lowest resolution and in the middle (resblock, attention, resblock), and a codebook looked up by cosine distance
(latents and codebook rows are L2-normalised before the nearest-neighbour search and the lookup).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from halton.tokenizers.base import Tokenizer
from halton.utils.checkpoint import read_checkpoint

GROUPS = 32  # GroupNorm groups of the released models: every width must be a multiple of it
USAGE_KEY = "quantize.codebook_used"  # a training statistic (recently used codes), not a weight
USAGE_WINDOW = 65536


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """norm, swish, conv3x3, norm, swish, conv3x3, plus the input (through a 1x1 conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map, 1x1 convolutions for q, k, v and output."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        q, k, v = (proj(normed).reshape(b, 1, c, h * w).transpose(-1, -2) for proj in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(c), as the released models were trained
        return x + self.proj_out(attended.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Zero-pad right and bottom by one pixel, then a stride-2 3x3 convolution (halves the side exactly)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: residual blocks (each followed by attention at the lowest resolution) and an
    optional resampling (``downsample`` in the encoder, ``upsample`` in the decoder)."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int, attention: bool,
                 resample: str | None):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(in_channels if i == 0 else out_channels, out_channels)
                                 for i in range(blocks))
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(blocks if attention else 0))
        if resample == "down":
            self.downsample = Downsample(out_channels)
        elif resample == "up":
            self.upsample = Upsample(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[index](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


def middle(channels: int) -> nn.ModuleList:
    return nn.ModuleList([ResBlock(channels, channels), AttnBlock(channels), ResBlock(channels, channels)])


class Encoder(nn.Module):
    """Image [B,3,H,W] -> latent [B,z_channels,H/2^(L-1),W/2^(L-1)]; 2 residual blocks per level."""

    def __init__(self, ch: int, ch_mult: Sequence[int], z_channels: int, blocks: int = 2):
        super().__init__()
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        last = len(widths) - 1
        self.conv_blocks = nn.ModuleList(
            Level(ch if i == 0 else widths[i - 1], width, blocks, attention=i == last,
                  resample=None if i == last else "down")
            for i, width in enumerate(widths))
        self.mid = middle(widths[-1])
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.conv_blocks:
            x = level(x)
        for block in self.mid:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """Latent [B,z_channels,h,w] -> image [B,3,h*2^(L-1),w*2^(L-1)]; 3 residual blocks per level, the levels
    in reverse order (``conv_blocks.0`` is the lowest resolution, the one with attention)."""

    def __init__(self, ch: int, ch_mult: Sequence[int], z_channels: int, blocks: int = 3):
        super().__init__()
        widths = [ch * m for m in reversed(ch_mult)]
        self.conv_in = nn.Conv2d(z_channels, widths[0], 3, padding=1)
        self.mid = middle(widths[0])
        last = len(widths) - 1
        self.conv_blocks = nn.ModuleList(
            Level(widths[0] if i == 0 else widths[i - 1], width, blocks, attention=i == 0,
                  resample=None if i == last else "up")
            for i, width in enumerate(widths))
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for block in self.mid:
            x = block(x)
        for level in self.conv_blocks:
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Codebook(nn.Module):
    """``codebook_size`` vectors of ``codebook_dim``; nearest neighbour and lookup on L2-normalised rows."""

    def __init__(self, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, codebook_dim)
        # Never read: kept so that the state dict has exactly the released keys (files without it load too).
        self.register_buffer("codebook_used", torch.zeros(USAGE_WINDOW))

    def normalised(self) -> torch.Tensor:
        return F.normalize(self.embedding.weight.float(), dim=-1)

    def nearest(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B,D,h,w] -> codes [B,h,w]: the closest normalised codebook row to each normalised latent.

        In float32 whatever the autocast state: bf16 would change which code is nearest for close calls.
        """
        with torch.autocast(latents.device.type, enabled=False):
            b, d, h, w = latents.shape
            flat = F.normalize(latents.float().permute(0, 2, 3, 1).reshape(-1, d), dim=-1)
            codebook = self.normalised()
            # squared Euclidean distance |z|^2 + |e|^2 - 2 z.e, written as the released code computes it so
            # that near ties resolve the same way
            distances = (flat.square().sum(1, keepdim=True) + codebook.square().sum(1)) - 2 * flat @ codebook.T
            codes = distances.argmin(dim=-1)
        return codes.reshape(b, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B,h,w] -> quantised latents [B,D,h,w] (normalised rows)."""
        return F.embedding(codes, self.normalised()).permute(0, 3, 1, 2).contiguous()


class LlamaGenVQ(Tokenizer):
    """LlamaGen's VQGAN as a :class:`Tokenizer`: ``encode`` images [B,3,H,W] in [-1, 1] to codes [B,H/s,W/s],
    ``decode`` codes back to images in [-1, 1] (clamped), with s = 2^(len(ch_mult)-1)."""

    channels = 3

    def __init__(self, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), z_channels: int = 256,
                 codebook_size: int = 16384, codebook_dim: int = 8):
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        if not ch_mult or min(ch_mult) < 1:
            raise ValueError(f"ch_mult={list(ch_mult)} is not allowed; allowed: one or more positive integers")
        if ch < 1 or ch % GROUPS:
            raise ValueError(f"ch={ch} is not allowed; allowed: a positive multiple of {GROUPS} (GroupNorm groups)")
        if codebook_size < 2 or codebook_dim < 1 or z_channels < 1:
            raise ValueError(f"codebook_size={codebook_size}, codebook_dim={codebook_dim}, z_channels={z_channels}: "
                             "allowed: codebook_size >= 2, codebook_dim >= 1, z_channels >= 1")
        self.config = dict(ch=ch, ch_mult=list(ch_mult), z_channels=z_channels, codebook_size=codebook_size,
                           codebook_dim=codebook_dim)
        self.codebook_size = codebook_size
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.encoder = Encoder(ch, ch_mult, z_channels)
        self.decoder = Decoder(ch, ch_mult, z_channels)
        self.quantize = Codebook(codebook_size, codebook_dim)
        self.quant_conv = nn.Conv2d(z_channels, codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(codebook_dim, z_channels, 1)
        self.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                        z_channels: int = 256, codebook_size: int = 16384, codebook_dim: int = 8) -> "LlamaGenVQ":
        """Load a released ``vq_ds16_c2i.pt`` (defaults) or ``vq_ds8_c2i.pt`` (``ch_mult=(1, 2, 2, 4)``)."""
        checkpoint = read_checkpoint(path, "vq_checkpoint")
        state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict):
            raise ValueError(f"{path} is not a LlamaGen VQ checkpoint: expected a dict with a 'model' state dict")
        model = cls(ch, ch_mult, z_channels, codebook_size, codebook_dim)
        model.load_released_state(state, source=str(path))
        model.source = str(path)
        return model

    def recipe(self) -> dict:
        if getattr(self, "source", None) is None:
            raise NotImplementedError("a LlamaGenVQ not loaded with from_checkpoint has no weights file to record")
        return {"_target_": "halton.tokenizers.LlamaGenVQ.from_checkpoint", "path": self.source, **self.config}

    def load_released_state(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load a state dict in the released key layout; a missing, extra or mis-shaped key is a one-line error."""
        state = {k: v for k, v in state.items() if k != USAGE_KEY}
        expected = {k: tuple(v.shape) for k, v in self.state_dict().items() if k != USAGE_KEY}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        mismatched = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
        if missing or unexpected or mismatched:
            problems = []
            if missing:
                problems.append(f"{len(missing)} missing keys (first {missing[0]})")
            if unexpected:
                problems.append(f"{len(unexpected)} unexpected keys (first {unexpected[0]})")
            if mismatched:
                first = mismatched[0]
                problems.append(f"{len(mismatched)} keys with other shapes (first {first}: "
                                f"{list(state[first].shape)}, this config needs {list(expected[first])})")
            raise ValueError(f"{source} does not fit LlamaGenVQ({self._config_text()}): {'; '.join(problems)}")
        self.load_state_dict(state, strict=False)  # strict on every key but the usage statistic (checked above)

    def _config_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B,3,H,W], got shape {tuple(images.shape)}")
        if images.shape[-2] % self.downsample or images.shape[-1] % self.downsample:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not allowed; allowed: multiples of "
                             f"{self.downsample} (the downsampling factor)")
        latents = self.quant_conv(self.encoder(images))
        return self.quantize.nearest(latents)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.ndim != 3:
            raise ValueError(f"expected codes [B,h,w], got shape {tuple(codes.shape)}")
        # Codes outside the codebook (the mask id of a partial sample) are clamped, as the reference sampler does.
        codes = codes.long().clamp(0, self.codebook_size - 1)
        latents = self.quantize.lookup(codes)
        weight = self.post_quant_conv.weight
        images = self.decoder(self.post_quant_conv(latents.to(weight.dtype)))
        return images.clamp(-1, 1)
