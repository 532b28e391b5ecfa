"""FD-DINOv2 beside FID (issue 24, point 6): extractor=dinov2 is transformers' Dinov2Model loaded from a local folder
(here a tiny random one, saved with save_pretrained), fed images prepared as dgm-eval prepares them; several
extractors score the same samples of one evaluation, each against its own reference, in one results row."""

import math

import numpy as np
import pytest
import torch
from conftest import TINY_NET, digits_cache, run_in_process
from PIL import Image

from halton.evaluation import ReferenceStats, ResultsFile, generative_metrics
from halton.evaluation.features import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DinoV2Features,
    FeatureExtractor,
    build_extractors,
    dinov2_pixels,
    extractor_class,
)
from halton.evaluation.metrics import feature_statistics
from halton.evaluation.reference import extract_features
from halton.options.choices import EXTRACTORS

HIDDEN = 32


def save_tiny_dinov2(folder, image_size: int, seed: int = 0):
    """A random 2-layer DINOv2 of width 32, 14-pixel patches, in the Hugging Face format."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=image_size, patch_size=14)
    torch.manual_seed(seed)
    Dinov2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    """Trained at 98 px (7 x 7 patches, as the real one has 37 x 37): its positions are interpolated to 224 px."""
    return save_tiny_dinov2(tmp_path_factory.mktemp("dinov2"), image_size=98)


@pytest.fixture(scope="module")
def extractor(tiny_dinov2):
    return DinoV2Features(str(tiny_dinov2))


def images(n: int, seed: int = 0, channels: int = 3, side: int = 16) -> torch.Tensor:
    return torch.rand(n, channels, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------ the network and its input
def test_features_are_the_class_token_of_the_final_norm_and_deterministic(extractor, tiny_dinov2):
    batch = images(3)
    out = extractor(batch)
    assert set(out) == {"features"} and out["features"].shape == (3, HIDDEN)  # no logits: not a classifier
    assert out["features"].dtype == torch.float32 and out["features"].isfinite().all()
    torch.testing.assert_close(extractor(batch)["features"], out["features"], rtol=0, atol=0)
    hidden = extractor.net(pixel_values=dinov2_pixels(batch)).last_hidden_state  # after the final layer norm
    torch.testing.assert_close(out["features"], hidden[:, 0])
    again = DinoV2Features(str(tiny_dinov2))  # loaded again: the same numbers, the same name
    torch.testing.assert_close(again(batch)["features"], out["features"], rtol=0, atol=0)
    assert again.name == extractor.name and extractor.name.startswith("dinov2-32x2-p14-224px-")
    grey = images(2, channels=1, side=8)  # the digits: one channel, repeated to RGB
    torch.testing.assert_close(extractor(grey)["features"], extractor(grey.expand(-1, 3, -1, -1))["features"])


def test_other_weights_have_another_name_so_another_reference(tmp_path, extractor):
    other = DinoV2Features(str(save_tiny_dinov2(tmp_path / "other", image_size=98, seed=1)))
    assert other.name != extractor.name and not torch.allclose(other(images(2))["features"],
                                                               extractor(images(2))["features"])


def test_positions_are_interpolated_as_the_torch_hub_model_does(tiny_dinov2, extractor):
    """facebookresearch/dinov2 scales its position grid by (16 + 0.1) / 7 (bicubic, no antialias) for 224 px."""
    from transformers import Dinov2Model

    saved = Dinov2Model.from_pretrained(tiny_dinov2).embeddings.position_embeddings.detach()
    grid = saved[:, 1:].reshape(1, 7, 7, HIDDEN).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, scale_factor=(16.1 / 7, 16.1 / 7), mode="bicubic")
    table = extractor.net.embeddings.position_embeddings
    assert table.shape == (1, 1 + 16 * 16, HIDDEN)
    torch.testing.assert_close(table[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 256, HIDDEN))
    torch.testing.assert_close(table[:, :1], saved[:, :1])
    by_size = torch.nn.functional.interpolate(grid, size=(16, 16), mode="bicubic")  # transformers' own way
    assert (by_size.permute(0, 2, 3, 1).reshape(1, 256, HIDDEN) - table[:, 1:]).abs().max() > 1e-3


def test_pixels_are_dgm_evals_uint8_bicubic_224_and_imagenet_normalised():
    level = 200  # a uniform image of 8-bit level 200 stays 200 once resized: (200 / 255 - mean) / std
    flat = torch.full((1, 1, 8, 8), level / 127.5 - 1)
    pixels = dinov2_pixels(flat)
    assert pixels.shape == (1, 3, 224, 224)
    for channel, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):
        torch.testing.assert_close(pixels[0, channel], torch.full((224, 224), (level / 255 - mean) / std))
    # a random image: PIL's bicubic resize of its 8-bit RGB (torchvision's Resize of a PIL image, as dgm-eval does)
    for side in (16, 256):  # upsampled and downsampled
        batch = images(2, seed=side, side=side)
        levels = dinov2_pixels(batch) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(
            IMAGENET_MEAN).view(1, 3, 1, 1)
        levels = (levels * 255).round()
        for image, got in zip(batch, levels):
            rgb = ((image + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
            pil = np.array(Image.fromarray(rgb, "RGB").resize((224, 224), Image.BICUBIC))
            difference = (got.permute(1, 2, 0) - torch.from_numpy(pil).float()).abs()
            assert difference.max() <= 2 and (difference == 0).float().mean() > 0.95, (side, difference.max())


# ------------------------------------------------------------------ the metrics in DINOv2's feature space
def test_fd_of_a_set_against_itself_is_zero_and_against_a_shifted_set_is_positive(extractor):
    real = images(36, seed=1)  # more images than the 32 features
    extracted = extract_features(extractor, real.split(18), torch.device("cpu"), "test")
    assert set(extracted) == {"features"}
    reference = ReferenceStats(feature_statistics(extracted["features"]), extracted["features"], extractor.name,
                               (16, 16), 36, "test")
    spec = EXTRACTORS["dinov2"]
    same = generative_metrics(extracted["features"], None, reference, spec.prefix, spec.distance)
    assert set(same) == {"dinov2_fd", "dinov2_precision", "dinov2_recall"} == set(spec.metrics)
    assert abs(same["dinov2_fd"]) < 1e-3 and same["dinov2_precision"] == same["dinov2_recall"] == 1.0
    brighter = generative_metrics(extractor((real + 0.8).clamp(-1, 1))["features"], None, reference, spec.prefix,
                                  spec.distance)
    assert brighter["dinov2_fd"] > 1.0 and brighter["dinov2_fd"] > 1000 * abs(same["dinov2_fd"])


def test_a_reference_of_another_feature_space_is_refused():
    reference = ReferenceStats({"mu": np.zeros(2048), "sigma": np.eye(2048)}, None, None, None, 0, "adm.npz")
    with pytest.raises(ValueError) as error:
        reference.check_features(HIDDEN, "dinov2")
    assert str(error.value) == ("reference statistics adm.npz are of 2048-dimensional features; extractor=dinov2 "
                                "makes 32-dimensional ones")


# ------------------------------------------------------------------ one registry of extractor names
def test_every_extractor_name_builds_its_class_from_the_config(tiny_dinov2, digits_features, tmp_path):
    from omegaconf import OmegaConf

    assert {name: extractor_class(name).__name__ for name in EXTRACTORS} == {
        "inception": "InceptionFeatures", "digits": "DigitsFeatures", "dinov2": "DinoV2Features"}
    assert all(issubclass(extractor_class(name), FeatureExtractor) for name in EXTRACTORS)
    cfg = OmegaConf.create({"dinov2_weights": str(tiny_dinov2), "paths": {"data_dir": str(tmp_path)}})
    digits_cache(digits_features, tmp_path)  # the trained classifier, as evaluate.py finds it
    built = build_extractors(["dinov2", "digits"], cfg)
    assert list(built) == ["dinov2", "digits"] and isinstance(built["dinov2"], DinoV2Features)
    assert built["digits"](torch.zeros(2, 1, 8, 8))["logits"].shape == (2, 10)


def test_missing_weights_folder_is_one_line(tmp_path):
    with pytest.raises(ValueError) as error:
        DinoV2Features(str(tmp_path / "no" / "dinov2"))
    assert str(error.value).startswith(f"DINOv2 weights folder not found: {tmp_path / 'no' / 'dinov2'}; allowed: a "
                                       "local folder in the Hugging Face format (huggingface-cli download "
                                       "facebook/dinov2-large --local-dir DIR")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"^cannot load the DINOv2 weights .*empty"):
        DinoV2Features(str(tmp_path / "empty"))


@pytest.mark.parametrize("args, message", [
    (["extractor=[inception,clip]"], "extractor='clip' is not one of the choices; allowed: inception, digits, dinov2"),
    (["extractor=[digits,digits]"], "extractor=[digits,digits] names digits twice; allowed: each extractor once"),
    (["extractor=[]"], "extractor=[] names no feature extractor; allowed: inception, digits, dinov2, or a list"),
    (["extractor=[digits,dinov2]", "reference.kind=file", "reference.path=stats.npz"],
     ("reference.kind=file is one extractor's precomputed statistics, and extractor=[digits,dinov2] needs 2; "
      "allowed: one extractor with kind=file, or kind=digits|folder|webdataset|coco (statistics computed and cached "
      "per extractor)")),
    (["extractor=dinov2", "dinov2_weights=/no/such/dinov2"], "dinov2_weights=/no/such/dinov2: no such folder"),
    (["extractor=[digits,dinov2]", "num_images=1000000000000"],  # (8 + (74 + 384) * 4) bytes per image kept
     "num_images=1000000000000 needs at least 1.63 PiB at once (the conditions and digits, dinov2 features of every "
     "image, kept for the metrics)"),
])
def test_bad_extractor_values_are_refused_in_one_line(tiny_checkpoint, tmp_path, args, message):
    from halton.cli import preflight
    from halton.options import Invalid

    with pytest.raises(Invalid) as error:  # the checks before the task starts (halton.cli.preflight)
        preflight(["experiment=digits", f"checkpoint={tiny_checkpoint}", *TINY_NET, f"paths.runs_dir={tmp_path}",
                   f"paths.data_dir={tmp_path / 'data'}", *args], "evaluate")
    assert "\n" not in str(error.value) and str(error.value).startswith(message), str(error.value)


# ------------------------------------------------------------------ one evaluation, two feature spaces
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """experiment=digits with TINY_NET, random weights, in train.py's checkpoint format."""
    from halton.models import MaskTransformer

    torch.manual_seed(0)
    net = MaskTransformer(17, (8, 8), 32, 1, 2, mlp_dim=384, num_classes=10, registers=1)
    path = tmp_path_factory.mktemp("dinov2_eval") / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def test_one_evaluation_writes_fid_and_fd_dinov2_of_the_same_samples_in_one_row(tiny_checkpoint, tiny_dinov2,
                                                                                 digits_features, tmp_path):
    digits_cache(digits_features, tmp_path / "data")
    results = tmp_path / "results.csv"
    result = run_in_process("evaluate.py", "experiment=digits", f"checkpoint={tiny_checkpoint}", *TINY_NET,
                            f"paths.runs_dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}", "num_images=10",
                            "batch_size=10", "steps=2", "intermediate_steps=[1]", "diagnostics=false",
                            "grid_per_class=0", "extractor=[digits,dinov2]", f"dinov2_weights={tiny_dinov2}",
                            "reference.max_images=40", f"results={results}", "accelerator=cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["eval_step"]: row for row in ResultsFile(results).rows()}
    assert sorted(rows) == ["1", "2"]
    for row in rows.values():
        assert row["extractor"] == "digits+dinov2"
        assert float(row["digits_fid"]) > 0 and float(row["digits_is"]) >= 1 and float(row["dinov2_fd"]) > 0
        assert all(0 <= float(row[m]) <= 1 for m in ("digits_precision", "digits_recall", "dinov2_precision",
                                                      "dinov2_recall"))
        assert "dinov2_is" not in row and "fid" not in row  # no IS without a classifier; no Inception numbers
    assert rows["1"]["dinov2_fd"] != rows["2"]["dinov2_fd"]  # the partial images score otherwise
    caches = sorted(p.name.split("_")[1] for p in (tmp_path / "data" / "cache").glob("reference_*.npz"))
    assert caches == ["digits", "digits"]  # kind=digits, once per extractor (the fingerprint names the extractor)
    assert "dinov2_fd" in result.stdout + result.stderr
    again = run_in_process("evaluate.py", "experiment=digits", f"checkpoint={tiny_checkpoint}", *TINY_NET,
                           f"paths.runs_dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}", "num_images=10",
                           "batch_size=10", "steps=2", "intermediate_steps=[1]", "extractor=[digits,dinov2]",
                           f"dinov2_weights={tiny_dinov2}", "reference.max_images=40", f"results={results}")
    assert again.returncode == 0 and "already in" in again.stdout + again.stderr


# ------------------------------------------------------------------ the report
def row(seed: int, steps: int, fd: float | None) -> dict:
    base = {"experiment": "e", "checkpoint": "c.ckpt", "scheduler": "halton", "scheduler_options": "", "steps": steps,
            "cfg_weight": 1.0, "seed": seed, "num_images": 100, "extractor": "inception+dinov2", "eval_step": steps,
            "fid": 10.0 / steps + seed, "is": 5.0, "precision": 0.5, "recall": 0.25, "seconds": 2.0,
            "images_per_s": 50.0}
    if fd is not None:
        base.update(dinov2_fd=fd + seed, dinov2_precision=0.75, dinov2_recall=0.125)
    return base


def test_the_report_shows_fd_dinov2_beside_fid(tmp_path):
    from halton.evaluation.report import main as report

    results = tmp_path / "results.csv"
    ResultsFile(results).write([row(0, 4, 300.0), row(1, 4, 300.0), row(0, 8, 200.0)])
    report([str(results), "--out", str(tmp_path)])
    text = (tmp_path / "report.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| scheduler | steps"))
    assert header.split(" | ")[5:12] == ["fid", "is", "precision", "recall", "dinov2_fd", "dinov2_precision",
                                         "dinov2_recall"]
    assert "| halton | 4 | 1 | 2 | 100 | 3.000 ± 0.707 | 5.000 ± 0.000 |" in text
    assert "| 300.500 ± 0.707 | 0.750 ± 0.000 | 0.125 ± 0.000 |" in text
    for metric in ("fid", "dinov2_fd"):
        assert f"({metric}_vs_steps.png)" in text and (tmp_path / f"{metric}_vs_steps.png").is_file()
    report([str(results), "--out", str(tmp_path / "one"), "--metric", "dinov2_fd"])
    assert not (tmp_path / "one" / "fid_vs_steps.png").exists()


def test_results_of_dinov2_alone_are_read_and_reported(tmp_path):
    from halton.evaluation.report import main as report

    results = tmp_path / "results.csv"
    alone = {k: v for k, v in row(0, 4, 300.0).items() if k not in ("fid", "is", "precision", "recall")}
    ResultsFile(results).write([{**alone, "extractor": "dinov2"}])
    report([str(results), "--out", str(tmp_path)])
    assert (tmp_path / "dinov2_fd_vs_steps.png").is_file() and math.isclose(
        float(ResultsFile(results).rows()[0]["dinov2_fd"]), 300.0)
    lines = results.read_text().splitlines()
    header = lines[0].split(",")
    values = lines[1].split(",")
    values[header.index("dinov2_recall")] = ""
    results.write_text("\n".join([lines[0], ",".join(values)]) + "\n")
    with pytest.raises(ValueError, match="line 2: metrics missing \\(dinov2_recall\\)"):
        ResultsFile(results).rows()
