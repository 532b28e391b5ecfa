"""CLIP score (on the tiny random CLIP of tests/fixtures/tiny_clip, made by make_tiny_clip.py), COCO captions and
the COCO reference statistics, on known inputs."""

import json

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from PIL import Image

from halton.evaluation.clip import CLIPScorer
from halton.evaluation.coco import sample_captions
from halton.evaluation.features import FeatureExtractor
from halton.evaluation.reference import reference_statistics

TINY_CLIP = FIXTURES / "tiny_clip"
PROMPTS = ["a handwritten seven", "the digit 7", "a photo of a cat", "two dogs on a bench", "zero", "nine",
           "a red bus on the street"]


@pytest.fixture(scope="module")
def scorer():
    return CLIPScorer(TINY_CLIP)


def images(n=len(PROMPTS), channels=3, seed=0):
    return torch.rand(n, channels, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def by_hand(images, prompts):
    """100 * cos(image embedding, text embedding) per image with the fixture's CLIPModel: images (32x32, CLIP's
    input size, so no resizing) to 0-255, then CLIP's normalisation; the text through its tokenizer."""
    from transformers import CLIPModel, CLIPTokenizer

    model, tokenizer = CLIPModel.from_pretrained(TINY_CLIP).eval(), CLIPTokenizer.from_pretrained(TINY_CLIP)
    rgb = images.expand(-1, 3, -1, -1)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    pixels = (((rgb + 1) * 127.5).round() / 255 - mean) / std
    text = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
    return 100 * (out.image_embeds * out.text_embeds).sum(-1)


# ------------------------------------------------------------------ CLIP score
def test_clip_score_is_the_mean_cosine_of_each_image_with_its_prompt(scorer):
    batch = images()
    expected = by_hand(batch, PROMPTS)
    assert (expected > 0).any() and (expected < 0).any() and expected.mean() > 1  # both signs, positive mean
    torch.testing.assert_close(scorer.scores(batch, PROMPTS), expected, atol=1e-4, rtol=0)
    scorer.reset()
    scorer.update(batch, PROMPTS)
    assert scorer.compute() == pytest.approx(expected.mean().item(), abs=1e-4)
    negative = expected < 0  # a mean below 0 is reported as 0 (torchmetrics' clip)
    scorer.reset()
    scorer.update(batch[negative], [p for p, n in zip(PROMPTS, negative) if n])
    assert scorer.compute() == 0.0


def test_grey_images_score_as_their_rgb_repeat(scorer):
    grey = images(channels=1, seed=1)
    scores = scorer.scores(grey, PROMPTS)
    torch.testing.assert_close(scores, scorer.scores(grey.expand(-1, 3, -1, -1), PROMPTS))
    torch.testing.assert_close(scores, by_hand(grey, PROMPTS), atol=1e-4, rtol=0)


def test_two_batches_give_the_score_of_one_batch_of_both(scorer):
    batch = images(seed=2)
    scorer.reset()
    scorer.update(batch[:3], PROMPTS[:3])
    scorer.update(batch[3:], PROMPTS[3:])
    two = scorer.compute()
    scorer.reset()
    scorer.update(batch, PROMPTS)
    assert two == pytest.approx(scorer.compute(), abs=1e-4)
    assert two == pytest.approx(max(0.0, by_hand(batch, PROMPTS).mean().item()), abs=1e-4)


def test_clip_bad_inputs_are_one_line(scorer, tmp_path):
    missing = tmp_path / "no_clip"
    with pytest.raises(ValueError, match=rf"^CLIP model folder not found: {missing}; allowed: a local folder .* "
                                         r"or a Hugging Face hub name such as openai/clip-vit-large-patch14$"):
        CLIPScorer(missing)
    with pytest.raises(ValueError, match=r"cannot load the CLIP model .*; allowed: a local folder"):
        CLIPScorer(tmp_path)  # a folder, but no CLIP in it
    with pytest.raises(ValueError, match=r"^CLIP score of 7 images with 2 prompts; allowed: one prompt"):
        scorer.update(images(), PROMPTS[:2])
    with pytest.raises(ValueError, match=r"^CLIP score images of shape \[7, 2, 32, 32\]; allowed"):
        scorer.update(images(channels=2), PROMPTS)
    scorer.reset()
    with pytest.raises(ValueError, match="no images were given"):
        scorer.compute()


def test_tiny_clip_tokenizer_has_the_prompts_words_and_falls_back_to_characters(scorer):
    tokenizer = scorer.metric.processor.tokenizer
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("A handwritten Seven, the digit 7")["input_ids"])
    assert tokens == ["<|startoftext|>", "a</w>", "handwritten</w>", "seven</w>", ",</w>", "the</w>", "digit</w>",
                      "7</w>", "<|endoftext|>"]
    assert tokenizer.convert_ids_to_tokens(tokenizer("xylophone", add_special_tokens=False)["input_ids"]) == [
        "x", "y", "l", "o", "ph", "one</w>"]


# ------------------------------------------------------------------ COCO captions
def write_coco(folder, order=slice(None)):
    """A COCO-shaped captions file: images 1..6, image 5 without captions, image 2 with three (one padded with
    whitespace and a newline), the lists in the order ``order`` takes them; and each image as an 8x8 PNG."""
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.png", "height": 8, "width": 8}
              for i in range(1, 7)]
    captions = {1: ["A cat on a bed."], 2: ["  Two dogs on a bench.\n", "A bench.", "Dogs."], 3: ["A red bus."],
                4: ["A pizza on a plate."], 6: ["A clock tower."]}
    annotations = [{"id": 100 + 10 * i + k, "image_id": i, "caption": c}
                   for i, texts in captions.items() for k, c in enumerate(texts)]
    path = folder / "captions_val2014.json"
    path.write_text(json.dumps({"info": {}, "images": images[order], "annotations": annotations[order]}))
    generator = np.random.default_rng(0)
    for image in images:
        Image.fromarray(generator.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / image["file_name"])
    return path, captions


def test_coco_captions_one_caption_per_seeded_image_whatever_the_file_order(tmp_path):
    path, captions = write_coco(tmp_path)
    chosen = sample_captions(path, 4, seed=0)
    assert len(chosen) == 4 and len(set(chosen.image_ids)) == 4 and 5 not in chosen.image_ids
    for image_id, name, caption in zip(chosen.image_ids, chosen.files, chosen.captions):
        assert name == f"COCO_val2014_{image_id:012d}.png" and caption in [c.strip() for c in captions[image_id]]
    assert chosen.pairs() == list(zip(chosen.files, chosen.captions))
    assert sample_captions(path, 4, seed=0) == chosen  # deterministic
    assert sample_captions(path, 2, seed=0).pairs() == chosen.pairs()[:2]  # the first k of N are the k images
    everything = sample_captions(path, 5, seed=0)
    assert sorted(everything.image_ids) == [1, 2, 3, 4, 6]  # every image with captions, none without
    (tmp_path / "reversed").mkdir()
    shuffled, _ = write_coco(tmp_path / "reversed", order=slice(None, None, -1))
    assert sample_captions(shuffled, 5, seed=0) == everything
    drawn = {tuple(sample_captions(path, 5, seed=s).pairs()) for s in range(8)}  # orders and captions vary by seed
    assert len(drawn) > 1
    picked = {dict(zip(c.image_ids, c.captions))[2] for c in (sample_captions(path, 5, seed=s) for s in range(16))}
    assert picked == {"Two dogs on a bench.", "A bench.", "Dogs."}  # each of image 2's captions, stripped


@pytest.mark.parametrize("content, message", [
    (None, r"^COCO captions file not found: .*missing\.json$"),
    ("{not json", r"is not JSON \(Expecting property name .*\); allowed: a COCO captions file"),
    ({"images": []}, r"is not a COCO captions file: no 'annotations' list; allowed"),
    ({"images": [{"id": 1}], "annotations": []}, r"images\[0\] has no 'file_name'"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1}]}, r"annotations\[0\] has no "
                                                                                      r"'caption'"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 9, "caption": "x"}]},
     r"has captions of image_id 9, which is not in its 'images'"),
    ({"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
      "annotations": [{"image_id": 1, "caption": "x"}]},
     r"^num_images=2 is more than the 1 images with captions in .*; allowed: 1 to 1$"),
])
def test_coco_captions_bad_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "missing.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        sample_captions(path, 2)


def test_coco_captions_num_images_must_be_positive(tmp_path):
    path, _ = write_coco(tmp_path)
    with pytest.raises(ValueError, match=r"^num_images=0 is not a positive integer"):
        sample_captions(path, 0)


# ------------------------------------------------------------------ COCO reference statistics
class PixelFeatures(FeatureExtractor):
    """The pixels themselves as features (8x8 RGB -> 192), counting its calls."""

    name, metric_prefix, calls = "test-pixels", "", 0

    def forward(self, images):
        PixelFeatures.calls += 1
        return {"features": images.flatten(1), "logits": torch.zeros(len(images), 10)}


def test_coco_reference_uses_exactly_the_chosen_images_and_is_cached(tmp_path):
    path, _ = write_coco(tmp_path)
    cache = tmp_path / "cache"

    def reference(num_images=3, seed=0, size=(8, 8)):
        return reference_statistics("coco", str(tmp_path), PixelFeatures(), size, cache, torch.device("cpu"),
                                    max_images=num_images, captions=str(path), seed=seed)

    ref = reference()
    chosen = sample_captions(path, 3, seed=0)
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / f))).permute(2, 0, 1) for f in chosen.files])
    expected = (pixels.float() / 127.5 - 1).flatten(1)  # 8x8 already: resizing and cropping leave them as they are
    torch.testing.assert_close(ref.features, expected)
    np.testing.assert_allclose(ref.stats["mu"], expected.double().mean(0).numpy(), atol=1e-6)
    assert ref.num_images == 3 and ref.extractor == "test-pixels" and ref.image_size == (8, 8)
    calls = PixelFeatures.calls
    again = reference()  # from the cache: no extraction
    assert PixelFeatures.calls == calls and again.source == ref.source
    torch.testing.assert_close(again.features, ref.features)
    others = {reference(seed=1).source, reference(num_images=4).source, reference(size=(4, 4)).source}
    assert len(others | {ref.source}) == 4 and len(list(cache.glob("reference_coco_*.npz"))) == 4
    assert reference(size=(4, 4)).features.shape == (3, 48)  # resized to the generated size


def test_coco_reference_bad_inputs_are_one_line(tmp_path):
    path, _ = write_coco(tmp_path)
    (tmp_path / "COCO_val2014_000000000003.png").unlink()

    def reference(root, captions):
        return reference_statistics("coco", root, PixelFeatures(), (8, 8), tmp_path / "cache", torch.device("cpu"),
                                    max_images=5, captions=captions)

    with pytest.raises(ValueError, match=r"^reference.kind=coco needs reference.captions=PATH .* and "
                                         r"reference.path=FOLDER"):
        reference(str(tmp_path), None)
    with pytest.raises(FileNotFoundError, match=r"^COCO image folder not found: .*nowhere$"):
        reference(str(tmp_path / "nowhere"), str(path))
    with pytest.raises(FileNotFoundError, match=r"^COCO image not found: .*COCO_val2014_000000000003.png \(1 of the "
                                                r"5 chosen images of .* are missing under"):
        reference(str(tmp_path), str(path))
