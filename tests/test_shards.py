"""Loading code shards: partition over ranks and workers, shuffling quality, DDP, bad shards, manifest checks."""

import json
import logging
import shutil
import subprocess
import tarfile
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SIGTERM_CALLBACK

from halton.data import CodeShardsDataModule, CodeShardStream, DigitsShardsDataModule, Manifest, ManifestMismatch
from halton.data.format.chunks import Chunk, strings, write_shard
from halton.data.reading.epoch_loader import EpochDataLoader, resume_position
from halton.data.reading.partition import plan_reader

ROOT = Path(__file__).resolve().parent.parent
GRID, CODEBOOK = [4, 4], 64


def make_shards(folder: Path, shards: int = 5, chunks: int = 4, chunk_size: int = 25, flipped: bool = False,
                captions: bool = False, ragged: bool = False, seed: int = 0) -> Manifest:
    """Synthetic shards: sample keys name their shard, chunk and index ("s2c1i07"); codes are random and the
    flipped codes are the mirrored codes (what a pixel tokenizer gives), labels = index % 10."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for s in range(shards):
        parts = []
        for c in range(chunks):
            n = chunk_size - (c == chunks - 1 and ragged) * (s + 3)  # some shorter last chunks
            codes = rng.integers(0, CODEBOOK, (n, *GRID), dtype=np.uint16)
            parts.append(Chunk(codes, (np.arange(n) % 10).astype(np.int32),
                               strings(f"s{s}c{c}i{i:02d}" for i in range(n)),
                               codes[:, :, ::-1].copy() if flipped else None,
                               strings(f"caption {s}/{c}/{i}" for i in range(n)) if captions else None))
        records.append(write_shard(folder / f"{s:06d}.tar", parts, source=f"synthetic {s}"))
    manifest = Manifest(grid=GRID, codebook_size=CODEBOOK, num_classes=10, chunk_size=chunk_size, flipped=flipped,
                        captions=captions, tokenizer={"name": "synthetic", "config": {}}, image_size=None,
                        source={"kind": "synthetic"}, shards=records)
    manifest.save(folder)
    return manifest


def chunk_of(key: str) -> str:
    return key.split("i")[0]


def read_epoch(stream, num_workers=0, epoch=0):
    loader = EpochDataLoader(stream, batch_size=None, num_workers=num_workers, epoch_source=lambda: epoch)
    return list(loader)


def stream_for(folder, manifest, batch_size=10, **options):
    options.setdefault("with_keys", True)
    return CodeShardStream(folder, manifest, batch_size, **options)


def keys_of(batches):
    return [k for b in batches for k in b["keys"]]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    return folder, make_shards(folder, ragged=True, flipped=True)  # 5 shards, 4 chunks, 25 samples but ragged ends


def all_keys(manifest):
    return {f"s{s}c{c}i{i:02d}" for s, shard in enumerate(manifest.shards) for c, n in enumerate(shard.chunks)
            for i in range(n)}


# ------------------------------------------------------------------------------------------------ partition
@pytest.mark.parametrize("world,workers,drop_last", [(1, 1, False), (2, 3, True), (3, 2, False), (4, 1, True)])
def test_plans_are_disjoint_equal_per_rank_and_cover_the_epoch(shards, world, workers, drop_last):
    _, manifest = shards
    seen, batches_per_rank = Counter(), []
    for rank in range(world):
        total = 0
        for worker in range(workers):
            plan = plan_reader(manifest, epoch=3, seed=1, shuffle=True, rank=rank, world_size=world, worker=worker,
                               num_workers=workers, batch_size=7, drop_last=drop_last)
            total += plan.batches
            for piece in plan.pieces:
                seen.update((piece.shard, piece.chunk, i) for i in range(piece.start, piece.stop))
            assert sum(p.stop - p.start for p in plan.pieces) == plan.samples
        batches_per_rank.append(total)
    assert len(set(batches_per_rank)) == 1  # every DDP rank runs the same number of steps
    assert max(seen.values()) == 1  # disjoint
    assert sum(seen.values()) == manifest.samples // world * world  # everything but the N mod W remainder


def test_each_shard_is_opened_by_at_most_two_readers_and_epochs_differ(shards):
    _, manifest = shards
    readers = Counter()
    for rank in range(2):
        for worker in range(2):
            plan = plan_reader(manifest, epoch=0, seed=0, shuffle=True, rank=rank, world_size=2, worker=worker,
                               num_workers=2, batch_size=5, drop_last=True)
            readers.update(plan.shards())
    assert max(readers.values()) <= 2
    first = [plan_reader(manifest, epoch=e, seed=0, shuffle=True, rank=0, world_size=2, worker=0, num_workers=1,
                         batch_size=5, drop_last=True).pieces for e in (0, 1)]
    assert first[0] != first[1]


# ------------------------------------------------------------------------------------------------ batches, shuffling
def test_batches_are_dicts_like_the_digits_module(shards):
    folder, manifest = shards
    batch = read_epoch(stream_for(folder, manifest, with_keys=False))[0]
    assert set(batch) == {"codes", "labels"}
    assert batch["codes"].dtype == torch.long and batch["codes"].shape == (10, 4, 4)
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == (10,)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_sample_once_per_epoch_and_epochs_reshuffle(shards, num_workers):
    folder, manifest = shards
    stream = stream_for(folder, manifest, batch_size=8, drop_last=False, pool_chunks=2)
    epochs = [keys_of(read_epoch(stream, num_workers, epoch)) for epoch in (0, 1)]
    for keys in epochs:
        assert len(keys) == len(set(keys)) == manifest.samples
        assert set(keys) == all_keys(manifest)
    assert epochs[0] != epochs[1]
    assert len(read_epoch(stream, num_workers)) == len(stream)


def test_consecutive_batches_mix_at_least_8_chunks(tmp_path):
    manifest = make_shards(tmp_path, shards=8, chunks=8, chunk_size=100)  # 64 chunks
    stream = stream_for(tmp_path, manifest, batch_size=64, pool_chunks=16, shuffle_chunks=8)
    batches = read_epoch(stream)
    assert len(batches) == len(stream) == 6400 // 64
    mixed = [len({chunk_of(k) for k in b["keys"]}) for b in batches]
    assert min(mixed) >= 8, mixed
    # and the labels of a batch are no longer in the order they were written
    assert not all(b["labels"].tolist() == sorted(b["labels"].tolist()) for b in batches)


def test_unshuffled_reading_keeps_the_manifest_order(shards):
    folder, manifest = shards
    keys = keys_of(read_epoch(stream_for(folder, manifest, batch_size=9, shuffle=False, drop_last=False)))
    expected = [f"s{s}c{c}i{i:02d}" for s, shard in enumerate(manifest.shards) for c, n in enumerate(shard.chunks)
                for i in range(n)]
    assert keys == expected


def test_codes_and_labels_are_those_written(tmp_path):
    manifest = make_shards(tmp_path, shards=2, chunks=2, chunk_size=10, seed=5)
    written = {}
    rng = np.random.default_rng(5)  # replay the generator of make_shards
    for s in range(2):
        for c in range(2):
            codes = rng.integers(0, CODEBOOK, (10, *GRID), dtype=np.uint16)
            written.update({f"s{s}c{c}i{i:02d}": (codes[i], i % 10) for i in range(10)})
    for batch in read_epoch(stream_for(tmp_path, manifest, batch_size=6, drop_last=False)):
        for key, codes, label in zip(batch["keys"], batch["codes"], batch["labels"]):
            assert np.array_equal(codes.numpy(), written[key][0]) and int(label) == written[key][1]


def test_flip_takes_the_flipped_codes_for_about_half(tmp_path):
    manifest = make_shards(tmp_path, shards=4, chunks=5, chunk_size=50, flipped=True)
    plain = {k: c for b in read_epoch(stream_for(tmp_path, manifest, shuffle=False, drop_last=False))
             for k, c in zip(b["keys"], b["codes"])}
    mirrored = 0
    for batch in read_epoch(stream_for(tmp_path, manifest, batch_size=20, flip=True)):
        for key, codes in zip(batch["keys"], batch["codes"]):
            if not torch.equal(codes, plain[key]):
                assert torch.equal(codes, plain[key].flip(-1))
                mirrored += 1
    assert 0.4 < mirrored / manifest.samples < 0.6


def test_captions_come_with_their_samples(tmp_path):
    manifest = make_shards(tmp_path, shards=2, chunks=2, chunk_size=10, captions=True)
    batch = read_epoch(stream_for(tmp_path, manifest, batch_size=7))[0]
    assert [c.replace("caption ", "") for c in batch["captions"]] == \
           [f"{k[1]}/{k.split('c')[1].split('i')[0]}/{int(k.split('i')[1])}" for k in batch["keys"]]


def test_resampled_stream_is_endless_and_seeded(shards):
    folder, manifest = shards
    stream = stream_for(folder, manifest, batch_size=10, resampled=True, seed=3)
    with pytest.raises(TypeError):
        len(stream)

    def first(n):
        iterator = iter(EpochDataLoader(stream, batch_size=None))
        return [next(iterator)["keys"] for _ in range(n)]

    batches = first(3 * len(all_keys(manifest)) // 10)  # three epochs' worth
    assert all(len(b) == 10 for b in batches) and set(keys_of([{"keys": k} for k in batches])) <= all_keys(manifest)
    assert batches[:5] == first(5)
    # resuming an endless stream does not replay it: a fresh draw, seeded by the position
    loader = EpochDataLoader(stream, batch_size=None)
    loader.load_state_dict({"seed": 3, "epoch": 0, "samples": 40_000_000})
    resumed = [b["keys"] for _, b in zip(range(5), loader)]
    assert resumed != batches[:5]
    loader.load_state_dict({"seed": 3, "epoch": 0, "samples": 40_000_000})
    assert [b["keys"] for _, b in zip(range(5), loader)] == resumed


@pytest.mark.parametrize("num_workers,trained", [(0, 5), (2, 5), (2, 8), (2, 14)])
def test_resume_mid_epoch_continues_with_the_next_batch(shards, num_workers, trained):
    folder, manifest = shards
    stream = stream_for(folder, manifest, batch_size=30, flip=True)
    straight = read_epoch(stream, num_workers, epoch=2)
    assert len(straight) == 15  # 475 samples: workers with 8 and 7 batches
    loader = EpochDataLoader(stream, batch_size=None, num_workers=num_workers, epoch_source=lambda: 2)
    iterator = iter(loader)
    for _ in range(trained):  # a loader with a length is read on demand: every batch handed out is trained
        next(iterator)
    state = loader.state_dict()
    del iterator
    assert state == {"seed": 0, "epoch": 2, "samples": trained * 30}
    resumed = EpochDataLoader(stream, batch_size=None, num_workers=num_workers, epoch_source=lambda: 2)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert [b["keys"] for b in rest] == [b["keys"] for b in straight[trained:]]
    assert all(torch.equal(a["codes"], b["codes"]) for a, b in zip(rest, straight[trained:]))  # flips too


def test_resume_position_follows_the_round_robin():
    assert resume_position(5, [3, 3, 2]) == ([2, 2, 1], 2)
    assert resume_position(7, [3, 2, 2]) == ([3, 2, 2], 1)
    assert resume_position(4, [2, 1, 1]) == ([2, 1, 1], 1)
    assert resume_position(0, [2, 2]) == ([0, 0], 0)


# ------------------------------------------------------------------------------------------------ bad shards
@pytest.mark.parametrize("damage", ["truncate", "garble", "codes_out_of_codebook", "missing_chunk"])
def test_a_bad_shard_is_skipped_with_a_warning_and_counted(tmp_path, caplog, damage):
    manifest = make_shards(tmp_path, shards=4, chunks=3, chunk_size=20)
    bad = tmp_path / "000002.tar"
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    elif damage == "garble":
        bad.write_bytes(np.random.default_rng(0).bytes(bad.stat().st_size))
    elif damage == "codes_out_of_codebook":
        codes = np.full((20, *GRID), CODEBOOK + 6, np.uint16)
        write_shard(bad, [Chunk(codes, np.zeros(20, np.int32), strings(str(i) for i in range(20)))] * 3)
    else:
        write_shard(bad, [Chunk(np.zeros((20, *GRID), np.uint16), np.zeros(20, np.int32),
                                strings(str(i) for i in range(20)))] * 2)
    stream = stream_for(tmp_path, manifest, batch_size=10)
    with caplog.at_level(logging.WARNING, logger="halton.data"):
        batches = read_epoch(stream)
    assert len(batches) == len(stream) == 24  # the epoch keeps its length: DDP ranks stay in step
    assert stream.skipped_shards == 1
    messages = [r.getMessage() for r in caplog.records if "skipping unreadable shard" in r.getMessage()]
    assert len(messages) == 1 and "000002.tar" in messages[0], messages
    expected = {"codes_out_of_codebook": f"code {CODEBOOK + 6}, outside the codebook; allowed: 0 to {CODEBOOK - 1}",
                "missing_chunk": "it ends after 2 chunks, the manifest says 3"}.get(damage)
    if expected:
        assert expected in messages[0]
    good = [k for k in keys_of(batches) if not k.startswith("s2")]
    assert len(set(good)) >= 30


def test_skipped_shards_reach_the_loggers(tmp_path):
    manifest = make_shards(tmp_path, shards=3, chunks=2, chunk_size=10)
    (tmp_path / "train").mkdir()
    for path in list(tmp_path.iterdir()):
        if path.is_file():
            path.rename(tmp_path / "train" / path.name)
    (tmp_path / "train" / "000001.tar").write_bytes(b"garbage")
    module = CodeShardsDataModule(tmp_path, batch_size=5, num_workers=0, val_split=None, codebook_size=CODEBOOK,
                                  grid=GRID, num_classes=10, pin_memory=False)
    logged = []

    class Logger:
        def log_metrics(self, metrics, step):
            logged.append((metrics, step))

    class Trainer:
        loggers, global_step, current_epoch, global_rank, world_size = [Logger()], 7, 0, 0, 1

    module.trainer = Trainer()
    for batch in module.train_dataloader():
        module.on_after_batch_transfer(batch, 0)
    assert logged == [({"data/skipped_shards": 1}, 7)]
    assert manifest.samples == 60


# ------------------------------------------------------------------------------------------------ manifest checks
@pytest.fixture()
def split_dir(tmp_path):
    make_shards(tmp_path / "train", shards=2, chunks=2, chunk_size=10)
    return tmp_path


def module_for(root, **options):
    options = {"codebook_size": CODEBOOK, "grid": GRID, "num_classes": 10, "val_split": None, "num_workers": 0,
               "batch_size": 5, **options}
    return CodeShardsDataModule(root, **options)


def test_the_data_module_needs_no_shards_until_setup(tmp_path):
    module = module_for(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no manifest.json in .*nowhere/train: extract the shards first"):
        module.setup("fit")


@pytest.mark.parametrize("option,message", [
    ({"grid": [8, 8]}, "data.grid=[8, 8] but the shards in .* have grid=[4, 4]"),
    ({"codebook_size": 16384}, "data.codebook_size=16384 but the shards in .* have codebook_size=64"),
    ({"num_classes": 1000}, "data.num_classes=1000 but the shards in .* have num_classes=10"),
    ({"flip": True}, "data.flip=true needs the codes of flipped images, which the shards in .* do not hold"),
])
def test_config_facts_must_match_the_manifest(split_dir, option, message):
    with pytest.raises(ManifestMismatch, match=message.replace("[", r"\[").replace("]", r"\]")):
        module_for(split_dir, **option).setup("fit")


def test_manifest_and_files_must_agree(split_dir, caplog):
    folder = split_dir / "train"
    data = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**data, "samples": 41}))
    with pytest.raises(ManifestMismatch, match="says 41 samples but its shards add up to 40"):
        module_for(split_dir).setup("fit")
    (folder / "manifest.json").write_text(json.dumps(data))
    (folder / "000001.tar").rename(folder / "moved.tar")
    with pytest.raises(ManifestMismatch, match="lists 2 shards but 1 are missing \\(first: 000001.tar\\)"):
        module_for(split_dir).setup("fit")
    (folder / "moved.tar").rename(folder / "000001.tar")
    with open(folder / "000001.tar", "ab") as handle:
        handle.write(b"\0" * 512)
    with caplog.at_level(logging.WARNING, logger="halton.data"):
        module_for(split_dir).setup("fit")
    assert any("000001.tar" in r.getMessage() and "does not match the manifest" in r.getMessage()
               for r in caplog.records)


def test_the_tokenizer_must_be_the_one_that_made_the_codes(split_dir):
    from halton.tokenizers import PixelTokenizer

    with pytest.raises(ManifestMismatch, match="were made by synthetic .* decodes them with PixelTokenizer"):
        module_for(split_dir, tokenizer=PixelTokenizer(64)).setup("fit")


def change_in_place(shard: Path, member: str = "00001.codes.npy") -> None:
    """Change one code inside a tar member, keeping the file's size and structure and the code in the codebook:
    a silent change that only the checksum sees."""
    with tarfile.open(shard) as tar:
        info = tar.getmember(member)
    data = bytearray(shard.read_bytes())
    data[info.offset_data + info.size - 2] ^= 1  # the low byte of the last uint16 code
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("verify", [True, False])
def test_a_shard_changed_in_place_is_skipped_only_when_checksums_are_verified(tmp_path, caplog, verify):
    make_shards(tmp_path / "train", shards=3, chunks=2, chunk_size=10)
    change_in_place(tmp_path / "train" / "000001.tar")
    module = module_for(tmp_path, verify_checksums=verify, with_keys=True)
    stream = module.stream("train", train=False)  # unshuffled, every sample once
    with caplog.at_level(logging.WARNING, logger="halton.data"):
        keys = keys_of(read_epoch(stream))
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    manifest = module.manifests["train"]
    if verify:  # none of its samples, all of the others' (the epoch keeps its length with repeats)
        assert stream.skipped_shards == 1 and len(keys) == manifest.samples
        assert set(keys) == {k for k in all_keys(manifest) if not k.startswith("s1")}
        assert len(messages) == 1 and "000001.tar: its SHA-256 differs from the manifest's" in messages[0], messages
    else:  # the change keeps the tar valid and the code in the codebook: read as it is, unnoticed
        assert stream.skipped_shards == 0 and messages == []
        assert sorted(keys) == sorted(all_keys(manifest))


def test_the_data_configs_have_the_checksum_option():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for data in ("imagenet_codes", "imagenet_codes_256_vq16", "digits_shards"):
            cfg = compose("train", overrides=[f"data={data}"])
            assert cfg.data.verify_checksums is False  # the default: see the README's "Loading"
            cfg = compose("train", overrides=[f"data={data}", "data.verify_checksums=true"])
            assert instantiate(cfg.data).verify_checksums is True


def test_the_tokenizer_is_built_only_when_asked_for(split_dir):
    calls = []

    def factory(path):
        calls.append(path)
        return "tokenizer"

    module = module_for(split_dir, tokenizer=factory, vq_release="vq_ds8_c2i.pt")
    with pytest.raises(ValueError, match=r"decoding these codes needs the tokenizer weights \(vq_ds8_c2i.pt\): "
                                         "pass vq_checkpoint=PATH"):
        module.tokenizer
    module.vq_checkpoint = "weights.pt"
    assert calls == [] and module.tokenizer == "tokenizer" and calls == ["weights.pt"]


# ------------------------------------------------------------------------------------------------ DDP
DDP_SCRIPT = textwrap.dedent('''
    import json, sys
    import lightning.pytorch as pl
    import torch
    from halton.data import CodeShardsDataModule

    root, out = sys.argv[1], sys.argv[2]

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen = {}

        def training_step(self, batch, batch_idx):
            self.seen.setdefault(self.current_epoch, []).extend(batch["keys"])
            return (self.weight * batch["codes"].float().mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

        def on_train_end(self):
            with open(f"{out}/rank{self.global_rank}.json", "w") as handle:
                json.dump({"world": self.trainer.world_size, "seen": self.seen,
                           "batches": self.trainer.num_training_batches}, handle)

    data = CodeShardsDataModule(root, batch_size=10, num_workers=2, val_split=None, codebook_size=64, grid=[4, 4],
                                num_classes=10, with_keys=True, pin_memory=False)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Recorder(), datamodule=data)
''')


def test_two_ddp_processes_read_disjoint_samples_and_together_all(tmp_path):
    manifest = make_shards(tmp_path / "train", shards=5, chunks=2, chunk_size=20)  # 200 samples
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    result = subprocess.run([sys.executable, str(tmp_path / "ddp.py"), str(tmp_path), str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["batches"] == ranks[1]["batches"] == 10  # 100 samples per rank, batches of 10
    for epoch in ("0", "1"):
        first, second = (set(r["seen"][epoch]) for r in ranks)
        assert len(ranks[0]["seen"][epoch]) == len(first) == 100  # each once within the rank's partition
        assert not first & second
        assert first | second == all_keys(manifest)
    assert ranks[0]["seen"]["0"] != ranks[0]["seen"]["1"]  # reshuffled between epochs


def test_files_opened_grow_with_shards_not_samples(tmp_path):
    opened = []

    def hook(event, args):
        if event == "open" and str(args[0]).endswith(".tar"):
            opened.append(str(args[0]))

    sys.addaudithook(hook)  # stays installed, but only records .tar opens
    counts = {}
    for samples_per_chunk in (10, 500):
        folder = tmp_path / str(samples_per_chunk)
        manifest = make_shards(folder, shards=3, chunks=2, chunk_size=samples_per_chunk)
        opened.clear()
        read_epoch(stream_for(folder, manifest, batch_size=10, with_keys=False))
        counts[samples_per_chunk] = len(opened)
    assert counts == {10: 3, 500: 3}


# ------------------------------------------------------------------------------------------------ through train.py
@pytest.mark.slow  # the default run resumes exactly end to end in test_resume.py; the shard loader's resume: above
def test_training_on_shards_resumes_mid_epoch_exactly(tmp_path):
    """train.py on the digits shards, stopped by SIGTERM after step 5 and resumed, ends bitwise where an
    uninterrupted run ends (the loader continues with the very next batch)."""
    (tmp_path / "sigterm_callback.py").write_text(SIGTERM_CALLBACK)
    common = ["experiment=digits", "data=digits_shards", "data.batch_size=8", "model.net.depth=1",
              "model.net.hidden_dim=32", "model.net.heads=2", "model.net.mlp_dim=64", "model.sample_grid=null",
              "trainer.max_steps=12", "trainer.enable_progress_bar=false", f"paths.runs_dir={tmp_path}",
              f"paths.data_dir={tmp_path / 'data'}"]
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}

    def train(name, *extra):
        return subprocess.run([sys.executable, "train.py", *common, f"name={name}", *extra], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    assert train("straight").returncode == 0
    stopped = train("resumed", "+callbacks.sigterm._target_=sigterm_callback.SigtermAfterStep",
                    "+callbacks.sigterm.step=5")
    assert stopped.returncode != 0 and "stopped at step 5" in stopped.stdout, stopped.stdout[-2000:]
    resumed = train("resumed")
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-3000:]
    straight, again = (torch.load(tmp_path / n / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
                       for n in ("straight", "resumed"))
    assert straight["global_step"] == again["global_step"] == 12
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key


def test_a_reader_whose_shards_are_all_bad_still_yields_its_batches(tmp_path, caplog):
    manifest = make_shards(tmp_path, shards=4, chunks=2, chunk_size=10)
    stream = stream_for(tmp_path, manifest, batch_size=5, world_size=2, rank=1, shuffle=False)
    for name in ("000002.tar", "000003.tar"):  # rank 1's half, unshuffled
        (tmp_path / name).write_bytes(b"broken")
    with caplog.at_level(logging.WARNING, logger="halton.data"):
        batches = read_epoch(stream)
    assert len(batches) == len(stream) == 8 and stream.skipped_shards == 2
    assert {chunk_of(k) for k in keys_of(batches)} == {"s0c0"}  # stand-ins from the first readable chunk


# ------------------------------------------------------------------------------------------------ digits shards
@pytest.fixture(scope="module")
def digits_shards(tmp_path_factory):
    """The digits shards, extracted once; tests damage copies of them."""
    root = tmp_path_factory.mktemp("digits")
    DigitsShardsDataModule(str(root)).prepare_data()
    return root


def test_the_first_extraction_of_the_digits_says_nothing(tmp_path, caplog):
    (tmp_path / "val").mkdir()  # an empty folder is a first extraction too
    with caplog.at_level(logging.INFO, logger="halton"):
        DigitsShardsDataModule(str(tmp_path)).prepare_data()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert Manifest.load(tmp_path / "train").check_files(tmp_path / "train", checksums=True) == []


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-700])


@pytest.mark.parametrize("damage,file,problem", [
    (truncate, "000001.tar", "000001.tar ("),  # "(N bytes, the manifest says M)"
    (change_in_place, "000001.tar", "000001.tar (its SHA-256 differs from the manifest's)"),
    (Path.unlink, "manifest.json", "manifest.json is missing"),
    (lambda path: path.write_text('{"format": "halton-code-shards", '), "manifest.json",
     "manifest.json is not valid JSON"),
    (lambda path: path.write_text('{"format": "halton-code-shards", "version": 1}'), "manifest.json",
     "manifest.json is missing or has a bad field"),
], ids=["truncated", "changed_in_place", "manifest_deleted", "manifest_not_json", "manifest_incomplete"])
def test_damaged_digits_shards_are_remade_with_one_warning_naming_the_file(digits_shards, tmp_path, caplog, damage,
                                                                             file, problem):
    root = tmp_path / "digits"
    shutil.copytree(digits_shards, root)
    damage(root / "train" / file)
    with caplog.at_level(logging.INFO, logger="halton"):
        DigitsShardsDataModule(str(root)).prepare_data()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and f"{root / 'train'}/{problem}" in warnings[0], warnings
    assert warnings[0].startswith(f"making the digits shards in {root / 'train'} again: ")
    # remade as they were (extraction is reproducible), and they load
    made = Manifest.load(root / "train")
    assert made.check_files(root / "train", checksums=True) == []
    assert [s.sha256 for s in made.shards] == [s.sha256 for s in Manifest.load(digits_shards / "train").shards]
    caplog.clear()
    module = DigitsShardsDataModule(str(root), batch_size=64, verify_checksums=True)
    module.prepare_data()  # current now: nothing to say
    batches = list(module.train_dataloader())
    assert len(batches) == 1617 // 64 and module.skipped_shards == 0
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_digits_shards_of_another_split_are_remade_saying_so(digits_shards, tmp_path, caplog):
    root = tmp_path / "digits"
    shutil.copytree(digits_shards, root)
    with caplog.at_level(logging.WARNING, logger="halton"):
        DigitsShardsDataModule(str(root), seed=1).prepare_data()
    warnings = [r.getMessage() for r in caplog.records]
    assert [f"{root / split / 'manifest.json'} describes shards made from another split or layout" in message
            for split, message in zip(("train", "val"), warnings)] == [True, True], warnings
