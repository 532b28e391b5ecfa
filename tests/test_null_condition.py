"""CFG with a mask token (eMIGM): the dropped / unconditional samples get the learned embedding of the mask token
instead of the null class (class models) or zero text (text models), in training and in sampling."""

import pytest
import torch

from halton.conditions import Labels, TextEmbeddings
from halton.models import MaskTransformer, TextMaskTransformer, from_official_checkpoint
from halton.sampling import HaltonScheduler, sample


def class_model(null="mask_token"):
    torch.manual_seed(0)
    return MaskTransformer(9, 4, hidden_dim=16, depth=1, heads=2, mlp_dim=32, num_classes=3,
                           null_condition=null).eval()


def text_model(null="mask_token"):
    torch.manual_seed(0)
    model = TextMaskTransformer(9, 4, c=16, hidden_dim=16, text_dim=6, depth=1, heads=2, mlp_dim=32,
                                null_condition=null)
    torch.nn.init.normal_(model.transformer.layers[0].mlp[0].weight, std=0.3)
    return model.eval()


def test_class_null_is_the_mask_token_embedding_and_learns():
    model = class_model()
    labels, drop = torch.tensor([0, 1, 2]), torch.tensor([True, False, True])
    cond = model.condition(labels, drop)
    assert torch.equal(cond[0], model.tok_emb.weight[model.mask_id]) and torch.equal(cond[2], cond[0])
    assert torch.equal(cond[1], model.cls_emb.weight[1])
    model.train()
    model(torch.full((3, 4, 4), 9), labels, drop).sum().backward()
    assert model.tok_emb.weight.grad[model.mask_id].abs().sum() > 0  # dropped samples train the mask token
    assert model.cls_emb.weight.grad[3].abs().sum() == 0               # the null class row is unused


def test_text_null_is_the_mask_token_and_ignores_the_text():
    model = text_model()
    codes = torch.randint(0, 10, (2, 4, 4))
    drop = torch.tensor([True, True])
    with torch.no_grad():
        one = model(codes, torch.randn(2, 5, 6), drop)
        other = model(codes, torch.randn(2, 3, 6), drop, torch.tensor([[1, 1, 0], [1, 0, 0]]).bool())
        reference = text_model("zeros")(codes, torch.randn(2, 5, 6), drop)
    torch.testing.assert_close(one, other, atol=1e-5, rtol=0)
    assert not torch.allclose(one, reference, atol=1e-4)  # another null than the zero text
    null = model.tok_emb.weight[model.mask_id]
    keys, _ = model.condition(torch.randn(1, 4, 6), torch.tensor([True])).keys_values[0]
    expected, _ = model.transformer.layers[0].cross_attn.keys_values(null.expand(1, 4, -1))
    torch.testing.assert_close(keys, expected)


@pytest.mark.parametrize("kind", ["class", "text"])
def test_sampling_guides_against_the_mask_token(kind, monkeypatch):
    model = class_model() if kind == "class" else text_model()
    condition = Labels(torch.tensor([0, 2])) if kind == "class" else TextEmbeddings(torch.randn(2, 5, 6))
    seen = []
    original = model.condition
    monkeypatch.setattr(model, "condition", lambda *a, **k: seen.append(a) or original(*a, **k))
    sample(model, HaltonScheduler(), condition, steps=4, cfg_weight=2.0)
    drop = seen[0][1]
    assert drop.tolist() == [False, False, True, True]  # the second half is unconditional ...
    prepared = original(*seen[0])
    if kind == "class":  # ... and gets the mask token's embedding
        assert torch.equal(prepared[2], model.tok_emb.weight[model.mask_id])


def test_released_checkpoints_keep_their_null_class(fixtures):
    model = from_official_checkpoint(fixtures / "official_c2i_tiny.pth", heads=4)
    assert model.null_condition == "null_class"
    with pytest.raises(ValueError, match="null_condition='none' is not allowed; allowed: null_class, mask_token"):
        class_model("none")
    with pytest.raises(ValueError, match="needs the token width c=8 equal to hidden_dim=16"):
        TextMaskTransformer(9, 4, c=8, hidden_dim=16, text_dim=6, depth=1, heads=2, null_condition="mask_token")
