"""The web app (python -m halton.app): the functions behind the page on a tiny random-weights digits model, the
entry point's one-line errors, and the page itself served by the entry point and driven in Debian's headless
Chromium through Selenium (skipped without chromium and chromedriver, unless HALTON_REQUIRE_BROWSER=1)."""

from __future__ import annotations

import importlib.util
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from conftest import ROOT, TINY_NET, run, run_in_process
from test_configs import compose_job
from test_text_model import tiny as tiny_text_model

from halton import Pipeline
from halton.app import (
    COMPARED_WIDTH,
    Drawn,
    Studio,
    fit,
    painted_mask,
    parse_box,
    parse_classes,
    parse_prompts,
    parse_top_k,
)
from halton.build import condition_kind
from halton.cli import choices
from halton.conditions import ClassKind, TextEmbeddings, TextKind
from halton.models import MaskTransformer
from halton.sampling.editing import box_mask
from halton.tokenizers import PixelTokenizer
from halton.utils.images import MASK_COLOUR, MIN_CELL, wrap_labels

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.xdist_group("app")  # one pytest-xdist worker: the served app starts once


def tiny_net() -> MaskTransformer:
    """experiment=digits with conftest's TINY_NET: 8x8 tokens, 17 codes, 10 classes, 1 layer of 32."""
    torch.manual_seed(0)
    return MaskTransformer(17, (8, 8), 32, 1, 2, mlp_dim=384, num_classes=10, registers=1).eval()


def studio_for(net, kind=None) -> Studio:
    """What the app's start-up makes of experiment=digits (on the CPU, without Hydra)."""
    return Studio(Pipeline(net, PixelTokenizer(net.codebook_size), kind or ClassKind(), "halton", device="cpu"))


@pytest.fixture(scope="module")
def studio() -> Studio:
    return studio_for(tiny_net())


def grid_shape(labels: list[str], columns: int) -> tuple[int, int, int]:
    """class_grid's picture of 8x8 images: a row per label."""
    pad, left = 2, wrap_labels(labels, MIN_CELL)[1]
    return pad + len(labels) * (MIN_CELL + pad), left + pad + columns * (MIN_CELL + pad), 3


def settings(studio, conditions=("3", "5"), scheduler="halton", steps=4, cfg_weight=1.0, temp_min=1.0, temp_max=1.0,
             top_k="", seed=0, per_condition=3):
    return studio.settings(list(conditions), scheduler, steps, cfg_weight, temp_min, temp_max, top_k, seed,
                           per_condition)


# ---- the functions behind the page -------------------------------------------------------------------------------


def test_the_page_values_are_parsed():
    assert parse_classes(["3", "5"], 10) == [3, 5] and parse_classes("1, 7 9;0", 10) == [1, 7, 9, 0]
    assert parse_prompts("the digit 3\n\n  a handwritten seven \n") == ["the digit 3", "a handwritten seven"]
    assert parse_top_k("", 17) is None and parse_top_k(" 5 ", 17) == 5 and parse_top_k("0", 17) == 0
    assert parse_box("", (8, 8)) is None and parse_box("[2, 1, 6.5, 5]", (8, 8)) == [2, 1, 6.5, 5]


@pytest.mark.parametrize("call, message", [
    (lambda s: parse_classes(["3", "12"], 10), "class id 12 is out of range; allowed: 0 to 9"),
    (lambda s: parse_classes("3, seven", 10), "'seven' is not a class id; allowed: whole numbers 0 to 9"),
    (lambda s: parse_classes([], 10), "no class picked; allowed: class ids 0 to 9"),
    (lambda s: parse_prompts(" \n "), "no prompt given; type one prompt per line"),
    (lambda s: parse_top_k("18", 17), "top_k=18 is out of range; allowed: 0 to 17"),
    (lambda s: parse_top_k("five", 17), "top_k='five' is not a whole number; allowed: 0 to 17 or null"),
    (lambda s: parse_box("1,2,3", (8, 8)), "box '1,2,3' is not four numbers; allowed: x0,y0,x1,y1 in pixels of the "
                                           "8x8 image"),
    (lambda s: settings(s, steps=0), "steps=0 is out of range; allowed: 1 to 64 (the number of tokens)"),
    (lambda s: settings(s, steps=2.5), "steps=2.5 is not a whole number; allowed: 1 to 64"),
    (lambda s: settings(s, steps=None), "steps=None is not a whole number"),
    (lambda s: settings(s, cfg_weight=-1), "cfg_weight=-1 is out of range; allowed: >= 0"),
    (lambda s: settings(s, temp_max=0), "temp_max=0 is out of range; allowed: > 0"),
    (lambda s: settings(s, seed=-1), "seed=-1 is out of range; allowed: 0 to 4294967295"),
    (lambda s: settings(s, per_condition=0), "samples per condition=0 is out of range; allowed: 1 to 16"),
    (lambda s: settings(s, conditions=[str(c) for c in range(10)] * 2, per_condition=16),
     "20 conditions x 16 samples = 320 images; allowed: at most 256 per request"),
    (lambda s: settings(s, scheduler="maskgit"), "unknown scheduler 'maskgit'; allowed: halton, confidence, random"),
    (lambda s: s.compare(settings(s), ["halton"]), "pick two or three schedulers to compare, got 1 (halton)"),
    (lambda s: s.step_picture(Drawn(torch.zeros(4, 1, 8, 8), ["3"], 1), 5), "step=5 is out of range; allowed: 1 to 4"),
    (lambda s: s.first_sample(None), "no sample yet; generate a grid first"),
])
def test_bad_values_are_one_line_messages(studio, call, message):
    with pytest.raises(ValueError) as error:
        call(studio)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_the_grid_the_steps_and_the_comparison(studio):
    request = settings(studio, seed=7)
    grid, drawn, summary = studio.generate(request)
    assert grid.shape == grid_shape(["3", "5"], 3) and grid.dtype == np.uint8 and grid.std() > 10
    assert summary.startswith("2 x 3 samples, halton, 4 steps, 8 network evaluations per image")
    again, _, _ = studio.generate(request)
    other, _, _ = studio.generate(settings(studio, seed=8))
    assert np.array_equal(grid, again) and not np.array_equal(grid, other)
    # the slider's pictures: still-masked tokens in red until the last step, which is the grid itself
    assert drawn.codes_per_step.shape == (4, 6, 8, 8)
    red = np.array(MASK_COLOUR) * 255
    masked = [int(np.all(np.abs(studio.step_picture(drawn, step).astype(float) - red) < 1, axis=-1).sum())
              for step in (1, 2, 3, 4)]
    assert masked[0] > masked[1] > masked[2] > 0 == masked[3]
    assert np.array_equal(studio.step_picture(drawn, 4), grid)
    compared = studio.compare(request, ["halton", "confidence", "random"])
    assert [label for label, _ in compared] == ["halton", "confidence", "random"]
    assert np.array_equal(compared[0][1], grid) and not np.array_equal(compared[1][1], grid)


def test_an_edit_keeps_every_pixel_outside_the_region(studio):
    digit = (np.random.default_rng(0).integers(0, 17, (8, 8)) * 255 / 16).round().astype(np.uint8)
    picture, summary = studio.edit(settings(studio), Image.fromarray(digit), None, "2,1,6,5", 0, False)
    assert picture.shape == grid_shape(["3", "5"], 2 + 3) and summary.startswith("16 of 64 tokens regenerated")
    scale, pad, left = MIN_CELL // 8, 2, wrap_labels(["3", "5"], MIN_CELL)[1]

    def cell(row, col):
        y, x = pad + row * (MIN_CELL + pad), left + pad + col * (MIN_CELL + pad)
        return picture[y:y + MIN_CELL:scale, x:x + MIN_CELL:scale, 0]
    outside = ~box_mask([2, 1, 6, 5], (8, 8), (8, 8)).numpy()
    for row in range(2):
        assert np.array_equal(cell(row, 0), digit)
        for col in (2, 3, 4):
            assert np.array_equal(cell(row, col)[outside], digit[outside])
    # a sample enlarged for the editor comes back exactly; a thin painted stroke marks its cell; with a box: both
    enlarged = Image.fromarray(digit).resize((256, 256), Image.NEAREST)
    assert np.array_equal(np.asarray(fit(enlarged, (8, 8)))[..., 0], digit)
    strokes = Image.new("L", (256, 256), 0)
    strokes.paste(255, (100, 0, 102, 3))  # 2x3 pixels inside the cell (row 0, column 3)
    assert np.asarray(fit(strokes, (8, 8), mask=True)).nonzero() == (np.array([0]), np.array([3]))
    _, summary = studio.edit(settings(studio, steps=1), enlarged, strokes, "", 0, False)
    assert summary.startswith("1 of 64 tokens regenerated")
    _, summary = studio.edit(settings(studio, steps=2), enlarged, strokes, "0,0,2,2", 0, True)
    assert summary.startswith("5 of 64 tokens regenerated")


@pytest.mark.parametrize("box, steps, message", [
    ("0,0,9,9", 4, "box=[0, 0, 9, 9] is outside the 8x8 image; allowed: 0 <= x0 < x1 <= 8"),
    ("", 4, "no region to regenerate; type a box x0,y0,x1,y1 or paint over the image"),
    ("0,0,2,2", 16, "steps=16 is out of range for an edit of 4 tokens; allowed: 1 to 4"),
])
def test_bad_edits_are_one_line_messages(studio, box, steps, message):
    with pytest.raises(ValueError) as error:
        studio.edit(settings(studio, steps=steps), Image.new("L", (8, 8)), None, box, 0, False)
    assert str(error.value).startswith(message)
    with pytest.raises(ValueError, match="no image to edit"):
        studio.edit(settings(studio), None, None, "0,0,2,2", 0, False)


def test_the_editor_value_gives_the_painted_strokes():
    layer = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    layer.paste((224, 26, 26, 255), (4, 4, 6, 8))
    mask = painted_mask({"background": Image.new("RGB", (16, 16)), "layers": [layer], "composite": None})
    assert mask.getbbox() == (4, 4, 6, 8)
    assert painted_mask({"background": None, "layers": [], "composite": None}) is None
    assert painted_mask(None) is None


class WordKind(TextKind):
    """Prompts as deterministic embeddings, without a text encoder."""

    def check_model(self, model):
        self.check_text_model(model)  # no encoder whose width to check

    def make(self, values, device):
        rows = [torch.Generator().manual_seed(sum(map(ord, value))) for value in values]
        return TextEmbeddings(torch.stack([torch.randn(5, 12, generator=g) for g in rows]).to(device))


def test_a_text_model_takes_prompts_one_per_line():
    studio = studio_for(tiny_text_model(), WordKind())
    request = studio.settings("the digit 3\na handwritten seven", "random", 3, 2.0, 1.0, 1.0, "4", 1, 2)
    grid, _, summary = studio.generate(request)
    assert request.values == ["the digit 3", "a handwritten seven"] and "6 network evaluations" in summary
    assert grid.shape[0] == 2 + 2 * (MIN_CELL + 2)
    with pytest.raises(ValueError, match="no prompt given"):
        studio.settings("\n", "halton", 3, 2.0, 1.0, 1.0, "", 1, 2)


def test_the_page_builds(studio):
    pytest.importorskip("gradio", reason="the app extra is not installed: pip install -e '.[app]'")
    from halton.app import build_page

    defaults = {"classes": [3, 5], "prompts": "", "scheduler": "halton", "steps": 4, "cfg_weight": 1.0,
                "temp_min": 1.0, "temp_max": 1.0, "top_k": "", "seed": 0, "per_condition": 3}
    page = build_page(studio, defaults, "tiny")
    ids = {block.elem_id for block in page.blocks.values() if getattr(block, "elem_id", None)}
    assert {"conditions", "scheduler", "steps", "generate", "grid", "step", "compare", "editor", "regenerate"} <= ids


# ---- the entry point ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("experiment", choices("experiment"))
def test_every_experiment_composes_with_the_app(experiment):
    cfg = compose_job("app", [f"experiment={experiment}"])
    assert cfg.name == experiment and cfg.host == "127.0.0.1" and cfg.port == 7860 and cfg.share is False
    instantiate(cfg.scheduler)
    instantiate(cfg.data)  # reads nothing until setup
    with torch.device("meta"):
        assert sum(p.numel() for p in instantiate(cfg.model.net).parameters()) > 0
    assert condition_kind(cfg).name in ("class", "text")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """tiny_net's weights in train.py's checkpoint format (experiment=digits with TINY_NET)."""
    path = tmp_path_factory.mktemp("app") / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in tiny_net().state_dict().items()}}, path)
    return path


@pytest.mark.parametrize("args, message, fresh_process", [
    (["port=70000"], "error: port=70000 is out of range; allowed: 0 to 65535 (0 or null: a free port)", True),
    (["steps=0"], "error: steps=0 is out of range; allowed: 1 to 64", False),
    (["checkpoint=/nonexistent/last.ckpt"], "error: checkpoint not found: /nonexistent/last.ckpt", False),
    (["model.net.depth=2"], "error: checkpoint {ckpt} is of another configuration", False),
])
def test_the_entry_point_refuses_bad_values_in_one_line(tiny_checkpoint, tmp_path, args, message, fresh_process):
    """The command line itself once (a fresh process); the other refusals in this process, by the same checks."""
    command = ["-m halton.app", "experiment=digits", f"checkpoint={tiny_checkpoint}", *TINY_NET,
               f"paths.root_dir={tmp_path}", "port=0", *args]  # port=0: whatever else this machine serves
    result = run(*command, check=False, timeout=120) if fresh_process else run_in_process(*command)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(
        message.format(ckpt=tiny_checkpoint))


def test_without_gradio_the_entry_point_says_how_to_install_it():
    hide = "import runpy, sys; sys.modules['gradio'] = None; runpy.run_module('halton.app', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", hide, "experiment=digits"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: the app needs gradio, an optional extra: pip install -e "
                                                  "'.[app]'"]


# ---- the page in a browser ---------------------------------------------------------------------------------------


def browser_or_skip() -> None:
    """Skip (or, with HALTON_REQUIRE_BROWSER=1, fail) without chromium, chromedriver, gradio or selenium."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    missing += [name for name in ("gradio", "selenium") if importlib.util.find_spec(name) is None]
    if missing:
        reason = (f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver; pip "
                  "install -e '.[dev]')")
        if os.environ.get("HALTON_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}; HALTON_REQUIRE_BROWSER=1 asks for it")
        pytest.skip(reason)


def fetch(url: str, timeout: float = 5) -> bytes:
    """GET from the loopback server, never through a proxy."""
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=timeout) as response:
        return response.read()


@pytest.fixture(scope="module")
def served(tiny_checkpoint) -> str:
    """``python -m halton.app`` on a free loopback port, serving the tiny model; its URL."""
    browser_or_skip()
    folder = tiny_checkpoint.parent
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "GRADIO_TEMP_DIR": str(folder / "gradio"), "NO_PROXY": "127.0.0.1,localhost"}
    command = [sys.executable, "-m", "halton.app", "experiment=digits", f"checkpoint={tiny_checkpoint}", *TINY_NET,
               f"paths.root_dir={folder}", f"port={port}", "steps=4", "per_class=3"]
    url = f"http://127.0.0.1:{port}/"
    with open(folder / "app.log", "w") as log, subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                                                stderr=subprocess.STDOUT) as server:
        try:
            deadline = time.monotonic() + 120  # a loaded machine (the other pytest-xdist worker) starts it slower
            while True:
                try:
                    fetch(url, timeout=1)
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"the app did not start:\n{(folder / 'app.log').read_text()[-3000:]}")
                    time.sleep(0.25)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


@pytest.fixture(scope="module")
def browser(served):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with the driver's path below, Selenium Manager never downloads
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-proxy-server",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "generate"))


def type_into(driver, elem_id: str, value) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input, #{elem_id} textarea")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value), Keys.TAB)


def pick_classes(driver, classes: set[str]) -> None:
    from selenium.webdriver.common.by import By

    for label in driver.find_elements(By.CSS_SELECTOR, "#conditions label"):
        if (label.text.strip() in classes) != label.find_element(By.TAG_NAME, "input").is_selected():
            label.click()


def shown_picture(driver, elem_id: str, previous: str | None = None, timeout: float = 30) -> tuple[np.ndarray, str]:
    """The picture an output component shows once it shows one (other than ``previous``): pixels and address."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def source(d):
        found = [img.get_attribute("src") for img in d.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")]
        return next((src for src in found if src and src != previous), False)
    src = WebDriverWait(driver, timeout).until(source)
    return np.asarray(Image.open(io.BytesIO(fetch(src))).convert("RGB")), src


def test_the_page_draws_the_grid_asked_for(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    began = time.monotonic()
    open_page(browser, served)
    pick_classes(browser, {"3", "5"})
    type_into(browser, "steps", 4)
    type_into(browser, "per_condition", 3)
    type_into(browser, "seed", 1)
    browser.find_element(By.ID, "generate").click()
    first, src = shown_picture(browser, "grid")
    assert first.shape == grid_shape(["3", "5"], 3) and first.std() > 10  # not blank
    local = studio_for(tiny_net())
    expected, _, _ = local.generate(settings(local, seed=1))
    assert np.array_equal(first, expected)  # what the functions behind the page draw for these values
    assert "2 x 3 samples, halton, 4 steps" in browser.find_element(By.ID, "status").text
    _, after_last = shown_picture(browser, "step_grid")
    type_into(browser, "step", 1)  # the slider: the grid after the first step, mostly still masked (red)
    after_one, _ = shown_picture(browser, "step_grid", previous=after_last)
    red = np.all(np.abs(after_one.astype(float) - np.array(MASK_COLOUR) * 255) < 1, axis=-1)
    assert after_one.shape == first.shape and red.mean() > 0.3
    screenshot = tmp_path / "app.png"
    browser.save_screenshot(str(screenshot))
    print(f"screenshot of the page: {screenshot}")

    type_into(browser, "seed", 2)
    browser.find_element(By.ID, "generate").click()
    second, _ = shown_picture(browser, "grid", previous=src)
    assert second.shape == first.shape and not np.array_equal(second, first)
    assert time.monotonic() - began < 60


def test_a_bad_value_is_answered_at_its_field_and_the_results_stay(served, browser):
    """The event's validator refuses steps=0 before the run: the steps field shows the one line, while the grid,
    the step slider's picture and the status stay as they were (no "Error" badge over them)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, served)
    pick_classes(browser, {"3"})
    type_into(browser, "steps", 2)
    browser.find_element(By.ID, "generate").click()
    _, src = shown_picture(browser, "grid")
    _, step_src = shown_picture(browser, "step_grid")
    WebDriverWait(browser, 10).until(lambda d: "1 x 3 samples" in d.find_element(By.ID, "status").text)
    status = browser.find_element(By.ID, "status").text
    type_into(browser, "steps", 0)
    browser.find_element(By.ID, "generate").click()
    message = "steps=0 is out of range; allowed: 1 to 64 (the number of tokens)"
    WebDriverWait(browser, 20).until(lambda d: message in d.find_element(By.ID, "steps").text)
    time.sleep(0.5)  # what an error would do to the outputs happens at once
    for elem_id, shown in (("grid", src), ("step_grid", step_src)):
        picture = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} img")
        assert picture.get_attribute("src") == shown and picture.is_displayed() and picture.size["width"] > 20
        assert "Error" not in browser.find_element(By.ID, elem_id).text
    assert browser.find_element(By.ID, "status").text == status
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
    type_into(browser, "steps", 3)  # a good value clears the message and draws again
    browser.find_element(By.ID, "generate").click()
    shown_picture(browser, "grid", previous=src)
    assert message not in browser.find_element(By.ID, "steps").text


def test_the_page_compares_schedulers_and_edits_a_sample(served, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    def tab(name):
        next(t for t in browser.find_elements(By.CSS_SELECTOR, "[role=tab]") if t.text == name).click()

    def status():
        return browser.find_element(By.ID, "status").text

    open_page(browser, served)
    pick_classes(browser, {"3", "5"})
    type_into(browser, "steps", 2)
    browser.find_element(By.ID, "generate").click()
    grid, _ = shown_picture(browser, "grid")
    tab("Compare schedulers")
    browser.find_element(By.ID, "compare").click()
    compared = [shown_picture(browser, f"compare_{i}")[0] for i in range(3)]
    assert all(picture.shape == grid.shape for picture in compared)
    assert not np.array_equal(compared[0], compared[2]) and "compared halton, confidence, random" in status()
    # large enough to judge: each grid at least COMPARED_WIDTH wide in a 1400 px window (stacked), the small
    # digits grid (under 200 px) enlarged to fill it
    for i in range(3):
        shown = browser.find_element(By.CSS_SELECTOR, f"#compare_{i} img")
        assert shown.size["width"] >= COMPARED_WIDTH - 30 and shown.size["width"] >= 2 * grid.shape[1]
    browser.set_window_size(1400, browser.execute_script("return document.body.scrollHeight") + 100)
    screenshot = tmp_path / "compare.png"
    browser.save_screenshot(str(screenshot))
    browser.set_window_size(1400, 1000)
    print(f"screenshot of the comparison: {screenshot}")

    tab("Edit")
    browser.find_element(By.ID, "take_sample").click()
    type_into(browser, "box", "0,0,2,2")
    browser.find_element(By.ID, "regenerate").click()
    edited, src = shown_picture(browser, "edited")
    assert edited.shape == grid_shape(["3", "5"], 2 + 3) and status().startswith("4 of 64 tokens regenerated")
    pad, left = 2, wrap_labels(["3", "5"], MIN_CELL)[1]
    first = (slice(pad, pad + MIN_CELL), slice(left + pad, left + pad + MIN_CELL))
    assert np.array_equal(edited[first], grid[first])  # "before" is the grid's first sample
    # a painted stroke across the top adds its tokens to the box's
    browser.find_element(By.CSS_SELECTOR, "#editor button[aria-label=Brush]").click()
    canvas = browser.find_elements(By.CSS_SELECTOR, "#editor canvas")[-1]
    ActionChains(browser).move_to_element_with_offset(canvas, 0, -canvas.size["height"] // 2 + 60).click_and_hold() \
        .move_by_offset(40, 0).move_by_offset(40, 0).release().perform()
    browser.find_element(By.ID, "regenerate").click()
    shown_picture(browser, "edited", previous=src)
    assert int(status().split(" of ")[0]) > 4
