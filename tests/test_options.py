"""The option objects own their rules: each bad value raises its one line naming ``key=value`` and what is allowed,
valid values pass, and the objects import no torch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from halton.options import (
    EditOptions,
    EvaluationOptions,
    ExtractionOptions,
    Invalid,
    MaskingOptions,
    OptimizerOptions,
    PromptSetOptions,
    ReferenceOptions,
    SamplingOptions,
    TrainerOptions,
    typed_keys,
    under,
)
from halton.options.extraction import captioned, check_captions


@pytest.mark.parametrize("values,message", [
    ({"steps": 0}, "steps=0 is out of range; allowed: >= 1"),
    ({"steps": 3.5}, "steps=3.5 is not a whole number; allowed: >= 1"),
    ({"steps": 65, "num_tokens": 64}, "steps=65 is out of range; allowed: 1 to 64 (the number of tokens)"),
    ({"cfg_weight": -1}, "cfg_weight=-1 is out of range; allowed: >= 0 (0 disables guidance)"),
    ({"cfg_weight": float("inf")}, "cfg_weight=inf is not finite; allowed: >= 0 (0 disables guidance)"),
    ({"cfg_interval": [0.3, 0.1]}, "cfg_interval=[0.3, 0.1] is not an interval; allowed: null (always guided) or "
                                   "[t_min, t_max] with 0 <= t_min < t_max <= 1, e.g. [0.1, 0.3]"),
    ({"cfg_interval": ["a", "b"]}, "cfg_interval=['a', 'b'] is not an interval"),
    ({"cfg_interval": [0.1]}, "cfg_interval=[0.1] is not an interval"),
    ({"temp_min": 0}, "temp_min=0 is out of range; allowed: > 0"),
    ({"temp_max": "hot"}, "temp_max='hot' is not a number; allowed: > 0"),
    ({"temp_pow": float("nan")}, "temp_pow=nan is not finite; allowed: > 0"),
    ({"temp_warmup": 9, "steps": 8}, "temp_warmup=9 is out of range; allowed: 0 to 8"),
    ({"top_k": -1}, "top_k=-1 is out of range; allowed: >= 0 (0: off)"),
    ({"top_k": 18, "codebook_size": 17}, "top_k=18 is out of range; allowed: 0 to 17"),
    ({"schedule": "exp2"}, "schedule='exp2' is not one of the choices; allowed: arccos, cosine, linear, square, "
                           "root, poly, exp, log"),
    ({"schedule_power": 0}, "schedule_power=0 is out of range; allowed: > 0 (the poly exponent)"),
    ({"schedule_rate": -5}, "schedule_rate=-5 is out of range; allowed: > 0 (the exp and log rate)"),
    ({"seed": -1}, "seed=-1 is out of range; allowed: 0 to 4294967295"),
    ({"seed": True}, "seed=True is not a whole number; allowed: 0 to 4294967295"),
])
def test_sampling_rules(values, message):
    with pytest.raises(Invalid) as error:
        SamplingOptions(**values)
    assert str(error.value).startswith(message)


def test_valid_sampling_options_pass_and_fit_a_model():
    options = SamplingOptions(steps=12, cfg_weight=2, cfg_interval=[0, 1], temp_warmup=12, top_k=0, schedule="poly",
                              schedule_power=0.7, seed=2**32 - 1)
    assert options.cfg_interval == (0.0, 1.0)  # as floats
    assert options.fit(num_tokens=12, codebook_size=17) == options
    with pytest.raises(Invalid, match=r"^steps=12 is out of range; allowed: 1 to 8 \(the number of tokens\)$"):
        options.fit(num_tokens=8, codebook_size=17)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.steps = 0  # checked once: never changed afterwards


@pytest.mark.parametrize("kind,values,message", [
    (MaskingOptions, {"masking": "x"}, "model.masking='x' is not one of the choices; allowed: independent, exact, "
                                       "halton"),
    (MaskingOptions, {"t_min": 1}, "model.t_min=1 is out of range; allowed: >= 0 and < 1"),
    (MaskingOptions, {"mask_schedule": "root", "loss_weight": "schedule"},
     "model.loss_weight='schedule' does not work with model.mask_schedule='root' (its weight is infinite at full "
     "masking); allowed: another schedule, or model.loss_weight=none"),
    (MaskingOptions, {"loss_on": "some"}, "model.loss_on='some' is not one of the choices; allowed: masked, all"),
    (MaskingOptions, {"label_dropout": -0.1}, "model.label_dropout=-0.1 is out of range; allowed: >= 0 and <= 1"),
    (OptimizerOptions, {"lr": 0}, "model.lr=0 is out of range; allowed: > 0"),
    (OptimizerOptions, {"betas": [0.9]}, "model.betas=[0.9] is not two numbers; allowed: [beta1, beta2], each in "
                                         "[0, 1)"),
    (OptimizerOptions, {"betas": [0.9, 1]}, "model.betas.1=1 is out of range; allowed: >= 0 and < 1"),
    (OptimizerOptions, {"warmup_steps": -1}, "model.warmup_steps=-1 is out of range; allowed: >= 0"),
    (OptimizerOptions, {"total_steps": 0}, "model.total_steps=0 is out of range; allowed: >= 1"),
    (OptimizerOptions, {"min_lr_ratio": 2}, "model.min_lr_ratio=2 is out of range; allowed: >= 0 and <= 1"),
])
def test_training_rules_name_the_keys_where_they_sit(kind, values, message):
    with pytest.raises(Invalid) as error, under("model."):
        kind(**values)
    assert str(error.value) == message
    kind(**{k: v for k, v in dataclasses.asdict(kind()).items()})  # the defaults pass


def test_betas_become_plain_floats():
    assert OptimizerOptions(betas=[0, 0.5]).betas == (0.0, 0.5)


@pytest.mark.parametrize("values,message", [
    ({"box": [0, 0, 4, 4]}, "edit.box needs the image to edit; pass edit.image=PATH"),
    ({"image": "a.png"}, "edit.image needs exactly one region, got 0 (none); allowed: edit.box=[x0,y0,x1,y1], "
                         "edit.mask=PATH or edit.outpaint=[top,right,bottom,left]"),
    ({"image": "a.png", "box": [0, 0, 4, 4], "mask": "m.png"}, "edit.image needs exactly one region, got 2 (box, mask)"),
    ({"image": "a.png", "box": [0, 0, 4]}, "edit.box=[0, 0, 4] is not a box; allowed: [x0,y0,x1,y1] in pixels"),
    ({"image": "a.png", "outpaint": [0, 0, 0, 0]}, "edit.outpaint=[0, 0, 0, 0] extends nothing"),
    ({"image": "a.png", "outpaint": [0, -8, 0, 0]}, "edit.outpaint.1=-8 is out of range; allowed: >= 0"),
    ({"dilate": -1}, "edit.dilate=-1 is out of range; allowed: >= 0"),
])
def test_edit_rules(values, message):
    with pytest.raises(Invalid) as error, under("edit."):
        EditOptions(**values)
    assert str(error.value).startswith(message)
    EditOptions(image="a.png", outpaint=[0, 8, 0, 0], dilate=1, composite=True)


def test_the_schema_types_the_keys_without_typing_the_config():
    from omegaconf import OmegaConf
    from omegaconf.errors import ValidationError

    node = typed_keys(SamplingOptions)
    assert OmegaConf.get_type(node) is dict and set(node) == set(SamplingOptions.names())
    merged = OmegaConf.merge(OmegaConf.create({"other": 1}), node)
    merged.other = "anything"  # the rest of the config stays untyped
    with pytest.raises(ValidationError):
        merged.steps = 3.5


def test_the_options_import_no_torch():
    code = "import sys, halton.options, halton.validation; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.mark.parametrize("entry,argv,message", [
    ("sample", ["steps=3.5"], "steps=3.5 is not a whole number; allowed: 1 to 64 (the number of tokens)"),
    ("evaluate", ["cfg_interval=[a,b]"], "cfg_interval=['a', 'b'] is not an interval"),
    ("train", ["model.lr=abc"], "model.lr='abc' is not a number; allowed: > 0"),
    ("train", ["model=c2i_tiny", "model.warmup_steps=1.5"], "model.warmup_steps=1.5 is not a whole number; allowed: >= 0"),
])
def test_a_type_the_schema_refuses_is_answered_by_the_options_rule(entry, argv, message, tmp_path):
    """The schemas check types while the config is composed; the line is still the option object's."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    from halton.cli import preflight
    from halton.validation import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"), pytest.raises(ConfigCompositionException):
        compose(entry, overrides=argv)  # refused while composing
    with pytest.raises(Invalid) as error:
        preflight([*argv, f"paths.root_dir={tmp_path}"], entry)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("make,message", [
    (lambda: EvaluationOptions(num_images=105, num_classes=10),
     "num_images=105 is not a multiple of the 10 classes (class-balanced samples); allowed: 100, 110, ..."),
    (lambda: EvaluationOptions(num_images=0), "num_images=0 is out of range; allowed: >= 1"),
    (lambda: EvaluationOptions(batch_size=0), "batch_size=0 is out of range; allowed: >= 1"),
    (lambda: EvaluationOptions(extractor="clip"), "extractor='clip' is not one of the choices; allowed: inception"),
    (lambda: EvaluationOptions(intermediate_steps=[0], steps=32),
     "intermediate_steps=0 is out of range; allowed: 1 to 32"),
    (lambda: EvaluationOptions(intermediate_steps=4), "intermediate_steps=4 is not a list"),
    (lambda: EvaluationOptions(precision="fp16"), "precision='fp16' is not one of the choices; allowed: auto, fp32"),
    (lambda: EvaluationOptions(devices=0), "devices=0 is out of range; allowed: >= 1"),
    (lambda: ReferenceOptions(kind="magic"), "kind='magic' is not one of the choices; allowed: digits"),
    (lambda: ReferenceOptions(kind="webdataset"), "path is not set; allowed: webdataset image shards"),
    (lambda: PromptSetOptions(source="poems"), "source='poems' is not one of the choices; allowed: coco, file, digits"),
    (lambda: PromptSetOptions(phrasings="odd"), "phrasings='odd' is not one of the choices; allowed: seen, unseen"),
    (lambda: ExtractionOptions(chunk_size=0), "chunk_size=0 is out of range; allowed: >= 1"),
    (lambda: ExtractionOptions(batch_size=0), "batch_size=0 is out of range; allowed: >= 1"),
    (lambda: ExtractionOptions(num_workers=-1), "num_workers=-1 is out of range; allowed: >= 0"),
    (lambda: ExtractionOptions(image_size=0), "image_size=0 is out of range; allowed: >= 1"),
    (lambda: ExtractionOptions(flip="yes"), "flip='yes' is not a boolean"),
    (lambda: check_captions("precompute", False, "source.format=imagefolder"),
     "text.embeddings=precompute encodes captions, but source.format=imagefolder has none"),
    (lambda: check_captions("later", None, "x"), "text.embeddings='later' is not one of the choices"),
])
def test_evaluation_and_extraction_options_refuse_bad_values(make, message):
    with pytest.raises(Invalid) as error:
        make()
    assert str(error.value).startswith(message), str(error.value)


def test_evaluation_and_extraction_options_take_good_values_and_name_their_keys():
    from omegaconf import OmegaConf

    from halton.options.rules import from_config

    options = EvaluationOptions(num_images=50, num_classes=10, intermediate_steps=[4, 8], steps=8)
    assert options.num_images == 50 and options.intermediate_steps == [4, 8]
    assert EvaluationOptions(num_images=7).num_images == 7  # a text model: no classes to balance
    assert ExtractionOptions(image_size=256, flip=True).chunk_size == 1000
    cfg = OmegaConf.create({"captions": None, "kind": "folder", "path": "/x", "max_images": 0})
    with under("reference."), pytest.raises(Invalid, match=r"^reference.max_images=0 is out of range"):
        from_config(ReferenceOptions, cfg)
    assert from_config(PromptSetOptions, {"source": "digits", "seed": 3}).seed == 3
    assert check_captions("online", False, "x") == "online"
    assert check_captions("precompute", None, "x") == "precompute"  # webdataset: its files tell
    assert [captioned("imagefolder"), captioned("digits", True), captioned("digits"), captioned("webdataset")] == [
        False, True, False, None]


@pytest.mark.parametrize("values,message", [
    ({"max_steps": 0}, "trainer.max_steps=0 is out of range; allowed: >= 1"),
    ({"devices": [0, -1]}, "trainer.devices=-1 is out of range; allowed: >= 0"),
    ({"devices": 0}, "trainer.devices=0 is out of range; allowed: >= 1"),
    ({"precision": "fp8"}, "trainer.precision='fp8' is not a precision; allowed: 32-true"),
    ({"val_check_interval": 1.5}, "trainer.val_check_interval=1.5 is out of range; allowed: > 0 and <= 1"),
    ({"val_check_interval": 0}, "trainer.val_check_interval=0 is out of range; allowed: >= 1"),
    ({"accelerator": "tpu", "tpu": False}, "trainer.accelerator='tpu' is not one of the choices"),
])
def test_trainer_options_refuse_bad_values(values, message):
    with under("trainer."), pytest.raises(Invalid) as error:
        TrainerOptions(**values)
    assert str(error.value).startswith(message), str(error.value)
    for good in ({"devices": "0,1"}, {"devices": -1}, {"precision": 32}, {"val_check_interval": 0.25},
                 {"accelerator": "tpu"}):
        TrainerOptions(**good)


def test_the_callbacks_values_are_checked_by_one_function():
    from halton.options.trainer import check_callbacks

    check_callbacks({"ema": {"decay": 0.999}, "progress_bar": {"refresh_rate": 0, "train_metrics": ["train/loss"]},
                     "throughput": {"peak_tflops": None}, "model_checkpoint": None})
    with pytest.raises(Invalid, match=r"^callbacks.ema.decay=2 is out of range; allowed: >= 0 and <= 1"):
        check_callbacks({"ema": {"decay": 2}})
    with pytest.raises(Invalid, match=r"^callbacks.progress_bar.train_metrics: 'train/los' is not logged"):
        check_callbacks({"progress_bar": {"refresh_rate": 1, "train_metrics": ["train/los"]}})
    with pytest.raises(Invalid, match=r"^callbacks.model_checkpoint.every_n_train_steps=0 is out of range"):
        check_callbacks({"model_checkpoint": {"every_n_train_steps": 0}})


def test_drawing_and_serving_options():
    from halton.options.drawing import DrawOptions, ServeOptions

    assert DrawOptions(device="cuda:1", precision="bf16", per_class=3).per_class == 3
    for values, message in [({"device": "gpu7"}, "device='gpu7' is not a device; allowed: auto, cpu, cuda, cuda:N"),
                            ({"per_class": 0}, "per_class=0 is out of range; allowed: >= 1"),
                            ({"progression": "maybe"}, "progression='maybe' is not a boolean")]:
        with pytest.raises(Invalid) as error:
            DrawOptions(**values)
        assert str(error.value).startswith(message)
    assert ServeOptions(port=None).port is None
    with pytest.raises(Invalid, match=r"^port=70000 is out of range; allowed: 0 to 65535 \(0 or null: a free port\)"):
        ServeOptions(port=70000)
    with pytest.raises(Invalid, match=r"^host=' ' is not a host name"):
        ServeOptions(host=" ")


def test_extraction_split_and_text_options():
    from halton.options.extraction import TextEncodingOptions

    with pytest.raises(Invalid, match=r"^split='\.\./x' is not a folder name; allowed: train, val"):
        ExtractionOptions(split="../x")
    with under("text."), pytest.raises(Invalid, match=r"^text.encoder is not set; allowed: minilm"):
        TextEncodingOptions(embeddings="precompute", encoder=" ")
    with under("text."), pytest.raises(Invalid, match=r"^text.max_length=0 is out of range; allowed: >= 1"):
        TextEncodingOptions(embeddings="precompute", encoder="minilm", max_length=0)
    assert TextEncodingOptions(embeddings="online", encoder=None, max_length=0).embeddings == "online"
