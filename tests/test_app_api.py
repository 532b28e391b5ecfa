"""The web app as a script sees it (issue 24, point 4): its named API endpoints driven by gradio_client, bad values
refused by the events' validators before a run, and the port checked with the other values before the model loads.
The page is served in this process on a free loopback port."""

from __future__ import annotations

import socket
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, TINY_NET, run_in_process
from PIL import Image
from test_app import (
    grid_shape,
    settings,
    studio_for,
    tiny_checkpoint,  # noqa: F401  (a fixture)
    tiny_net,
)

pytest.importorskip("gradio", reason="the app extra is not installed: pip install -e '.[app]'")

from halton.app import build_page, free_port, launch, upload_folder
from halton.options.drawing import ServeOptions
from halton.options.rules import Invalid
from halton.validation import check_port

pytestmark = pytest.mark.xdist_group("app")
DEFAULTS = {"classes": [3, 5], "prompts": "", "scheduler": "halton", "steps": 4, "cfg_weight": 1.0, "temp_min": 1.0,
            "temp_max": 1.0, "top_k": "", "seed": 0, "per_condition": 3}
BUSY = ("port={port} is in use on 127.0.0.1 (another program, or another app, serves it); allowed: a free port, or "
        "port=0")


@pytest.fixture(scope="module")
def client(monkeypatch_module):
    """A gradio_client.Client of the page on the tiny digits model, served in this process."""
    from gradio_client import Client

    monkeypatch_module.setenv("NO_PROXY", "127.0.0.1,localhost")  # the loopback, never through a proxy
    with upload_folder() as folder:
        page = build_page(studio_for(tiny_net()), DEFAULTS, "tiny")
        launch(page, ServeOptions(), free_port("127.0.0.1"), prevent_thread_lock=True)
        try:
            yield Client(page.local_url, verbose=False, download_files=str(folder / "downloads"))
        finally:
            page.close(verbose=False)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_endpoints_are_named_with_the_fields_as_parameters(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/generate", "/step", "/compare", "/take_sample", "/edit"} <= set(endpoints)
    names = [parameter["parameter_name"] for parameter in endpoints["/generate"]["parameters"]]
    assert names == ["conditions", "scheduler", "steps", "cfg_weight", "temp_min", "temp_max", "top_k", "seed",
                     "per_condition"]
    assert [p["parameter_name"] for p in endpoints["/edit"]["parameters"]][:4] == ["image", "box", "margin",
                                                                                 "paste_back"]


def test_a_script_generates_through_the_api(client):
    began = time.perf_counter()
    path, slider, _, summary = client.predict(["3", "5"], "halton", 4, 1.0, 1.0, 1.0, "", 1, 3,
                                                      api_name="/generate")
    picture = np.asarray(Image.open(path).convert("RGB"))
    local = studio_for(tiny_net())
    expected, _, _ = local.generate(settings(local, seed=1))
    assert np.array_equal(picture, expected) and picture.std() > 10  # what the page draws for these values
    assert summary.startswith("2 x 3 samples, halton, 4 steps") and slider["maximum"] == 4
    first = np.asarray(Image.open(client.predict(1, api_name="/step")).convert("RGB"))
    assert first.shape == picture.shape and not np.array_equal(first, picture)  # still masked after one step
    # keyword arguments take the page's first values for the rest
    compared = client.predict(schedulers=["halton", "random"], conditions=["3"], steps=2, api_name="/compare")
    assert [update["label"] for update in compared[:2]] == ["halton", "random"] and compared[2]["visible"] is False
    assert compared[-1] == "compared halton, random with seed 0"
    assert time.perf_counter() - began < 20


@pytest.mark.parametrize("values, field, message", [
    ({"steps": 0}, "steps", "steps=0 is out of range; allowed: 1 to 64 (the number of tokens)"),
    ({"temp_max": 0}, "temp_max", "temp_max=0 is out of range; allowed: > 0"),
    ({"seed": -1}, "seed", "seed=-1 is out of range; allowed: 0 to 4294967295"),
    ({"conditions": []}, "conditions", "no class picked; allowed: class ids 0 to 9"),
    ({"per_condition": 17}, "per_condition", "samples per condition=17 is out of range; allowed: 1 to 16"),
])
def test_a_bad_value_is_refused_before_the_run_naming_its_field(client, capfd, values, field, message):
    from gradio_client.exceptions import ValidationError

    with pytest.raises(ValidationError) as error:
        client.predict(**values, api_name="/generate")
    assert str(error.value).splitlines() == ["1 parameter(s) failed validation:", f"- {field}: {message}"]
    assert "Traceback" not in "".join(capfd.readouterr())


def test_the_number_fields_are_bounded_by_the_options_rules():
    from halton.options.rules import SEED_RANGE

    page = build_page(studio_for(tiny_net()), DEFAULTS, "tiny")
    fields = {block.elem_id: block for block in page.blocks.values() if getattr(block, "elem_id", None)}
    bounds = {name: (fields[name].minimum, fields[name].maximum) for name in ("steps", "cfg", "temp_min", "seed",
                                                                             "per_condition", "margin")}
    assert bounds == {"steps": (1, 64), "cfg": (0, None), "temp_min": (0, None), "seed": SEED_RANGE,
                      "per_condition": (1, 16), "margin": (0, 8)}


# ---- the port, before the model loads -----------------------------------------------------------------------------


@pytest.fixture
def busy_port():
    """A port another program listens on (127.0.0.1)."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_a_busy_port_is_refused_by_the_checks(busy_port):
    with pytest.raises(Invalid) as error:
        check_port("127.0.0.1", busy_port)
    assert str(error.value).startswith(BUSY.format(port=busy_port))
    with pytest.raises(Invalid, match=f"port={busy_port} is in use on"):
        check_port("0.0.0.0", busy_port)  # every interface includes the loopback
    check_port("127.0.0.1", 0)  # a free one, chosen at start
    check_port("127.0.0.1", free_port("127.0.0.1"))
    with pytest.raises(Invalid, match=r"^host=192.0.2.1 cannot be served: Cannot assign requested address "
                                      r"\(EADDRNOTAVAIL\); allowed: an address of this machine"):
        check_port("192.0.2.1", 0)  # TEST-NET-1: no machine's own address


def test_the_entry_point_refuses_a_busy_port_before_the_model_loads(tiny_checkpoint, tmp_path, busy_port):  # noqa: F811
    result = run_in_process("-m halton.app", "experiment=digits", f"checkpoint={tiny_checkpoint}", *TINY_NET,
                            f"paths.root_dir={tmp_path}", f"port={busy_port}")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: " + BUSY.format(port=busy_port) + " (a free one, chosen at start)"]


@pytest.mark.slow
def test_a_second_app_on_a_busy_port_stops_at_once(tiny_checkpoint, tmp_path, busy_port):  # noqa: F811
    """The command itself: exit 2 in about the time Python and Hydra take to start, one line naming port=0, and
    nothing loaded or written."""
    import subprocess

    began = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "halton.app", "experiment=digits", f"checkpoint={tiny_checkpoint}",
                             *TINY_NET, f"paths.root_dir={tmp_path}", f"port={busy_port}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    took = time.monotonic() - began
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: " + BUSY.format(port=busy_port) + " (a free one, chosen at start)"], result.stderr
    assert "serving" not in result.stdout and "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "runs").exists() and took < 60


def test_the_client_example_of_the_docs_runs(client, capsys):
    """docs/app.md's gradio_client example, against this page."""
    import re

    text = (ROOT / "docs" / "app.md").read_text()
    example = next(block for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if "gradio_client" in block)
    exec(example.replace("http://127.0.0.1:7860/", client.src), {})  # noqa: S102  the project's own docs
    grid, summary = capsys.readouterr().out.strip().splitlines()[-1].split(" ", 1)  # after the client's "Loaded as"
    assert np.asarray(Image.open(grid).convert("RGB")).shape == grid_shape(["3", "7"], 4)
    assert summary.startswith("2 x 4 samples, halton, 16 steps")


def test_an_edit_and_a_comparison_are_checked_before_they_run(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import ValidationError

    path = tmp_path / "digit.png"
    Image.new("L", (8, 8), 100).save(path)
    image = {"background": handle_file(str(path)), "layers": [], "composite": None}
    picture, summary = client.predict(image, "0,0,2,2", api_name="/edit", steps=2)
    assert summary.startswith("4 of 64 tokens regenerated") and Image.open(picture).size[0] > 0
    for values, line in [({"steps": 16}, "- steps: steps=16 is out of range for an edit of 4 tokens; allowed: 1 to 4"),
                         ({"box": "0,0,9,9"}, "- box: box=[0, 0, 9, 9] is outside the 8x8 image"),
                         ({"box": ""}, "- box: no region to regenerate"),
                         ({"margin": 9}, "- margin: margin=9 is out of range; allowed: 0 to 8")]:
        with pytest.raises(ValidationError) as error:
            client.predict(image, **{"box": "0,0,2,2", "steps": 2, **values}, api_name="/edit")
        assert str(error.value).splitlines()[1].startswith(line)
    with pytest.raises(ValidationError, match="- schedulers: pick two or three schedulers to compare, got 1"):
        client.predict(schedulers=["halton"], api_name="/compare")
