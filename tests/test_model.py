import pytest
import torch

from halton.models import SIZES, MaskTransformer, build_transformer, from_official_checkpoint
from halton.models.official import strip_prefixes



@pytest.fixture(scope="module")
def fixture_paths(fixtures):
    return fixtures / "official_c2i_tiny.pth", fixtures / "official_c2i_tiny_expected.pt"


def test_official_checkpoint_reproduces_reference_logits(fixture_paths):
    checkpoint, expected_file = fixture_paths
    expected = torch.load(expected_file, weights_only=True)
    model = from_official_checkpoint(checkpoint, heads=expected["config"]["heads"])
    assert model.grid == (8, 8) and model.codebook_size == 32 and model.num_classes == 10 and model.registers == 1
    with torch.no_grad():
        logits = model(expected["codes"], expected["labels"], expected["drop_label"])
    assert logits.shape == (4, 64, 33)
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=0)


def test_official_checkpoint_with_prefixes(tmp_path, fixture_paths):
    checkpoint, expected_file = fixture_paths
    original = torch.load(checkpoint, weights_only=True)
    original["model_state_dict"] = {f"module._orig_mod.{k}": v for k, v in original["model_state_dict"].items()}
    torch.save(original, tmp_path / "prefixed.pth")
    expected = torch.load(expected_file, weights_only=True)
    model = from_official_checkpoint(tmp_path / "prefixed.pth", heads=4)
    with torch.no_grad():
        logits = model(expected["codes"], expected["labels"], expected["drop_label"])
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=0)


def test_state_dict_keys_match_released_format(fixtures):
    import json

    keys = json.loads((fixtures / "official_c2i_tiny_keys.json").read_text())
    model = MaskTransformer(32, 8, 64, 2, 4, 256, 10, registers=1)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == keys


def test_official_loader_errors(tmp_path, fixture_paths):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        from_official_checkpoint(tmp_path / "missing.pth", heads=4)
    with pytest.raises(ValueError, match="heads=5 does not fit"):
        from_official_checkpoint(fixture_paths[0], heads=5)


def test_strip_prefixes():
    assert list(strip_prefixes({"_orig_mod.module.a": 1, "module.b": 2, "c": 3})) == ["a", "b", "c"]


PAPER_COUNTS = {"tiny": (16, 1, 23.03e6), "small": (16, 1, 69.34e6), "base": (16, 1, 142.22e6),
                "large": (24, 1, 479.98e6), "xl": (32, 2, 703.6e6)}


@pytest.mark.parametrize("size", list(PAPER_COUNTS))
def test_parameter_counts_on_meta_device(size):
    side, patch, expected = PAPER_COUNTS[size]
    with torch.device("meta"):
        model = build_transformer(size, codebook_size=16384, input_size=side, num_classes=1000, patch_size=patch)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - expected) / expected < 0.005, (size, count)
    assert (model.hidden_dim, len(model.transformer.layers)) == SIZES[size][:2]


def test_xl_is_the_papers_config():
    with torch.device("meta"):
        model = build_transformer("xl", 16384, 32, 1000, patch_size=2)
    assert model.hidden_dim == 1152 and len(model.transformer.layers) == 28
    assert model.transformer.layers[0].attn.heads == 16 and model.grid == (32, 32)


def test_unknown_size():
    with pytest.raises(ValueError, match="unknown model size 'huge'; allowed: tiny, small, base, large, xl"):
        build_transformer("huge", 16, 4, 10)


def test_trunk_and_partial_head_equal_full_forward():
    torch.manual_seed(0)
    model = MaskTransformer(20, (4, 6), 32, 2, 4, num_classes=5, registers=2).eval()
    codes = torch.randint(0, 21, (3, 4, 6))
    labels, drop = torch.tensor([0, 4, 2]), torch.tensor([False, True, False])
    with torch.no_grad():
        full = model(codes, labels, drop)
        hidden = model.trunk(codes, labels, drop)
        positions = torch.tensor([[0, 5, 23], [1, 2, 3], [22, 7, 9]])
        partial = model.logits(hidden, positions, num_classes=20)
    assert full.shape == (3, 24, 21)
    torch.testing.assert_close(partial, full.gather(1, positions[..., None].expand(-1, -1, 21))[..., :20])


def test_patchified_model_runs_and_keeps_token_resolution():
    torch.manual_seed(0)
    model = MaskTransformer(16, 8, 32, 2, 4, num_classes=3, patch_size=2)
    codes = torch.randint(0, 17, (2, 8, 8))
    logits = model(codes, torch.tensor([0, 1]), torch.tensor([False, False]))
    assert logits.shape == (2, 64, 17)
    logits.sum().backward()
    assert model.in_proj.weight.grad is not None and model.out_proj.weight.grad is not None


def test_dropped_label_uses_null_class():
    model = MaskTransformer(8, 4, 16, 1, 2, num_classes=3)
    cond = model.condition(torch.tensor([1, 2]), torch.tensor([True, False]))
    torch.testing.assert_close(cond[0], model.cls_emb.weight[3])
    torch.testing.assert_close(cond[1], model.cls_emb.weight[2])


def test_training_logits_pad_the_classes_with_minus_infinity_and_change_no_loss():
    import torch.nn.functional as F

    from halton.models import TextMaskTransformer

    torch.manual_seed(0)
    models = [MaskTransformer(17, 8, 32, 1, 2, 64, num_classes=10),
              TextMaskTransformer(17, 8, c=32, hidden_dim=32, text_dim=16, depth=1, heads=2, mlp_dim=64)]
    for model in models:
        hidden = torch.randn(3, 64, 32)
        targets = torch.randint(0, 18, (3 * 64,))
        padded, plain = model.training_logits(hidden), model.logits(hidden)
        assert padded.shape == (3, 64, 64) and torch.equal(padded[..., :18], plain)
        assert torch.isneginf(padded[..., 18:]).all()
        losses = [F.cross_entropy(x.flatten(0, 1), targets) for x in (padded, plain)]
        assert torch.equal(losses[0], losses[1])
        grads = [torch.autograd.grad(loss, list(model.parameters()), allow_unused=True) for loss in losses]
        for a, b in zip(*grads):
            assert (a is None and b is None) or torch.allclose(a, b, atol=1e-7)


@pytest.mark.parametrize("kind", ["class", "text"])
def test_a_compiled_block_is_one_graph_without_breaks(kind):
    """What model.compile=true compiles (halton.models.compile_blocks): each block, traced by TorchDynamo on the
    inputs the model gives it, must be one graph (a graph break falls back to Python mid-block on every call)."""
    from halton.models import TextMaskTransformer

    codes, drop = torch.randint(0, 64, (2, 8, 8)), torch.tensor([False, True])
    if kind == "class":
        model = MaskTransformer(64, 8, 64, 2, 4, 128, num_classes=10, patch_size=2)
        run = lambda: model(codes, torch.arange(2), drop)  # noqa: E731
    else:
        model = TextMaskTransformer(64, 8, c=64, hidden_dim=64, text_dim=32, depth=2, heads=4, mlp_dim=128)
        run = lambda: model(codes, torch.randn(2, 6, 32), drop, torch.arange(6) < torch.tensor([[3], [6]]))  # noqa: E731
    seen = {}
    hook = model.transformer.layers[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(args=args, kwargs=kwargs), with_kwargs=True)
    run()
    hook.remove()
    explained = torch._dynamo.explain(model.transformer.layers[0])(*seen["args"], **seen["kwargs"])
    assert (explained.graph_count, explained.graph_break_count, explained.break_reasons) == (1, 0, [])
