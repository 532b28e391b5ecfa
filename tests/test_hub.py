"""Checkpoints by hub name (hf://owner/repo/file, offline against a cache folder laid out as huggingface_hub's) and
models in the Hugging Face format (python -m halton.export, from_pretrained, checkpoint=DIR)."""

import json
import os
import shutil

import pytest
import torch
from conftest import TINY_NET, run
from safetensors.torch import load_file

from halton.models import MaskTransformer, TextMaskTransformer, from_official_checkpoint
from halton.models.loading import load_model, load_pretrained
from halton.utils.checkpoint import read_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(cache, repo_id: str, files: dict, kind: str = "models", ref: str = "main", commit: str = COMMIT
              ) -> None:
    """Put ``files`` ({name in the repository: local file}) into ``cache`` as huggingface_hub stores a download:
    <kind>--owner--repo/refs/<ref> holds the commit, snapshots/<commit>/<name> the file."""
    repo = cache / f"{kind}--{repo_id.replace('/', '--')}"
    (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    for name, source in files.items():
        target = repo / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty hub cache, offline: the environment for subprocesses, the constant for this process."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_hub_file_in_the_cache_is_read_offline(offline_cache, fixtures):
    hub_cache(offline_cache, "llvictorll/Halton-MaskGIT", {"ImageNet_256_tiny.pth": fixtures / "official_c2i_tiny.pth"})
    state = read_checkpoint("hf://llvictorll/Halton-MaskGIT/ImageNet_256_tiny.pth")
    expected = read_checkpoint(fixtures / "official_c2i_tiny.pth")
    assert state["model_state_dict"].keys() == expected["model_state_dict"].keys()
    model = from_official_checkpoint("hf://llvictorll/Halton-MaskGIT/ImageNet_256_tiny.pth", heads=4)
    assert model.grid == (8, 8) and model.codebook_size == 32


def test_a_hub_file_missing_offline_is_one_line_naming_it(offline_cache):
    with pytest.raises(FileNotFoundError) as error:
        read_checkpoint("hf://llvictorll/Halton-MaskGIT/ImageNet_256_base.pth")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("checkpoint hf://llvictorll/Halton-MaskGIT/ImageNet_256_base.pth is not in the Hugging "
                              f"Face cache ({offline_cache}) and HF_HUB_OFFLINE=1 reads the cache only")
    with pytest.raises(ValueError, match=r"hf://nobody is not a hub name; allowed: hf://\[datasets/\]<owner>/<repo>"):
        read_checkpoint("hf://nobody")


def test_hub_names_follow_hf_file_systems_grammar(offline_cache, tmp_path):
    """hf://[datasets/|spaces/]owner/repo[@revision][/file], as huggingface_hub's HfFileSystem reads it: the revision
    pins a tag, branch or commit (refs/pr/1 written refs%2Fpr%2F1), datasets/ names a dataset repository."""
    from halton.utils.files import require_file
    from halton.utils.hub import HubName, parse

    assert parse("hf://owner/repo@v1.0/sub/file.pt") == HubName("owner/repo", "model", "v1.0", "sub/file.pt")
    assert parse("hf://datasets/owner/repo/file.pt") == HubName("owner/repo", "dataset", None, "file.pt")
    assert parse("hf://spaces/owner/repo@refs%2Fpr%2F1") == HubName("owner/repo", "space", "refs/pr/1", None)
    assert str(parse("hf://owner/repo@refs%2Fpr%2F1/file.pt")) == "hf://owner/repo@refs%2Fpr%2F1/file.pt"
    for bad in ("hf://nobody", "hf://owner/repo@/file", "hf://owner//file", "hf://owner/repo/a//b", "hf://datasets/x"):
        with pytest.raises(ValueError, match=r"is not a hub name; allowed: hf://\[datasets/\]<owner>/<repo>"
                                             r"\[@<revision>\]/<file> \(a file\)"):
            parse(bad)
    # From the cache, offline: the file at the tag v1.0 (not the main branch's), a dataset repository's file
    (tmp_path / "old.txt").write_text("v1.0")
    (tmp_path / "new.txt").write_text("main")
    hub_cache(offline_cache, "owner/repo", {"file.txt": tmp_path / "new.txt"})
    hub_cache(offline_cache, "owner/repo", {"file.txt": tmp_path / "old.txt"}, ref="v1.0", commit="f" * 40)
    hub_cache(offline_cache, "owner/data", {"file.txt": tmp_path / "old.txt"}, kind="datasets")
    assert require_file("hf://owner/repo/file.txt", "file").read_text() == "main"
    assert require_file("hf://owner/repo@v1.0/file.txt", "file").read_text() == "v1.0"
    assert require_file("hf://datasets/owner/data/file.txt", "file").read_text() == "v1.0"
    with pytest.raises(FileNotFoundError, match="^file hf://owner/data/file.txt is not in the Hugging Face cache"):
        require_file("hf://owner/data/file.txt", "file")  # a model repository of that name is not cached
    # A model folder at a revision: config.json and the weights of that snapshot
    net = MaskTransformer(17, 8, 32, 1, 2, 64, 10).eval()
    net.save_pretrained(tmp_path / "model")
    hub_cache(offline_cache, "owner/model", {p.name: p for p in (tmp_path / "model").iterdir()}, ref="v2",
              commit="e" * 40)
    loaded = load_pretrained("hf://owner/model@v2")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="^model config hf://owner/model/config.json is not in the Hugging"):
        load_pretrained("hf://owner/model")  # the default branch was never fetched


def test_released_experiments_default_to_their_hub_files(offline_cache, tmp_path):
    from test_configs import compose_job

    files = {"hmaskgit_t_256": "ImageNet_256_tiny.pth", "hmaskgit_s_256": "ImageNet_256_small.pth",
             "hmaskgit_b_256": "ImageNet_256_base.pth", "hmaskgit_s_384": "ImageNet_384_small.pth",
             "hmaskgit_b_384": "ImageNet_384_base.pth", "hmaskgit_l_384": "ImageNet_384_large.pth"}
    for experiment, file in files.items():
        for entry in ("sample", "evaluate"):
            cfg = compose_job(entry, [f"experiment={experiment}"])
            assert cfg.checkpoint == f"hf://llvictorll/Halton-MaskGIT/{file}"
            assert cfg.vq_checkpoint == "hf://FoundationVision/LlamaGen/vq_ds16_c2i.pt"
    # Offline with nothing cached: one line naming the file, exit 2, no run folder
    result = run("sample.py", "experiment=hmaskgit_t_256", f"paths.runs_dir={tmp_path / 'runs'}", check=False,
                 timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: checkpoint hf://llvictorll/Halton-MaskGIT/ImageNet_256_tiny.pth is not in the Hugging Face cache "
        f"({offline_cache}) and HF_HUB_OFFLINE=1 reads the cache only; download it once online, or pass a local path"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # export and three sample.py runs; export's folder rules are tested in-process
def test_export_reloads_with_identical_logits_and_samples_identically(tiny_run, tmp_path, offline_cache):
    ckpt = tiny_run / "tiny" / "checkpoints" / "last.ckpt"
    out = tmp_path / "export"
    common = ["experiment=digits", *TINY_NET, f"paths.runs_dir={tiny_run}", "name=tiny"]
    result = run("-m halton.export", *common, f"out={out}")
    assert f"wrote {out} (MaskTransformer" in result.stdout + result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "halton_export.json",
                                                     "model.safetensors", "pipeline.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir makes folders
    config = json.loads((out / "config.json").read_text())
    assert config | {"input_size": None} == {"codebook_size": 17, "input_size": None, "hidden_dim": 32, "depth": 1,
                                             "heads": 2, "mlp_dim": 384, "num_classes": 10, "registers": 1,
                                             "patch_size": 1, "dropout": 0.0, "null_condition": "null_class"}
    assert config["input_size"] == [8, 8]

    # The EMA weights of the checkpoint, bit for bit, and the same logits
    from hydra.utils import instantiate
    from test_configs import compose_job

    net_config = compose_job("sample", common).model.net
    from_ckpt = load_model(str(ckpt), net_config)
    exported = MaskTransformer.from_pretrained(out)
    ema = read_checkpoint(ckpt)["state_dict"]
    weights = load_file(out / "model.safetensors")
    for key, value in weights.items():
        assert torch.equal(value, ema[f"model.{key}"])
    codes = torch.randint(0, 18, (4, 8, 8), generator=torch.Generator().manual_seed(0))
    labels, drop = torch.tensor([0, 3, 5, 9]), torch.tensor([False, False, True, False])
    with torch.no_grad():
        assert torch.equal(exported(codes, labels, drop), from_ckpt(codes, labels, drop))
    assert type(instantiate(net_config)) is type(exported)

    # checkpoint=DIR, and the same folder published on the hub (hf://owner/repo) read from the cache: same PNG
    hub_cache(offline_cache, "someone/digits-tiny", {p.name: p for p in out.iterdir()})
    grids = {}
    for source in (str(ckpt), str(out), "hf://someone/digits-tiny"):
        samples = tmp_path / f"samples_{len(grids)}"
        result = run("sample.py", *common, f"checkpoint={source}", "steps=4", "per_class=2", f"out_dir={samples}")
        grids[source] = next(samples.glob("*.png")).read_bytes()
    assert len(set(grids.values())) == 1

    # Exporting again replaces the earlier export's files (a user's beside them stay); anything else is refused
    from halton.export import replace_folder

    (out / "NOTES.txt").write_text("keep me")  # tests/test_hostile_export.py: the other cases
    replace_folder(out, exported.save_pretrained)
    assert json.loads((out / "config.json").read_text()) == config and (out / "NOTES.txt").read_text() == "keep me"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match=f"^out={other} exists and is not an earlier export \\(no halton_export.json; "
                                         "it holds todo.txt\\); allowed: a new or empty folder, or an earlier export"):
        replace_folder(other, exported.save_pretrained)
    assert [p.name for p in other.iterdir()] == ["todo.txt"]
    assert not list(tmp_path.glob(".*.tmp*"))


def test_a_model_folder_of_another_configuration_is_refused(tiny_run, tmp_path):
    MaskTransformer(17, 8, 32, 1, 2, num_classes=5).save_pretrained(tmp_path / "five")
    result = run("sample.py", "experiment=digits", f"checkpoint={tmp_path / 'five'}", f"paths.runs_dir={tmp_path}",
                 check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: checkpoint {tmp_path / 'five'} is of another configuration: it has {{'grid tokens': 64, "
        "'codebook_size': 17, 'num_classes': 5}, the experiment's data config {'grid tokens': 64, 'codebook_size': "
        "17, 'num_classes': 10}"]


def test_released_text_and_class_checkpoints_convert_with_identical_logits(tmp_path, fixtures):
    for kind in ("c2i", "t2i"):
        released = from_official_checkpoint(fixtures / f"official_{kind}_tiny.pth", heads=4)
        released.save_pretrained(tmp_path / kind)
        reloaded = load_pretrained(str(tmp_path / kind))
        assert type(reloaded) is type(released) is (TextMaskTransformer if kind == "t2i" else MaskTransformer)
        expected = torch.load(fixtures / f"official_{kind}_tiny_expected.pt", weights_only=True)
        condition = expected["text"] if kind == "t2i" else expected["labels"]
        with torch.no_grad():
            logits = reloaded(expected["codes"], condition, expected["drop_label"])
        torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=0)


def test_loading_never_unpickles(tmp_path):
    """A folder with a pickled pytorch_model.bin and no safetensors is refused; the pickle is never opened."""
    folder = tmp_path / "pickled"
    MaskTransformer(17, 8, 32, 1, 2, num_classes=10).save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not even a pickle: opening it would fail differently")
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        load_pretrained(str(folder))


def test_every_experiment_composes_for_export():
    from halton.cli import choices
    from test_configs import compose_job

    for experiment in choices("experiment"):
        cfg = compose_job("export", [f"experiment={experiment}"])
        assert cfg.out.endswith(f"runs/{experiment}/hf")
        assert cfg.checkpoint.startswith("hf://") == experiment.startswith("hmaskgit_")
