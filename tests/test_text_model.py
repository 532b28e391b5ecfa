"""The text-to-image transformer: the reference format and logits, the paper's size, the padding mask, the null
text, the trunk/head split, and the samplers run on it through the condition interface."""

import pytest
import torch

from halton.conditions import ClassKind, Labels, TextEmbeddings, TextKind
from halton.models import PAPER_T2I, TextMaskTransformer, from_official_checkpoint
from halton.sampling import SCHEDULERS, build_scheduler, sample, tokens_per_step


def tiny(text_dim=12, patch_size=1, grid=4, codebook=9):
    torch.manual_seed(0)
    model = TextMaskTransformer(codebook, grid, c=16, hidden_dim=16, text_dim=text_dim, depth=2, heads=2,
                                mlp_dim=32, patch_size=patch_size)
    for block in model.transformer.layers:  # the reference starts with zero text projections: make text matter
        torch.nn.init.normal_(block.mlp[0].weight, std=0.3)
    return model.eval()


def test_reproduces_the_reference_logits(fixtures):
    model = from_official_checkpoint(fixtures / "official_t2i_tiny.pth", heads=4)
    expected = torch.load(fixtures / "official_t2i_tiny_expected.pt", weights_only=True)
    assert isinstance(model, TextMaskTransformer)
    config = expected["config"]
    assert (model.grid, model.codebook_size, model.text_dim, len(model.transformer.layers)) == (
        (config["input_size"],) * 2, config["codebook_size"], config["cond_dim"], config["depth"])
    with torch.no_grad():
        logits = model(expected["codes"], expected["text"], expected["drop_label"])
    assert logits.shape == expected["logits"].shape == (4, 64, 33)
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=0)
    # every key of the reference format, with its shape
    import json
    keys = json.loads((fixtures / "official_t2i_tiny_keys.json").read_text())
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == keys


def test_heads_must_divide_the_width(fixtures):
    with pytest.raises(ValueError, match="heads=5 does not fit"):
        from_official_checkpoint(fixtures / "official_t2i_tiny.pth", heads=5)


def test_paper_configuration_counts_479_76m_parameters():
    with torch.device("meta"):
        model = TextMaskTransformer(**PAPER_T2I)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 479_761_409) <= 0.001 * 479_761_409
    assert count == 479_761_409


def test_padding_changes_no_logit_with_the_mask():
    model = tiny()
    codes = torch.randint(0, 10, (3, 4, 4))
    text = torch.randn(3, 7, 12)
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] + [0] * 6], dtype=torch.bool)
    other = torch.where(mask[..., None], text, torch.randn(3, 7, 12) * 5)  # only the padding differs
    with torch.no_grad():
        masked = model(codes, text, None, mask)
        torch.testing.assert_close(model(codes, other, None, mask), masked, atol=1e-6, rtol=0)
        unmasked = model(codes, other)  # without the mask (the reference) padding counts
    assert not torch.allclose(unmasked[1:], masked[1:], atol=1e-4)
    torch.testing.assert_close(unmasked[0], masked[0], atol=1e-5, rtol=1e-5)  # row 0 has no padding


def test_null_text_is_zero_embeddings_and_ignores_the_text():
    model = tiny()
    codes = torch.randint(0, 10, (2, 4, 4))
    text, mask = torch.randn(2, 5, 12), torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    drop = torch.tensor([True, False])
    with torch.no_grad():
        dropped = model(codes, text, drop, mask)
        zeros = model(codes, torch.zeros_like(text))
        other = model(codes, torch.randn(2, 5, 12), drop, mask)
        kept = model(codes, text, None, mask)
    torch.testing.assert_close(dropped[0], zeros[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(other[0], dropped[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(dropped[1], kept[1], atol=1e-6, rtol=0)
    assert not torch.allclose(dropped[0], kept[0], atol=1e-4)


@pytest.mark.parametrize("patch_size", [1, 2])
def test_trunk_and_head_split(patch_size):
    model = tiny(patch_size=patch_size)
    codes = torch.randint(0, 10, (2, 4, 4))
    text = torch.randn(2, 6, 12)
    with torch.no_grad():
        full = model(codes, text)
        hidden = model.trunk(codes, text)
        positions = torch.tensor([[3, 0], [15, 7]])
        part = model.logits(hidden, positions, num_classes=9)
    assert full.shape == (2, 16, 10)
    torch.testing.assert_close(part, full.gather(1, positions[..., None].expand(-1, -1, 10))[..., :9])


def test_text_width_is_checked():
    model = tiny()
    with pytest.raises(ValueError, match="8 wide but the model's text width is 12"):
        TextEmbeddings(torch.zeros(1, 3, 8)).check(model)
    with pytest.raises(ValueError, match="is class-conditional"):
        TextEmbeddings(torch.zeros(1, 3, 12)).check(torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="not class-conditional"):
        Labels(torch.tensor([0])).check(model)
    with pytest.raises(ValueError, match="prompts are for text-to-image models"):
        ClassKind().requested(object(), None, ["a fox"])
    with pytest.raises(ValueError, match="classes are for class-conditional models"):
        TextKind(encoder="unused").requested(model, [1], [])


def test_condition_index_and_concat():
    text = TextEmbeddings(torch.arange(24.0).view(4, 2, 3), torch.tensor([[1, 0], [1, 1], [1, 0], [1, 1]]).bool())
    rows = text.index(torch.tensor([2, 2, 0]))
    assert torch.equal(rows.embeddings[:, 0, 0], torch.tensor([12.0, 12.0, 0.0]))
    both = rows.concat(rows)
    assert len(both) == 6 and torch.equal(both.mask[3:], rows.mask)


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("steps", [1, 5, 16])
def test_samplers_on_the_text_model(name, steps):
    model = tiny()
    text = TextEmbeddings(torch.randn(3, 5, 12), torch.tensor([[1, 1, 0, 0, 0]] * 3, dtype=torch.bool))
    result = sample(model, build_scheduler(name), text, steps=steps, cfg_weight=2.0, seed=4, return_history=True)
    unmasked = torch.stack(result.unmasked_per_step)
    assert torch.equal(unmasked.sum(0), torch.ones(3, 4, 4, dtype=torch.long))  # each token unmasked once
    assert unmasked.flatten(2).sum(-1)[:, 0].tolist() == tokens_per_step(16, steps).tolist()
    assert (result.codes != model.mask_id).all() and result.codes.max() < model.codebook_size
    for before, after in zip(result.codes_per_step, result.codes_per_step[1:]):
        decoded = before != model.mask_id
        assert torch.equal(after[decoded], before[decoded])  # decoded tokens never change
    again = sample(model, build_scheduler(name), text, steps=steps, cfg_weight=2.0, seed=4).codes
    other = sample(model, build_scheduler(name), text, steps=steps, cfg_weight=2.0, seed=5).codes
    assert torch.equal(again, result.codes) and not torch.equal(other, result.codes)


def test_the_text_side_is_computed_once_per_run(monkeypatch):
    model = tiny()
    calls = []
    original = model.condition
    monkeypatch.setattr(model, "condition", lambda *a, **k: calls.append(a[0].shape[0]) or original(*a, **k))
    sample(model, build_scheduler("halton"), TextEmbeddings(torch.randn(2, 5, 12)), steps=6, cfg_weight=1.0)
    assert calls == [4]  # once, for the conditional and null halves together
    calls.clear()
    sample(model, build_scheduler("confidence"), TextEmbeddings(torch.randn(2, 5, 12)), steps=6, cfg_weight=1.0)
    assert calls == [2, 4]  # the ramp starts at weight 0 (one pass), then both halves


def test_cfg_uses_the_null_text():
    """With CFG, the second half of the batched pass is the model on zero embeddings."""
    model = tiny()
    text = TextEmbeddings(torch.randn(2, 5, 12))
    seen = []
    original = model.trunk_conditioned
    model.trunk_conditioned = lambda codes, context: seen.append((codes, context)) or original(codes, context)
    sample(model, build_scheduler("halton"), text, steps=2, cfg_weight=3.0)
    codes, context = seen[0]
    expected = model.condition(torch.cat([text.embeddings, torch.zeros_like(text.embeddings)]))
    for (k, v), (k0, v0) in zip(context.keys_values, expected.keys_values):
        torch.testing.assert_close(k, k0)
        torch.testing.assert_close(v, v0)
