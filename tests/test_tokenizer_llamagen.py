"""LlamaGen's VQGAN: the released key layout, loading, encode/decode on tiny random models saved in that layout."""

import json

import pytest
import torch
import torch.nn.functional as F

from halton.tokenizers import LlamaGenVQ, Tokenizer

TINY = dict(ch=32, ch_mult=(1, 2, 2), z_channels=32, codebook_size=64, codebook_dim=8)


def shapes(model):
    return {key: list(value.shape) for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def released_keys(fixtures):
    return json.loads((fixtures / "llamagen_vq_keys.json").read_text())


@pytest.mark.parametrize("name,ch_mult", [("VQ-16", (1, 1, 2, 2, 4)), ("VQ-8", (1, 2, 2, 4))])
def test_state_dict_is_the_released_layout(released_keys, name, ch_mult):
    with torch.device("meta"):
        model = LlamaGenVQ(ch_mult=ch_mult)
    assert shapes(model) == released_keys[name]
    assert model.downsample == {"VQ-16": 16, "VQ-8": 8}[name]
    assert isinstance(model, Tokenizer) and model.channels == 3 and model.codebook_size == 16384


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = LlamaGenVQ(**TINY)
    with torch.no_grad():  # GroupNorm affine and biases at random too, so every weight matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model


def save_released(model, path, **extra):
    """A file exactly as LlamaGen releases them: {"model": state dict, ...}, codebook_used included."""
    torch.save({"model": model.state_dict(), **extra}, path)
    return path


def test_from_checkpoint_round_trip(tiny, tmp_path):
    path = save_released(tiny, tmp_path / "vq_tiny.pt", optimizer=None, steps=10)
    loaded = LlamaGenVQ.from_checkpoint(path, **TINY)
    for key, value in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(loaded.encode(images), tiny.encode(images))
    codes = torch.randint(0, 64, (2, 4, 4))
    assert torch.equal(loaded.decode(codes), tiny.decode(codes))
    assert not loaded.training


def test_loading_ignores_the_usage_statistic(tiny, tmp_path):
    state = {k: v for k, v in tiny.state_dict().items() if k != "quantize.codebook_used"}
    torch.save({"model": state}, tmp_path / "no_usage.pt")
    LlamaGenVQ.from_checkpoint(tmp_path / "no_usage.pt", **TINY)
    state["quantize.codebook_used"] = torch.arange(65536.0)  # whatever it holds does not matter
    torch.save({"model": state}, tmp_path / "usage.pt")
    loaded = LlamaGenVQ.from_checkpoint(tmp_path / "usage.pt", **TINY)
    codes = torch.randint(0, 64, (1, 4, 4))
    assert torch.equal(loaded.decode(codes), tiny.decode(codes))


def test_encode_and_decode_shapes_and_ranges(tiny):
    images = torch.rand(3, 3, 32, 16) * 2 - 1
    codes = tiny.encode(images)
    assert codes.shape == (3, 8, 4) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < 64
    decoded = tiny.decode(codes)
    assert decoded.shape == (3, 3, 32, 16)
    assert decoded.min() >= -1 and decoded.max() <= 1
    unclamped = tiny.decoder(tiny.post_quant_conv(tiny.quantize.lookup(codes)))
    assert (unclamped.abs() > 1).any(), "the random decoder should overshoot somewhere, or the clamp is untested"
    torch.testing.assert_close(decoded, unclamped.clamp(-1, 1))


def test_nearest_code_uses_l2_normalised_latents_and_codebook(tiny):
    codebook = tiny.quantize.embedding.weight.detach()
    chosen = torch.tensor([[3, 17], [40, 63]])
    # latents pointing along the chosen rows, at very different lengths: only directions count
    latents = (codebook[chosen] * torch.tensor([[[0.01], [7.0]], [[300.0], [1.0]]])).permute(2, 0, 1)[None]
    assert torch.equal(tiny.quantize.nearest(latents)[0], chosen)
    # a brute-force cosine nearest neighbour agrees on random latents
    latents = torch.randn(2, 8, 5, 5)
    flat = F.normalize(latents.permute(0, 2, 3, 1).reshape(-1, 8), dim=-1)
    expected = torch.cdist(flat, F.normalize(codebook, dim=-1)).argmin(-1).view(2, 5, 5)
    assert torch.equal(tiny.quantize.nearest(latents), expected)


def test_lookup_returns_normalised_rows_and_decode_uses_them(tiny):
    codes = torch.tensor([[[0, 5], [63, 5]]])
    rows = tiny.quantize.lookup(codes)
    assert rows.shape == (1, 8, 2, 2)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(1, 2, 2))
    expected = F.normalize(tiny.quantize.embedding.weight, dim=-1)[codes].permute(0, 3, 1, 2)
    torch.testing.assert_close(rows, expected)


def test_quantising_a_code_vector_gives_the_code_back(tiny):
    """encode(decode(codes)) is no identity for a random decoder, but the quantiser is: every normalised
    codebook row is its own nearest row."""
    codes = torch.randint(0, 64, (4, 6, 6))
    assert torch.equal(tiny.quantize.nearest(tiny.quantize.lookup(codes)), codes)
    again = tiny.encode(tiny.decode(codes))
    assert again.shape == codes.shape and int(again.max()) < 64


def test_decode_clamps_the_mask_id(tiny):
    codes = torch.full((1, 2, 2), 64)  # the MaskGIT mask id = codebook_size, in partial samples
    torch.testing.assert_close(tiny.decode(codes), tiny.decode(torch.full((1, 2, 2), 63)))


def test_attention_matches_the_explicit_formula(tiny):
    block = tiny.encoder.mid[1]
    x = torch.randn(2, 64, 3, 5)
    h = block.norm(x)
    q, k, v = (m(h).flatten(2) for m in (block.q, block.k, block.v))  # [B, C, N]
    weights = torch.softmax(q.transpose(1, 2) @ k / 64 ** 0.5, dim=-1)  # [B, N(query), N(key)]
    expected = x + block.proj_out((v @ weights.transpose(1, 2)).view(2, 64, 3, 5))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_downsample_pads_right_and_bottom(tiny):
    down = tiny.encoder.conv_blocks[0].downsample
    x = torch.randn(1, 32, 6, 6)
    torch.testing.assert_close(down(x), F.conv2d(F.pad(x, (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2))
    assert down(x).shape[-2:] == (3, 3)


def test_nearest_is_float32_under_bf16_autocast(tiny):
    latents = torch.randn(2, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(tiny.quantize.nearest(latents), tiny.quantize.nearest(latents.float()))


def test_bad_files_and_inputs(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="vq_checkpoint not found: .*nope.pt"):
        LlamaGenVQ.from_checkpoint(tmp_path / "nope.pt")
    torch.save({"state_dict": tiny.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a LlamaGen VQ checkpoint: expected a dict with a 'model'"):
        LlamaGenVQ.from_checkpoint(tmp_path / "other.pt", **TINY)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="vq_checkpoint .*text.pt is not a checkpoint: neither a torch.save zip file"):
        LlamaGenVQ.from_checkpoint(tmp_path / "text.pt", **TINY)
    path = save_released(tiny, tmp_path / "vq.pt")
    with pytest.raises(ValueError, match=r"does not fit LlamaGenVQ\(ch=32, ch_mult=\[1, 2, 2, 4\].*missing keys"):
        LlamaGenVQ.from_checkpoint(path, **{**TINY, "ch_mult": (1, 2, 2, 4)})
    with pytest.raises(ValueError, match=r"keys with other shapes \(first quantize.embedding.weight: \[64, 8\], "
                                         r"this config needs \[128, 8\]\)"):
        LlamaGenVQ.from_checkpoint(path, **{**TINY, "codebook_size": 128})
    with pytest.raises(ValueError, match=r"image size \(10, 16\) is not allowed; allowed: multiples of 4"):
        tiny.encode(torch.zeros(1, 3, 10, 16))
    with pytest.raises(ValueError, match=r"expected images \[B,3,H,W\], got shape \(1, 1, 8, 8\)"):
        tiny.encode(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="ch=48 is not allowed; allowed: a positive multiple of 32"):
        LlamaGenVQ(ch=48)
