"""The web app against hostile or unlucky uploads and settings (issue 25, findings 4 and 6): the upload limit, uploads
deleted once read and with the app, non-images and decompression bombs answered in one line, finite sampling values,
the warning when the page is reachable beyond this machine without a login, and Gradio's login. The page is served
in this process (Gradio's own server on a free loopback port) and spoken to over HTTP as a script would."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from pathlib import Path

import pytest
from conftest import ROOT, TINY_NET, run_in_process
from test_app import studio_for, tiny_checkpoint, tiny_net  # noqa: F401  (tiny_checkpoint: a fixture)

pytest.importorskip("gradio", reason="the app extra is not installed: pip install -e '.[app]'")

from halton.app import (
    build_page,
    exposure_warning,
    free_port,
    launch,
    read_logins,
    upload_folder,
)
from halton.options.drawing import ServeOptions
from halton.options.rules import Invalid
from halton.utils.pixels import MAX_PIXELS

pytestmark = pytest.mark.xdist_group("app")
LIMIT_MB = 1 / 16  # the served page's upload limit in these tests: 64 KiB
DEFAULTS = {"classes": [3], "prompts": "", "scheduler": "halton", "steps": 2, "cfg_weight": 1.0, "temp_min": 1.0,
            "temp_max": 1.0, "top_k": "", "seed": 0, "per_condition": 1}
CONTROLS = [["3"], "halton", 2, 1.0, 1.0, 1.0, "", 0, 1]  # classes, scheduler, steps, cfg, temps, top-k, seed, per
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the loopback, never through a proxy


def png(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` grey pixels over a few bytes of pixel data: a file of 80 bytes
    that a decoder would try to fill gigabytes from. Only a check of the header before decoding answers it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def small_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8), 100).save(buffer, "PNG")
    return buffer.getvalue()


def upload(url: str, name: str, data: bytes, cookie: str | None = None) -> tuple[int, str]:
    """POST one file to Gradio's upload route, as the page (or any script) does: (HTTP status, body)."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", **({"Cookie": cookie} if cookie else {})}
    request = urllib.request.Request(f"{url}gradio_api/upload", data=body, headers=headers)
    try:
        with OPENER.open(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def call(url: str, api: str, data: list) -> tuple[str, object]:
    """Run one of the page's events through Gradio's HTTP API: ("complete", outputs), ("invalid", {field: message})
    for values its validator refuses, or ("error", the message the page shows)."""
    request = urllib.request.Request(f"{url}gradio_api/call/{api}", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"data": data}).encode())
    try:
        with OPENER.open(request, timeout=30) as response:
            event = json.loads(response.read())["event_id"]
    except urllib.error.HTTPError as error:  # refused before it is queued: by the event's validator (422, the
        detail = json.loads(error.read())["detail"]  # field and its message) or while its values were read (400)
        if error.code == 422:
            return "invalid", {item["parameter_name"]: item["message"] for item in detail if not item["is_valid"]}
        return "error", detail
    with OPENER.open(f"{url}gradio_api/call/{api}/{event}", timeout=60) as response:
        lines = response.read().decode().splitlines()
    kind = next(line.split(": ", 1)[1] for line in lines if line.startswith("event: "))
    data = json.loads(next(line.split(": ", 1)[1] for line in lines if line.startswith("data: ")))
    return kind, data["error"] if kind == "error" else data


def edit(url: str, path: str, name: str, box: str = "0,0,2,2") -> tuple[str, object]:
    """The page's Regenerate on an uploaded file."""
    editor = {"background": {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}, "layers": [],
              "composite": None, "id": None}
    return call(url, "edit", [editor, box, 0, False, *CONTROLS])


def send_canvas(url: str, editor_id: int, canvas: str, index: object = 0) -> int:
    """POST one layer of an editor canvas as bytes to the component's server function, as the page may: the status."""
    boundary = uuid.uuid4().hex
    fields = {"component_id": editor_id, "session_hash": "hostile", "fn_name": "accept_blobs", "type": "layer",
              "index": index, "id": canvas}
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
                    for name, value in fields.items())
    body += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="layer.png"\r\n'
             "Content-Type: image/png\r\n\r\n").encode() + small_png() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}gradio_api/component_server", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with OPENER.open(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def files_in(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


@pytest.fixture(scope="module")
def served():
    """The page on the tiny digits model, served in this process with a 64 KiB upload limit: (URL, the app's
    upload folder). The folder is checked to be gone once the app stops."""
    with upload_folder() as folder:
        page = build_page(studio_for(tiny_net()), DEFAULTS, "tiny")
        launch(page, ServeOptions(max_upload_mb=LIMIT_MB), free_port("127.0.0.1"), prevent_thread_lock=True)
        try:
            yield page.local_url, folder, page
        finally:
            page.close(verbose=False)
    assert not folder.exists()


# ---- finding 4: the upload limit, uploads deleted -----------------------------------------------------------------


def test_an_upload_over_the_limit_is_refused_and_not_stored(served):
    url, folder, _ = served
    status, body = upload(url, "big.bin", os.urandom(int(LIMIT_MB * 2**20) + 4096))
    assert status == 413 and "maximum allowed size of 65536 bytes" in body
    assert files_in(folder) == []
    assert upload(url, "fits.bin", os.urandom(1000))[0] == 200  # under the limit: stored as before


def test_an_edit_deletes_its_upload_and_the_app_its_folder(served):
    url, folder, _ = served
    status, body = upload(url, "digit.png", small_png())
    path = json.loads(body)[0]
    assert status == 200 and Path(path).is_file() and Path(path).is_relative_to(folder)
    kind, outputs = edit(url, path, "digit.png")
    assert kind == "complete" and outputs[1].startswith("4 of 64 tokens regenerated")
    assert not Path(path).exists() and not Path(path).parent.exists()  # read, then deleted
    kind, outputs = edit(url, path, "digit.png", box="0,0,4,4")  # a second click sends the same file again
    assert kind == "complete" and outputs[1].startswith("16 of 64 tokens regenerated")
    assert not any(file.name == "digit.png" for file in files_in(folder))


def test_canvases_sent_as_bytes_are_bounded(served):
    """Gradio keeps every canvas sent to the editor's server function until a request takes it, and makes room for
    any layer index: a script could fill the memory."""
    from halton.app import MAX_LAYERS, PENDING_CANVASES

    url, _, page = served
    editor = next(block for block in page.blocks.values() if getattr(block, "elem_id", None) == "editor")
    began = time.perf_counter()
    assert send_canvas(url, editor._id, "huge", index=10**8) >= 400
    assert "huge" not in editor.blob_storage and time.perf_counter() - began < 5
    assert send_canvas(url, editor._id, "deep", index=MAX_LAYERS - 1) == 200
    for canvas in range(PENDING_CANVASES + 8):
        assert send_canvas(url, editor._id, f"canvas {canvas}") == 200
    assert len(editor.blob_storage) == PENDING_CANVASES and f"canvas {PENDING_CANVASES + 7}" in editor.blob_storage


def test_the_upload_folder_is_the_apps_own_and_goes_with_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    with upload_folder() as folder:
        assert folder.parent == tmp_path / "gradio" and os.environ["GRADIO_TEMP_DIR"] == str(folder)
        (folder / "abc").mkdir()
        (folder / "abc" / "upload.png").write_bytes(b"x")
    assert not folder.exists() and os.environ["GRADIO_TEMP_DIR"] == str(tmp_path / "gradio")


# ---- non-images and decompression bombs: one line, no traceback on the console ------------------------------------


@pytest.mark.parametrize("name, data, message", [
    ("notes.png", b"a text file renamed .png\n" * 8,
     "notes.png is not an image; allowed: PNG, JPEG, WebP, BMP, GIF, TIFF or another format PIL reads"),
    ("bomb.png", png(5000, 5000), f"bomb.png has 25000000 pixels (5000x5000); allowed: at most {MAX_PIXELS}"),
    ("pil_bomb.png", png(20000, 20000), f"pil_bomb.png has 400000000 pixels; allowed: at most {MAX_PIXELS}"),
], ids=["text", "bomb", "pil_bomb"])
def test_a_non_image_or_a_bomb_is_answered_in_one_line(served, capfd, name, data, message):
    url, folder, _ = served
    status, body = upload(url, name, data)
    assert status == 200
    kind, error = edit(url, json.loads(body)[0], name)
    assert kind == "invalid" and error["image"].startswith(message) and "\n" not in error["image"]
    assert not any(file.name == name for file in files_in(folder))  # refused, and deleted all the same
    assert "Traceback" not in "".join(capfd.readouterr())


def test_a_bad_value_is_one_line_in_the_page_and_no_traceback_on_the_console(served, capfd):
    url, _, _ = served
    steps = CONTROLS.index(2)
    kind, error = call(url, "generate", [*CONTROLS[:steps], 0, *CONTROLS[steps + 1:]])
    assert (kind, error) == ("invalid", {"steps": "steps=0 is out of range; allowed: 1 to 64 (the number of tokens)"})
    assert "Traceback" not in "".join(capfd.readouterr())


@pytest.mark.parametrize("width, height, message", [
    (4096, 4096, None),
    (4097, 4096, ("{path} has 16781312 pixels (4097x4096); allowed: at most 16777216 (e.g. 4096x4096); scale it "
                  "down first")),
    (20000, 20000, "{path} has 400000000 pixels; allowed: at most 16777216"),
])
def test_the_pixel_count_is_checked_from_the_header(tmp_path, width, height, message):
    """halton.utils.pixels, the one home of the limit (also for edit.image and reference images): a file of a
    hundred bytes is refused or opened without a pixel decoded."""
    from halton.utils.pixels import open_image

    path = tmp_path / "picture.png"
    path.write_bytes(png(width, height))
    if message is None:
        with open_image(path) as image:
            assert image.size == (width, height)
        return
    with pytest.raises(ValueError) as error:
        open_image(path)
    assert str(error.value).startswith(message.format(path=path)) and "\n" not in str(error.value)


# ---- finding 6 in the app: finite products of sampling values -----------------------------------------------------


@pytest.mark.parametrize("values,line", [({"cfg_weight": 1e308}, "cfg_weight=1e+308 scales the logits by "),
                                         ({"temp_min": 1e308, "temp_max": 1e308}, "temp_max=1e+308 scales the logits")])
def test_huge_sampling_values_are_refused_in_one_line(values, line):
    studio = studio_for(tiny_net())
    request = {"cfg_weight": 1.0, "temp_min": 1.0, "temp_max": 1.0, **values}
    with pytest.raises(ValueError) as error:
        studio.settings(["3"], "halton", 2, request["cfg_weight"], request["temp_min"], request["temp_max"], "", 0, 1)
    assert str(error.value).startswith(line) and "\n" not in str(error.value)


# ---- beyond the loopback: the warning, the login ------------------------------------------------------------------


@pytest.mark.parametrize("options, warning", [
    ({"host": "0.0.0.0"}, ("host=0.0.0.0 without auth: anyone who reaches the page can use the model and upload "
                           "files; set auth=FILE (user:password lines)")),
    ({"host": "192.168.1.20"}, "host=192.168.1.20 without auth"),
    ({"share": True}, "a public share link without auth"),
    ({"host": "0.0.0.0", "auth": "logins.txt"}, None),
    ({"host": "127.0.0.1"}, None),
    ({"host": "127.0.0.2"}, None),
    ({"host": "localhost"}, None),
    ({"host": "::1"}, None),
])
def test_serving_beyond_the_loopback_without_a_login_is_warned_of(options, warning):
    said = exposure_warning(ServeOptions(**options))
    assert said == warning if warning is None else said.startswith(warning)


def test_the_login_file_reaches_the_page(tmp_path, caplog):
    logins = tmp_path / "logins.txt"
    logins.write_text("# who may use the page\nada:lovelace-1815\n\nalan:turing\n")
    assert read_logins(str(logins)) == [("ada", "lovelace-1815"), ("alan", "turing")]
    with upload_folder():
        page = build_page(studio_for(tiny_net()), DEFAULTS, "tiny")
        launch(page, ServeOptions(host="127.0.0.1", auth=str(logins)), free_port("127.0.0.1"),
               prevent_thread_lock=True)
        try:
            url = page.local_url
            assert upload(url, "digit.png", small_png())[0] == 401  # no login: refused
            form = urllib.parse.urlencode({"username": "ada", "password": "lovelace-1815"}).encode()
            with OPENER.open(urllib.request.Request(f"{url}login", data=form), timeout=30) as response:
                cookie = "; ".join(value.split(";")[0] for name, value in response.headers.items()
                                   if name.lower() == "set-cookie")
            assert upload(url, "digit.png", small_png(), cookie=cookie)[0] == 200
        finally:
            page.close(verbose=False)
    assert "lovelace" not in caplog.text


@pytest.mark.parametrize("content, message", [
    ("ada\n", "auth={path} line 1 is not user:password (a user name, a colon, a password)"),
    ("ada:secret\n:nobody\n", "auth={path} line 2 is not user:password"),
    ("# nobody\n", "auth={path} holds no user:password line"),
])
def test_a_bad_login_file_is_one_line_without_the_password(tmp_path, content, message):
    path = tmp_path / "logins.txt"
    path.write_text(content)
    with pytest.raises(Invalid) as error:
        read_logins(str(path))
    assert str(error.value).startswith(message.format(path=path)) and "secret" not in str(error.value)


@pytest.mark.parametrize("args, message", [
    (["max_upload_mb=0"], "error: max_upload_mb=0 is out of range; allowed: > 0 and <= 1024 (MiB)"),
    (["max_upload_mb=lots"], "error: max_upload_mb='lots' is not a number"),
    (["auth=/nonexistent/logins.txt"], "error: auth not found: /nonexistent/logins.txt"),
])
def test_the_entry_point_refuses_bad_serving_values_in_one_line(tiny_checkpoint, tmp_path, args, message):  # noqa: F811
    result = run_in_process("-m halton.app", "experiment=digits", f"checkpoint={tiny_checkpoint}", *TINY_NET,
                            f"paths.root_dir={tmp_path}", *args)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(message)


# ---- the command: the folder goes on Ctrl-C and SIGTERM -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_the_app_removes_its_uploads(tiny_checkpoint, tmp_path, stop):  # noqa: F811
    checkpoint = tiny_checkpoint
    port = free_port("127.0.0.1")
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "NO_PROXY": "127.0.0.1,localhost"}
    command = [sys.executable, "-m", "halton.app", "experiment=digits", f"checkpoint={checkpoint}", *TINY_NET,
               f"paths.root_dir={tmp_path}", f"port={port}", "host=0.0.0.0"]
    url = f"http://127.0.0.1:{port}/"
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as server:
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    status, body = upload(url, "digit.png", small_png())
                    break
                except OSError:
                    assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()
                    time.sleep(0.25)
            assert status == 200 and Path(json.loads(body)[0]).is_file()
            server.send_signal(stop)
            output = server.communicate(timeout=30)[0]
        finally:
            if server.poll() is None:
                server.kill()
    assert server.returncode == 0, output
    assert "host=0.0.0.0 without auth" in output and "Traceback" not in output
    assert list((tmp_path / "gradio").iterdir()) == []  # the app's own folder, with the upload, is gone
