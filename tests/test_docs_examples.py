"""Every ```python example of README.md and docs/*.md runs as a user pastes it (issue 24, point 1), offline, in a
working folder holding what the text says the user has: the digits demo's run folder ``runs/digits`` (the tiny run)
with its export ``runs/digits/hf``, a released-format text checkpoint ``t2i.pth``, the page of ``python -m halton.app
experiment=digits`` serving, and a Hugging Face cache (``HF_HUB_OFFLINE=1``) holding, under the repository names the
examples use, tiny models in the formats those repositories hold. A new example is picked up by itself; what it
claims (files written, shapes, counts) is checked by the table of expectations below."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, ROOT, TINY_NET
from PIL import Image
from test_hub import hub_cache
from test_text_data import save_tiny_t5

from halton.models import MaskTransformer

pytestmark = pytest.mark.xdist_group("docs_examples")  # one worker prepares the folder once
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLE = re.compile(r"^```python\n(.*?)^```$", flags=re.S | re.M)
APP_URL = "http://127.0.0.1:7860/"  # where the examples say `python -m halton.app` serves; the test's page is elsewhere


def examples() -> list:
    return [pytest.param(path, index, code, id=f"{path.relative_to(ROOT)}#{index}")
            for path in DOCUMENTS for index, code in enumerate(EXAMPLE.findall(path.read_text()))]


# ------------------------------------------------------------------------------------------ what the examples claim
def image_file(path: Path, size: tuple[int, int]) -> Image.Image:
    assert path.is_file(), f"{path.name} was not written"
    with Image.open(path) as image:
        assert image.size == size, image.size
        image.load()
        return image


def pipeline_quick_start(ns: dict, folder: Path) -> None:
    out = ns["out"]
    assert out.codes.shape == (2, 8, 8) and out.nfe_per_image == 32 and len(out.images) == 2  # 16 steps, CFG on
    assert image_file(folder / "three.png", (8, 8)).mode == "L"  # the digits' 8x8 grey images


def released_sampler_calls(ns: dict, folder: Path) -> None:
    assert ns["model"].num_classes == 1000 and ns["model"].grid == (16, 16)
    assert ns["codes"].shape == (3, 16, 16)
    assert ns["halton_order"](4, 4).tolist() == [9, 6, 12, 1, 11, 4, 14, 3, 8, 5, 0, 7, 13, 2, 15, 10]
    counts = ns["tokens_per_step"](256, 32).tolist()
    assert len(counts) == 32 and sum(counts) == 256 and counts[:3] == [5, 5, 5] and counts[-3:] == [14, 17, 41]


def scripted_app(ns: dict, folder: Path) -> None:
    from test_app import grid_shape

    height, width, _ = grid_shape(["3", "7"], 4)  # "a PNG file of 2 rows x 4 samples"
    with Image.open(ns["grid"]) as grid:
        assert grid.format == "PNG" and grid.size == (width, height)
    assert ns["summary"].startswith("2 x 4 samples, halton, 16 steps, ")


def hub_pipeline(ns: dict, folder: Path) -> None:
    assert image_file(folder / "three_from_hub.png", (8, 8)).mode == "L"


def model_classes(ns: dict, folder: Path) -> None:
    assert sorted(p.name for p in (folder / "DIR").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    exported = MaskTransformer.from_pretrained(folder / "runs" / "digits" / "hf").state_dict()
    saved = MaskTransformer.from_pretrained(folder / "DIR").state_dict()  # the hub's copy of the export, saved
    assert saved.keys() == exported.keys() and all(torch.equal(saved[k], exported[k]) for k in saved)


def text_sampler_calls(ns: dict, folder: Path) -> None:
    codes, model = ns["codes"], ns["model"]
    assert codes.shape == (4, 8, 8) and 0 <= int(codes.min()) and int(codes.max()) < model.codebook_size  # none masked
    assert ns["text"].encoder.width == ns["model"].text_dim


# (a line of the example that says which it is, what to check after it ran); every line names at least one example
EXPECTATIONS = [
    ('pipe = Pipeline.from_pretrained("runs/digits")', pipeline_quick_start),
    ('from_official_checkpoint("hf://llvictorll/Halton-MaskGIT/ImageNet_256_tiny.pth", heads=6)',
     released_sampler_calls),
    ('client = Client("http://127.0.0.1:7860/")', scripted_app),
    ('pipe = Pipeline.from_pretrained("hf://you/digits-maskgit")', hub_pipeline),
    ('model.save_pretrained("DIR")', model_classes),
    ('text = TextKind(encoder="google/flan-t5-xl", max_length=120)', text_sampler_calls),
]


# ------------------------------------------------------------------------------------------ the user's working folder
def released_c2i(path: Path) -> Path:
    """A released class-to-image checkpoint as ImageNet_256_tiny.pth is laid out (the fixture's file with its
    model_state_dict replaced): 1000 classes on 16x16 tokens, heads=6 (hidden 48, depth 1, random weights)."""
    checkpoint = torch.load(FIXTURES / "official_c2i_tiny.pth", map_location="cpu", weights_only=False)
    torch.manual_seed(0)
    model = MaskTransformer(32, 16, 48, 1, 6, mlp_dim=96, num_classes=1000, registers=1)
    checkpoint["model_state_dict"] = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def desk(tiny_run, tmp_path_factory):
    """The folder the examples run in (the current directory), with the hub cache offline."""
    from huggingface_hub import constants

    from halton import Pipeline

    folder = tmp_path_factory.mktemp("desk")
    shutil.copytree(tiny_run / "tiny", folder / "runs" / "digits")  # the demo's run: python train.py experiment=digits
    export = Pipeline.from_pretrained(folder / "runs" / "digits").save_pretrained(folder / "runs" / "digits" / "hf")
    shutil.copy(FIXTURES / "official_t2i_tiny.pth", folder / "t2i.pth")  # the reference code's text format, text 48
    cache, made = folder / ".cache" / "hub", tmp_path_factory.mktemp("made")
    hub_cache(cache, "llvictorll/Halton-MaskGIT", {"ImageNet_256_tiny.pth": released_c2i(made / "tiny.pth")})
    hub_cache(cache, "you/digits-maskgit", {p.name: p for p in export.iterdir()})  # hf upload you/... runs/digits/hf
    t5 = save_tiny_t5(made / "t5", d_model=48)
    hub_cache(cache, "google/flan-t5-xl", {p.name: p for p in t5.iterdir()})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only adds waiting on a shared machine (26 s against 0.5 s)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_HUB_CACHE", str(cache))
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")  # gradio_client to the loopback, never through a proxy
        patch.setattr(constants, "HF_HUB_CACHE", str(cache))
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        patch.chdir(folder)
        yield folder
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def app_url(desk):
    """The page of ``python -m halton.app experiment=digits`` on the tiny run, served in this process."""
    pytest.importorskip("gradio", reason="the app extra is not installed: pip install -e '.[app]'")
    from test_configs import compose_job

    from halton.app import Studio, build_page, free_port, launch, page_defaults, upload_folder
    from halton.options.drawing import ServeOptions

    cfg = compose_job("app", ["experiment=digits", *TINY_NET, f"paths.runs_dir={desk / 'runs'}"])
    with upload_folder():
        studio = Studio.from_config(cfg)
        page = build_page(studio, page_defaults(cfg, studio), str(cfg.name))
        launch(page, ServeOptions(), free_port("127.0.0.1"), prevent_thread_lock=True)
        try:
            yield page.local_url
        finally:
            page.close(verbose=False)


@pytest.mark.parametrize("path, index, code", examples())
def test_the_example_runs_and_does_what_it_says(path, index, code, desk, request):
    if APP_URL in code:  # it scripts the page `python -m halton.app experiment=digits` serves
        code = code.replace(APP_URL, request.getfixturevalue("app_url"))
    namespace = {"__name__": "__main__"}
    exec(compile(code, f"{path.relative_to(ROOT)} (example {index})", "exec"), namespace)
    for line, check in EXPECTATIONS:
        if line in code:
            check(namespace, desk)


def test_every_expectation_names_an_example():
    """A changed example whose expectation no longer applies is found, not silently unchecked."""
    codes = [param.values[2] for param in examples()]
    assert [line for line, _ in EXPECTATIONS if not any(line in code for code in codes)] == []
