"""python -m halton.export against folders it did not make (issue 25, finding 1) and the permissions of what it
writes (finding 7): it writes only into a new or empty folder or over its own earlier export (proved by its record,
halton_export.json, and the files' contents), never deletes a file it did not write, and refuses anything else in
one line, exit code 2, nothing written."""

import json
import os

import pytest
import torch
from conftest import TINY_NET, run

from halton.export import replace_folder
from halton.models import MaskTransformer

RECORD = "halton_export.json"  # the export's record: a public file name
ALLOWED = "; allowed: a new or empty folder, or an earlier export (nothing was written)"


@pytest.fixture
def net():
    torch.manual_seed(0)
    return MaskTransformer(17, 8, 32, 1, 2, num_classes=10)


def contents(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def project(folder):
    """A user's project folder that happens to hold a config.json."""
    (folder / "src").mkdir(parents=True)
    (folder / "config.json").write_text('{"learning_rate": 0.1}\n')
    (folder / "src" / "main.py").write_text("print('hello')\n")
    (folder / "thesis.tex").write_text("\\documentclass{article}\n")
    return contents(folder)


def test_a_project_folder_with_a_config_json_is_refused_and_intact(tmp_path, net):
    out = tmp_path / "thesis"
    before = project(out)
    with pytest.raises(ValueError) as error:
        replace_folder(out, net.save_pretrained)
    assert str(error.value) == (f"out={out} exists and is not an earlier export (no {RECORD}; it holds config.json, "
                                f"src, thesis.tex){ALLOWED}")
    assert contents(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # no temporary folder left beside it


def test_reexport_keeps_the_users_file_beside_it_and_replaces_only_its_own(tmp_path, net):
    out = tmp_path / "hf"
    replace_folder(out, net.save_pretrained)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", RECORD, "model.safetensors"]
    record = json.loads((out / RECORD).read_text())["files"]
    assert record["model.safetensors"] == [{"size": (out / "model.safetensors").stat().st_size,
                                            "sha256": record["model.safetensors"][0]["sha256"]}]
    (out / "NOTES.txt").write_text("ask about the learning rate\n")
    with torch.no_grad():
        net.head.weight.add_(1.0)  # a new export: other weights
    replace_folder(out, net.save_pretrained)
    assert (out / "NOTES.txt").read_text() == "ask about the learning rate\n"
    assert sorted(p.name for p in out.iterdir()) == ["NOTES.txt", "README.md", "config.json", RECORD,
                                                     "model.safetensors"]
    reloaded = MaskTransformer.from_pretrained(out)
    assert torch.equal(reloaded.head.weight, net.head.weight)
    # NOTES.txt is not the export's: the record lists the exported files only
    assert sorted(json.loads((out / RECORD).read_text())["files"]) == ["README.md", "config.json", "model.safetensors"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_empty_folder_takes_the_export(tmp_path, net):
    out = tmp_path / "empty"
    out.mkdir()
    replace_folder(out, net.save_pretrained)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", RECORD, "model.safetensors"]


def test_an_exported_file_changed_since_is_not_replaced(tmp_path, net):
    out = tmp_path / "hf"
    replace_folder(out, net.save_pretrained)
    with open(out / "README.md", "a") as card:
        card.write("\nMy notes on this model.\n")
    before = contents(out)
    with pytest.raises(ValueError) as error:
        replace_folder(out, net.save_pretrained)
    assert str(error.value) == (f"out={out} is an earlier export whose README.md was changed since (move it away to "
                                f"export here){ALLOWED}")
    assert contents(out) == before


def test_a_users_file_of_an_exported_name_is_not_replaced(tmp_path, net):
    """An earlier export that wrote no model card, and the user's own README.md beside it."""
    out = tmp_path / "hf"
    replace_folder(out, net.save_pretrained)
    record = json.loads((out / RECORD).read_text())
    del record["files"]["README.md"]
    (out / RECORD).write_text(json.dumps(record))
    (out / "README.md").write_text("# my own card\n")
    before = contents(out)
    with pytest.raises(ValueError) as error:
        replace_folder(out, net.save_pretrained)
    assert str(error.value) == f"out={out} holds a README.md that the earlier export did not write{ALLOWED}"
    assert contents(out) == before


def test_a_record_naming_files_outside_the_folder_is_refused(tmp_path, net):
    out = tmp_path / "hf"
    replace_folder(out, net.save_pretrained)
    (tmp_path / "thesis.tex").write_text("chapter 1\n")
    record = json.loads((out / RECORD).read_text())
    record["files"]["../thesis.tex"] = [{"size": 10, "sha256": "0" * 64}]
    (out / RECORD).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=f"holds a {RECORD} that is not an export record \\(file name "
                                         "'../thesis.tex' outside the folder\\)"):
        replace_folder(out, net.save_pretrained)
    assert (tmp_path / "thesis.tex").read_text() == "chapter 1\n"


def test_a_crash_midway_leaves_a_folder_the_next_export_takes(tmp_path, net, monkeypatch):
    out = tmp_path / "hf"
    replace_folder(out, net.save_pretrained)
    (out / "NOTES.txt").write_text("mine\n")
    real_replace, calls = os.replace, []

    def crash_on_the_second_file(source, target):
        calls.append(target)
        if len(calls) == 3:  # the interim record, one exported file, then the kill
            raise KeyboardInterrupt
        real_replace(source, target)

    with torch.no_grad():
        net.head.weight.add_(1.0)
    monkeypatch.setattr(os, "replace", crash_on_the_second_file)
    with pytest.raises(KeyboardInterrupt):
        replace_folder(out, net.save_pretrained)
    monkeypatch.setattr(os, "replace", real_replace)
    replace_folder(out, net.save_pretrained)
    assert (out / "NOTES.txt").read_text() == "mine\n"
    assert torch.equal(MaskTransformer.from_pretrained(out).head.weight, net.head.weight)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_files_follow_the_umask(tmp_path, net, umask):
    old = os.umask(umask)
    try:
        out = replace_folder(tmp_path / "hf", net.save_pretrained)
        replace_folder(out, net.save_pretrained)  # over the earlier export, file by file
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == dict.fromkeys(["README.md", "config.json", RECORD, "model.safetensors"], 0o666 & ~umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask


def test_export_command_refuses_a_project_folder_in_one_line(tmp_path, net):
    """The command line: exit code 2, one line on stderr, the folder byte for byte as it was, no log folder."""
    model = tmp_path / "model"
    net.save_pretrained(model)
    out = tmp_path / "thesis"
    before = project(out)
    result = run("-m halton.export", "experiment=digits", *TINY_NET, f"paths.runs_dir={tmp_path / 'runs'}",
                 f"checkpoint={model}", f"out={out}", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: out={out} exists and is not an earlier export (no {RECORD}; it holds config.json, src, thesis.tex)"
        f"{ALLOWED}"]
    assert contents(out) == before
    assert not (tmp_path / "runs").exists()
