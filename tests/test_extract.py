"""Extraction into code shards, then loading: round trips on the digits and on generated images, resuming,
several ranks through Lightning, bad inputs."""

import hashlib
import io
import json
import logging
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from halton.data import CodeShardsDataModule, DigitsShardsDataModule, Manifest, load_digits_split
from halton.data.reading.epoch_loader import EpochDataLoader
from halton.data.writing.extraction import CodesOutOfRange, extract_locally
from halton.data.writing.sources import (DigitsSource, ImageFolderSource, WebDatasetSource, build_source, center_crop,
                                         to_tensor)
from halton.tokenizers import LlamaGenVQ, PixelTokenizer

ROOT = Path(__file__).resolve().parent.parent
VQ = dict(ch=32, ch_mult=(1, 2, 2), z_channels=32, codebook_size=64, codebook_dim=8)  # 4x downsampling
SIZE, GRID = 16, [4, 4]


@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny convolutions: threads only add overhead on a shared machine
    return LlamaGenVQ(**VQ)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 classes x 5 random RGB PNGs of assorted sizes and aspect ratios, one of them too big (box halving)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    sizes = [(20, 24), (40, 30), (16, 16), (70, 33), (18, 50)]
    for label, name in enumerate(["apple", "bird", "cat"]):
        (root / name).mkdir()
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name / f"{name}_{i}.png")
    return root


def expected_codes(tokenizer, root, flip=False):
    """key -> the tokenizer's codes of the center-cropped image, computed here without the extraction code."""
    result = {}
    for path in sorted(root.glob("*/*.png")):
        image = to_tensor(center_crop(Image.open(path), SIZE)).float()[None] / 127.5 - 1
        if flip:
            image = image.flip(-1)
        result[f"{path.parent.name}/{path.stem}"] = tokenizer.encode(image)[0]
    return result


def read_all(folder, manifest, batch_size=4, shuffle=False, flip=False):
    from halton.data import CodeShardStream

    stream = CodeShardStream(folder, manifest, batch_size, shuffle=shuffle, drop_last=False, flip=flip,
                             with_keys=True)
    return list(EpochDataLoader(stream, batch_size=None))


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ round trips
def test_image_folder_round_trip_returns_exactly_the_tokenizer_codes(tokenizer, image_folder, tmp_path):
    source = ImageFolderSource(image_folder, SIZE, shard_size=6, shuffle_seed=0)
    manifest = extract_locally(source, tokenizer, tmp_path, grid=GRID, image_size=SIZE, flip=True, chunk_size=4,
                               batch_size=5, progress=False)
    assert manifest.samples == 15 and [s.samples for s in manifest.shards] == [6, 6, 3]
    assert [s.chunks for s in manifest.shards] == [[4, 2], [4, 2], [3]]
    assert manifest.classes == ["apple", "bird", "cat"] and manifest.num_classes == 3 and manifest.flipped
    assert manifest.tokenizer == {"name": "LlamaGenVQ", "config": {**VQ, "ch_mult": [1, 2, 2]}}
    for shard in manifest.shards:  # the checksums are those of the files
        assert shard.sha256 == sha256(tmp_path / shard.name) and shard.bytes == (tmp_path / shard.name).stat().st_size
    plain, mirrored = expected_codes(tokenizer, image_folder), expected_codes(tokenizer, image_folder, flip=True)
    seen = {}
    for batch in read_all(tmp_path, manifest):
        for key, codes, label in zip(batch["keys"], batch["codes"], batch["labels"]):
            seen[key] = codes
            assert int(label) == ["apple", "bird", "cat"].index(key.split("/")[0])
    assert seen.keys() == plain.keys()
    for key in plain:
        assert torch.equal(seen[key], plain[key]), key
    # the flipped codes are those of the mirrored images (not the mirrored codes: a VQ does not commute with flips)
    flipped = {k: c for b in read_all(tmp_path, manifest, flip=True, shuffle=True, batch_size=15)
               for k, c in zip(b["keys"], b["codes"])}
    assert all(torch.equal(flipped[k], plain[k]) or torch.equal(flipped[k], mirrored[k]) for k in plain)
    assert any(not torch.equal(mirrored[k], plain[k].flip(-1)) for k in plain)
    # and the files are shuffled before sharding, so shards mix classes
    assert len({k.split("/")[0] for k in json.loads(member(tmp_path / "000000.tar", "00000.keys.json"))}) > 1


def member(shard, name):
    with tarfile.open(shard) as tar:
        return tar.extractfile(name).read()


def test_digits_round_trip_through_the_data_module(tmp_path):
    module = DigitsShardsDataModule(str(tmp_path), batch_size=49, with_keys=True)  # 1617 = 33 x 49: no remainder
    module.prepare_data()
    module.setup("fit")
    (train_x, train_y), (val_x, val_y) = load_digits_split(0.1, 0)
    pixel = PixelTokenizer(17)
    for loader, images, labels in ((module.train_dataloader(), train_x, train_y),
                                   (module.val_dataloader(), val_x, val_y)):
        codes, order, got_labels = [], [], []
        for batch in loader:
            codes.append(batch["codes"])
            got_labels.append(batch["labels"])
            order += [int(k.split("/")[1]) for k in batch["keys"]]
        assert sorted(order) == list(range(len(labels)))  # every sample once
        index = torch.tensor(order)
        assert torch.equal(torch.cat(codes), pixel.encode(images)[index])
        assert torch.equal(torch.cat(got_labels), labels[index])
    assert module.tokenizer.codebook_size == 17
    assert module.recognition_accuracy(train_x[:50], train_y[:50]) > 0.9


def test_digits_shards_are_made_once_and_remade_when_the_split_changes(tmp_path):
    DigitsShardsDataModule(str(tmp_path)).prepare_data()
    manifest = tmp_path / "train" / "manifest.json"
    first = manifest.stat().st_mtime_ns
    DigitsShardsDataModule(str(tmp_path)).prepare_data()
    assert manifest.stat().st_mtime_ns == first
    (tmp_path / "train" / "keep.txt").write_text("not ours")
    DigitsShardsDataModule(str(tmp_path), val_fraction=0.2).prepare_data()
    assert Manifest.load(tmp_path / "train").samples == 1797 - round(1797 * 0.2)
    assert (tmp_path / "train" / "keep.txt").is_file()  # only the extraction's own files are replaced


# ------------------------------------------------------------------------------------------------ resuming
class FailingTokenizer(PixelTokenizer):
    """Raises after ``budget`` encode calls: an extraction killed half-way."""

    def __init__(self, budget):
        super().__init__(17)
        self.budget = budget

    def encode(self, images):
        self.budget -= 1
        if self.budget < 0:
            raise RuntimeError("killed")
        return super().encode(images)


def test_an_interrupted_extraction_resumes_and_skips_finished_shards(tmp_path):
    source = DigitsSource("train", shard_size=200)  # 9 shards
    options = dict(grid=[8, 8], chunk_size=50, batch_size=100, progress=False)
    clean = extract_locally(source, PixelTokenizer(17), tmp_path / "clean", **options)
    with pytest.raises(RuntimeError, match="killed"):
        extract_locally(source, FailingTokenizer(budget=7), tmp_path / "run", **options)
    finished = sorted(p.name for p in (tmp_path / "run").glob("*.tar"))
    assert finished == ["000000.tar", "000001.tar", "000002.tar"] and not (tmp_path / "run" / "manifest.json").exists()
    assert not list((tmp_path / "run").glob(".*.tmp"))  # nothing half-written left behind
    times = {name: (tmp_path / "run" / name).stat().st_mtime_ns for name in finished}
    (tmp_path / "run" / "000001.tar").write_bytes(b"truncated")  # damaged after it was finished: made again
    resumed = extract_locally(source, FailingTokenizer(budget=2 * 7), tmp_path / "run", **options)
    assert (tmp_path / "run" / "000000.tar").stat().st_mtime_ns == times["000000.tar"]
    assert (tmp_path / "run" / "000002.tar").stat().st_mtime_ns == times["000002.tar"]
    assert [s.sha256 for s in resumed.shards] == [s.sha256 for s in clean.shards]  # byte-identical shards
    assert resumed.samples == clean.samples == 1617


def test_resuming_with_other_settings_is_refused(tmp_path):
    source = DigitsSource("val")
    extract_locally(source, PixelTokenizer(17), tmp_path, grid=[8, 8], chunk_size=50, progress=False)
    with pytest.raises(ValueError, match="holds shards extracted with other settings .*allowed: the same settings"):
        extract_locally(source, PixelTokenizer(17), tmp_path, grid=[8, 8], chunk_size=40, progress=False)


# ------------------------------------------------------------------------------------------------ bad input
class BrokenTokenizer(PixelTokenizer):
    def encode(self, images):
        return super().encode(images) + 100


def test_codes_outside_the_codebook_are_refused(tmp_path):
    with pytest.raises(CodesOutOfRange, match="the tokenizer produced code 116; allowed: 0 to 16 \\(its codebook\\)"):
        extract_locally(DigitsSource("val"), BrokenTokenizer(17), tmp_path, grid=[8, 8], progress=False)
    assert not list(tmp_path.glob("*.tar"))


def test_settings_that_the_data_config_cannot_read_are_refused(tokenizer, image_folder, tmp_path):
    source = ImageFolderSource(image_folder, 24)
    with pytest.raises(ValueError, match=r"image_size=24 with LlamaGenVQ \(downsample 4\) gives 6x6 codes but "
                                         r"data.grid=\[4, 4\]"):
        extract_locally(source, tokenizer, tmp_path, grid=GRID, image_size=24, progress=False)
    with pytest.raises(ValueError, match="unknown source format 'zip'; allowed: auto, imagefolder, webdataset, digits"):
        build_source("zip", str(image_folder), SIZE)
    with pytest.raises(FileNotFoundError, match="no webdataset shards found at .*nothing-\\*.tar"):
        build_source("webdataset", str(tmp_path / "nothing-*.tar"), SIZE)


def test_unreadable_images_are_skipped_and_listed(tokenizer, image_folder, tmp_path, caplog):
    folder = tmp_path / "images"
    for path in image_folder.glob("*/*.png"):
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / path.parent.name / path.name).write_bytes(path.read_bytes())
    (folder / "bird" / "broken.png").write_bytes(b"\x89PNG not really")
    with caplog.at_level(logging.WARNING, logger="halton.data"):
        manifest = extract_locally(ImageFolderSource(folder, SIZE), tokenizer, tmp_path / "out", grid=GRID,
                                   image_size=SIZE, progress=False)
    assert manifest.samples == 15
    assert [s for shard in manifest.shards for s in shard.skipped][0].startswith("bird/broken: ")
    assert any("skipping input bird/broken" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------------ webdataset input
def test_webdataset_image_shards_with_labels_and_captions(tokenizer, tmp_path):
    """img2dataset-style input: .jpg/.png with .cls, or .json with a label, and .txt captions."""
    rng = np.random.default_rng(1)
    pictures = {}
    for shard in range(2):
        with tarfile.open(tmp_path / f"{shard:05d}.tar", "w") as tar:
            for i in range(3):
                key = f"{shard:05d}{i:04d}"
                image = Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                pictures[key] = image
                members = {"png": buffer.getvalue(), "txt": f"a picture {key}".encode()}
                if i % 2:
                    members["cls"] = str(i).encode()
                else:
                    members["json"] = json.dumps({"label": 7, "caption": "ignored: .txt wins"}).encode()
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    source = build_source("auto", str(tmp_path), SIZE)
    assert isinstance(source, WebDatasetSource)
    manifest = extract_locally(source, tokenizer, tmp_path / "codes", grid=GRID, image_size=SIZE, progress=False)
    assert manifest.samples == 6 and len(manifest.shards) == 2 and manifest.captions and manifest.num_classes == 8
    batch = read_all(tmp_path / "codes", manifest, batch_size=6)[0]
    for key, codes, label, caption in zip(batch["keys"], batch["codes"], batch["labels"], batch["captions"]):
        assert caption == f"a picture {key}"
        assert int(label) == (int(key[-1]) if int(key[-1]) % 2 else 7)
        image = to_tensor(center_crop(pictures[key], SIZE)).float()[None] / 127.5 - 1
        assert torch.equal(codes, tokenizer.encode(image)[0])


@pytest.mark.slow  # two ranks through Lightning; one-process extraction stays in the default run
# ------------------------------------------------------------------------------------------------ Lightning, 2 ranks
def test_the_command_extracts_on_two_ranks_each_writing_its_own_shards(tmp_path):
    """python -m halton.data.writing.extract_codes through Lightning (DDP on CPU, 2 processes): same shards as
    in-process; its first path, python -m halton.data.extract, runs the same command."""
    args = ["data=digits_shards", "source.format=digits", "source.shard_size=400", "split=train", "flip=false",
            "chunk_size=32", "num_workers=0", "trainer.accelerator=cpu", f"paths.data_dir={tmp_path}",
            f"paths.runs_dir={tmp_path / 'runs'}"]
    two_ranks = ["trainer.devices=2", "trainer.strategy=ddp"]
    result = subprocess.run([sys.executable, "-m", "halton.data.writing.extract_codes", *args, *two_ranks], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "wrote 1617 samples in 5 shards" in result.stdout
    out = tmp_path / "digits_shards" / "train"
    writers = [json.loads((out / f"{i:06d}.json").read_text())["rank"] for i in range(5)]
    assert writers == [0, 1, 0, 1, 0]  # shard i is written by rank i mod 2
    local = extract_locally(DigitsSource("train", shard_size=400), PixelTokenizer(17), tmp_path / "local",
                            grid=[8, 8], chunk_size=32, progress=False)
    assert [s.sha256 for s in Manifest.load(out).shards] == [s.sha256 for s in local.shards]
    # and the training data config reads them as they are
    module = CodeShardsDataModule(str(tmp_path / "digits_shards"), batch_size=64, num_workers=0, val_split=None,
                                  codebook_size=17, grid=[8, 8], num_classes=10, tokenizer=PixelTokenizer(17))
    module.setup("fit")
    assert sum(len(b["labels"]) for b in module.train_dataloader()) == 1617 // 64 * 64

    rerun = subprocess.run([sys.executable, "-m", "halton.data.extract", *args, "trainer.devices=1"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "wrote 1617 samples in 5 shards" in rerun.stdout
    assert "5 of 5 shards already finished" in rerun.stdout + rerun.stderr  # all finished: skipped
    assert [json.loads((out / f"{i:06d}.json").read_text())["rank"] for i in range(5)] == writers
    runs = sorted((tmp_path / "runs" / "extract").iterdir())
    assert len(runs) == 2 and all((run / "extract.log").is_file() for run in runs)  # either path: extract.log
    bad = subprocess.run([sys.executable, "-m", "halton.data.writing.extract_codes", "data=imagenet_codes",
                          "source.path=/nowhere", f"paths.runs_dir={tmp_path / 'runs'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: source.path=/nowhere: no such file or folder"]
