"""The whole pipeline on synthetic data, through the real entry points, with what each stage measured.

    python benchmarks/gpu_pipeline.py --work DIR --out OUTDIR [--dry-run] [--steps N] [--stages a,b] [--budget S]

Stages (each a subprocess of ``sys.executable``, its output in ``OUTDIR/<stage>.log``):

- ``fixtures``: synthetic code shards (train, val) written with the project's shard writer and manifest, a
  random-weight LlamaGen VQ-8 checkpoint in LlamaGen's file format, a random-weight Inception-v3 in torch-fidelity's
  format, and a folder of reference PNGs (synthetic codes decoded by that VQ). Nothing is downloaded.
- ``train_a``: ``train.py experiment=c2i_xl`` uninterrupted: bf16 on the GPU (``trainer=gpu``), compiled blocks, EMA
  0.999, only ``last.ckpt``, CSV logger; images/s, MFU and peak memory from its ``metrics.csv`` (the
  ``perf/*`` columns of the Throughput callback) over the intervals after the first.
- ``resume``: run B, SIGTERM once it passed a third of the steps (PreemptionCheckpoint saves last.ckpt and stops), run C
  the same command (resumes from last.ckpt) to the end; C against A: final step, learning rate, EMA and live weights.
- ``sample``, ``evaluate``: ``sample.py`` and ``evaluate.py`` (Inception FID against the reference folder) on A.
- ``digits``: ``train.py experiment=digits`` then ``sample.py experiment=digits`` (the demo).

``--dry-run``: the same commands at tiny sizes on the CPU (8x8 tokens, small codebook and classes, the tiny model,
fp32, no compilation). Writes ``OUTDIR/pipeline.json`` after every stage; exit status 0 when every stage passed.
On a GPU with a hard time limit give ``--budget`` (each stage's limit is cut to what is left, so the results of the
stages that ran are written): ``python3 benchmarks/gpu_pipeline.py --work /tmp/gpu_pipeline --out $OUT --budget 480``.
Disk: three xl checkpoints of ~10.5 GiB (A, B's at SIGTERM, C) at the peak.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
STAGES = ("fixtures", "train_a", "resume", "sample", "evaluate", "digits")
# The sizes of the real run (one GPU) and of the dry run (the CPU).
SIZES = {
    "gpu": dict(grid=32, codebook=16384, classes=1000, image_size=256, vq_ch=128, vq_z=256, steps=40, batch=32,
                workers=4, train_batches=64, val_batches=4, chunk=128, shards=4, ref_images=300, eval_images=1000,
                eval_batch=125, sample_classes=[0, 1, 2, 3], per_class=4, digits_steps=300, log_every=10, refresh=5),
    "dry": dict(grid=8, codebook=64, classes=10, image_size=64, vq_ch=32, vq_z=32, steps=6, batch=8,
                workers=2, train_batches=64, val_batches=4, chunk=32, shards=4, ref_images=40, eval_images=20,
                eval_batch=20, sample_classes=[0, 1], per_class=2, digits_steps=10, log_every=2, refresh=1),
}
TIMEOUTS = {"fixtures": 180, "train_a": 300, "resume": 480, "sample": 180, "evaluate": 240, "digits": 240}
PROGRESS = re.compile(rb"training:[^|]*\|[^|]*\|\s*(\d+)/(\d+)")  # StepProgressBar: "training:  50%|##   | 3/6"
ERROR_LINE = re.compile(r"(error|Error|Exception|Traceback)")
NOTE_LINE = re.compile(r"(resuming from|SIGTERM: saved|stopped at step|trained to step|wrote |results: |"
                       r"reads the requested digit|network evaluations per image)")


class Pipeline:
    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.size = dict(SIZES["dry" if self.dry else "gpu"])
        if args.steps:
            self.size["steps"] = args.steps
        self.work, self.out = Path(args.work).absolute(), Path(args.out).absolute()
        self.shards, self.vq, self.inception, self.reference = (self.work / "shards", self.work / "vq_ds8_random.pt",
                                                                  self.work / "inception_random.pth",
                                                                  self.work / "reference")
        # Local single-GPU runs even inside a SLURM allocation (no SLURMEnvironment, no requeue); B and C reuse A's
        # compiled kernels from the inductor cache (one that the caller set, shared with its other benchmarks).
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        self.env.update(PYTHONUNBUFFERED="1", HALTON_DEBUG="1")
        self.env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.work / "inductor_cache"))
        self.deadline = time.monotonic() + args.budget if args.budget else None
        self.active: subprocess.Popen | None = None  # the running command (its own process group)
        self.results: dict = {"dry_run": self.dry, "sizes": self.size, "machine": machine(), "stages": {}}

    # ------------------------------------------------------------------ commands
    def run_dir(self, name: str, fresh: bool = False) -> Path:
        """A run's folder; ``fresh``: removed first (a run left by an earlier pipeline would be resumed)."""
        folder = self.work / "runs" / name
        if fresh and folder.is_dir():
            shutil.rmtree(folder)
        return folder

    def common(self, name: str, experiment: str = "c2i_xl") -> list[str]:
        """The arguments every entry point gets for one run: experiment, folders and, for the class model, the
        shards' facts (and, in the dry run, the tiny model)."""
        args = [f"experiment={experiment}", f"paths.root_dir={self.work}", f"name={name}"]
        if experiment != "c2i_xl":
            return args
        s = self.size
        args += [f"data.root={self.shards}", f"data.batch_size={s['batch']}", f"data.num_workers={s['workers']}"]
        if self.dry:
            args += [f"data.grid=[{s['grid']},{s['grid']}]", f"data.codebook_size={s['codebook']}",
                     f"data.num_classes={s['classes']}", f"data.image_size={s['image_size']}",
                     f"data.tokenizer.ch={s['vq_ch']}", f"data.tokenizer.z_channels={s['vq_z']}",
                     f"data.tokenizer.codebook_size={s['codebook']}", "model.net.size=tiny"]
        return args

    def train_xl(self, name: str) -> list[str]:
        s = self.size
        args = ["train.py", *self.common(name), f"trainer.max_steps={s['steps']}",
                "callbacks.ema={_target_:halton.training.EMA,decay:0.999}",      # c2i_xl turns it off
                "callbacks.model_checkpoint.every_n_train_steps=100000000",     # last.ckpt only
                f"trainer.log_every_n_steps={s['log_every']}", f"callbacks.progress_bar.refresh_rate={s['refresh']}",
                "trainer.limit_val_batches=0"]  # no validation: it would compile the blocks' inference graph too
        if self.dry:
            return args + ["trainer=cpu", "trainer.precision=32-true", "model.compile=false"]
        return args + ["trainer=gpu", "trainer.devices=1", "model.compile=true"]

    # ------------------------------------------------------------------ running
    def run(self, stage: str, argv: list[str], watch=None) -> dict:
        """Run ``sys.executable argv`` in the repository, its output appended to OUTDIR/<stage>.log; returns the
        exit status, wall time, the training steps seen in the progress bar (with their times) and error lines.
        ``watch(step, process)`` is called at each step seen."""
        timeout = self.args.timeout.get(stage, TIMEOUTS[stage])
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout < 10:
                raise TimeoutError(f"not started: {timeout:.0f} s of the --budget left")
        command = [sys.executable, *argv]
        shown = shlex.join(command)
        print(f"[{stage}] {shown}", flush=True)
        found = {"progress": [], "notes": [], "errors": [], "output_tail": []}
        with open(self.out / f"{stage}.log", "ab") as log:
            log.write(f"\n$ {shown}\n".encode())
            log.flush()
            start = time.monotonic()
            process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            self.active = process

            def read():
                pending = b""
                while chunk := process.stdout.read1(1 << 16):
                    log.write(chunk)
                    log.flush()
                    *lines, pending = re.split(rb"[\r\n]", pending + chunk)
                    for line in lines:
                        seen(line)
                        note(line)
                    seen(pending)  # the bar's line ends at its next refresh: read its step now, not then
                note(pending)

            def seen(line: bytes):
                match = PROGRESS.search(line)
                progress = found["progress"]
                if match and (not progress or int(match[1]) > progress[-1][1]):
                    progress.append((round(time.monotonic() - start, 3), int(match[1])))
                    if watch:
                        watch(int(match[1]), process)

            def note(line: bytes):
                text = line.decode(errors="replace").strip()
                for key, pattern in (("notes", NOTE_LINE), ("errors", ERROR_LINE), ("output_tail", re.compile("."))):
                    if pattern.search(text):
                        found[key].append(text)
                del found["errors"][:-5], found["output_tail"][:-3]

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            timed_out = False
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(process.pid, signal.SIGKILL)  # the group this call started (loader, compile workers)
                code = process.wait()
            wall = time.monotonic() - start
            reader.join(30)
        return {"command": shown, "returncode": code, "wall_s": round(wall, 1), "timed_out": timed_out, **found}

    # ------------------------------------------------------------------ stages
    def stage_fixtures(self) -> dict:
        argv = [str(Path(__file__).resolve()), "--work", str(self.work), "--out", str(self.out), "--make-fixtures"]
        result = self.run("fixtures", argv + ["--dry-run"] * self.dry)
        facts = self.work / "fixtures.json"
        result["ok"] = result["returncode"] == 0 and facts.is_file()
        if facts.is_file():
            result.update(json.loads(facts.read_text()))
        return result

    def stage_train_a(self) -> dict:
        self.run_dir("gpu_xl_a", fresh=True)
        result = self.run("train_a", self.train_xl("gpu_xl_a"))
        result.update(self.trained("gpu_xl_a"))
        result["ok"] = result["returncode"] == 0 and result.get("final_step") == self.size["steps"]
        return result

    def stage_resume(self) -> dict:
        steps, target = self.size["steps"], max(1, self.size["steps"] // 3)
        sent = {}

        def terminate(step, process):
            if not sent and step >= target:
                process.send_signal(signal.SIGTERM)  # the trainer only, as SLURM would (not its loader workers)
                sent.update(step=step)

        self.run_dir("gpu_xl_b", fresh=True)
        b = self.run("resume", self.train_xl("gpu_xl_b"), watch=terminate)
        last = self.run_dir("gpu_xl_b") / "checkpoints" / "last.ckpt"
        saved = load(last)["global_step"] if last.is_file() else None
        kept = self.work / "gpu_xl_b_at_sigterm.ckpt"  # C renames its last.ckpt over B's: keep B's by a link
        kept.unlink(missing_ok=True)
        if last.is_file():
            os.link(last, kept)
        c = self.run("resume", self.train_xl("gpu_xl_b"))
        c.update(self.trained("gpu_xl_b"))
        result = {"b": b, "c": c, "sigterm_sent_at_step": sent.get("step"), "saved_step": saved,
                  "c_first_step": c["progress"][0][1] if c["progress"] else None,
                  "b_returncode": b["returncode"], "c_resumed": any("resuming from" in t for t in c["notes"]),
                  "wall_s": round(b["wall_s"] + c["wall_s"], 1)}
        a_last = self.run_dir("gpu_xl_a") / "checkpoints" / "last.ckpt"
        if a_last.is_file() and c["returncode"] == 0:
            result.update(compare(a_last, self.run_dir("gpu_xl_b") / "checkpoints" / "last.ckpt",
                                  kept if kept.is_file() else None))
            a_lr = last_value(read_metrics(self.run_dir("gpu_xl_a")), "lr-")
            result["metrics_lr_a"], result["metrics_lr_c"] = a_lr, last_value(c["metrics"], "lr-")
        c.pop("metrics", None)
        kept.unlink(missing_ok=True)  # the disk holds three xl checkpoints at most
        result["ok"] = bool(sent and saved is not None and saved < steps and c["returncode"] == 0
                            and result.get("final_step_c") == result.get("final_step_a") == steps
                            and result.get("lr_equal") and math.isfinite(result.get("ema_max_abs_diff", math.nan))
                            and result.get("ema_diff_over_change", 0.0) < 1.0)  # C is closer to A than B was
        return result

    def stage_sample(self) -> dict:
        s = self.size
        self.require(self.a_checkpoint())
        classes = ",".join(map(str, s["sample_classes"]))
        result = self.run("sample", ["sample.py", *self.common("gpu_xl_a"), f"checkpoint={self.a_checkpoint()}",
                                     f"vq_checkpoint={self.vq}", f"classes=[{classes}]",
                                     f"per_class={s['per_class']}", "steps=16", "scheduler=halton"])
        grids = sorted((self.run_dir("gpu_xl_a") / "samples").glob("*.png"))
        result.update(grid=str(grids[-1]) if grids else None, images=len(s["sample_classes"]) * s["per_class"])
        result["images_per_s_with_startup"] = round(result["images"] / result["wall_s"], 2)
        result["ok"] = result["returncode"] == 0 and bool(grids)
        return result

    def stage_evaluate(self) -> dict:
        s = self.size
        self.require(self.a_checkpoint(), self.vq, self.inception, self.reference)
        result = self.run("evaluate", ["evaluate.py", *self.common("gpu_xl_a"), f"checkpoint={self.a_checkpoint()}",
                                       f"vq_checkpoint={self.vq}", f"num_images={s['eval_images']}",
                                       f"batch_size={s['eval_batch']}", "extractor=inception",
                                       f"inception_weights={self.inception}", "reference.kind=folder",
                                       f"reference.path={self.reference}", "scheduler=halton", "steps=16",
                                       "force=true"])
        path = self.run_dir("gpu_xl_a") / "eval" / "results.csv"
        rows = list(csv.DictReader(path.open())) if path.is_file() else []
        keys = ("fid", "is", "precision", "recall", "seconds", "images_per_s", "num_images", "nfe_per_image")
        result.update(results_csv=str(path), rows=len(rows), row={k: rows[-1].get(k) for k in keys} if rows else None)
        result["ok"] = result["returncode"] == 0 and bool(rows)
        return result

    def stage_digits(self) -> dict:
        trainer = ["trainer=cpu"] if self.dry else ["trainer=gpu", "trainer.devices=1"]
        self.run_dir("digits_demo", fresh=True)
        train = self.run("digits", ["train.py", *self.common("digits_demo", "digits"), *trainer,
                                    f"trainer.max_steps={self.size['digits_steps']}"])
        train.update(self.trained("digits_demo"))
        sample = self.run("digits", ["sample.py", *self.common("digits_demo", "digits")])
        match = re.search(r"reads the requested digit in ([\d.]+)% of (\d+) samples", "\n".join(sample["notes"]))
        loss = last_value(train.pop("metrics", []), "train/loss")
        return {"train": train, "sample": sample, "wall_s": round(train["wall_s"] + sample["wall_s"], 1),
                "final_loss": loss, "recognised_pct": float(match[1]) if match else None,
                "ok": train["returncode"] == 0 and sample["returncode"] == 0
                and train.get("final_step") == self.size["digits_steps"]}

    # ------------------------------------------------------------------ readings
    @staticmethod
    def require(*paths: Path) -> None:
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"not started: {', '.join(missing)} missing (an earlier stage failed)")

    def a_checkpoint(self) -> Path:
        return self.run_dir("gpu_xl_a") / "checkpoints" / "last.ckpt"

    def trained(self, name: str) -> dict:
        """What a training run left: its final step, its logged metrics and its throughput."""
        last = self.run_dir(name) / "checkpoints" / "last.ckpt"
        found = {"checkpoint": str(last), "final_step": None, "metrics": read_metrics(self.run_dir(name))}
        if last.is_file():
            found["checkpoint_gib"] = round(last.stat().st_size / 2 ** 30, 2)
            state = load(last)
            found["final_step"] = state["global_step"]
            found["has_ema"] = "current_model_state" in state
            del state
        found["throughput"] = throughput(found["metrics"])
        return found

    # ------------------------------------------------------------------ driver
    def stop(self, signum, frame):
        """SIGTERM / SIGINT to this script: end the running command's process group too, then exit."""
        if self.active is not None and self.active.poll() is None:
            os.killpg(self.active.pid, signal.SIGKILL)
        sys.exit(128 + signum)

    def main(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.stop)
        stages = self.args.stages or STAGES
        for stage in stages:
            start = time.monotonic()
            try:
                result = getattr(self, f"stage_{stage}")()
            except Exception as error:  # noqa: BLE001  recorded; the next stages still run where they can
                result = {"ok": False, "exception": f"{type(error).__name__}: {error}",
                          "traceback": traceback.format_exc()}
            result["stage_wall_s"] = round(time.monotonic() - start, 1)  # wall_s: the command(s) alone
            result.pop("metrics", None)
            self.results["stages"][stage] = result
            self.results["total_wall_s"] = round(sum(r["stage_wall_s"] for r in self.results["stages"].values()), 1)
            (self.out / "pipeline.json").write_text(json.dumps(self.results, indent=1, default=str))
            print(f"[{stage}] {'ok' if result['ok'] else 'FAILED'} in {result['stage_wall_s']} s", flush=True)
        print("\n| stage | result | wall s | numbers |\n| --- | --- | --- | --- |")
        for stage, result in self.results["stages"].items():
            print(f"| {stage} | {'ok' if result['ok'] else 'failed'} | {result['stage_wall_s']} | "
                  f"{summary(stage, result)} |")
        return 0 if all(r["ok"] for r in self.results["stages"].values()) else 1


# ------------------------------------------------------------------ fixtures (run in their own process)
def make_fixtures(pipeline: Pipeline) -> None:
    import numpy as np
    import torch
    from hydra.utils import instantiate
    from PIL import Image

    from halton.cli import composed_runs
    from halton.data.format.chunks import Chunk, strings, write_shard
    from halton.data.format.manifest import Manifest
    from halton.data.format.tokenizer_spec import tokenizer_spec
    from halton.tokenizers import LlamaGenVQ

    s, work = pipeline.size, pipeline.work
    data = composed_runs(pipeline.train_xl("fixtures")[1:], "train")[0].data  # the data config train.py reads
    spec = tokenizer_spec(instantiate(data.tokenizer))  # the tokenizer identity the loader checks
    rng = np.random.default_rng(0)
    first_codes = None
    for split, batches in (("train", s["train_batches"]), ("val", s["val_batches"])):
        folder = pipeline.shards / split
        folder.mkdir(parents=True, exist_ok=True)
        per_shard = batches * s["batch"] // s["shards"]
        records = []
        for shard in range(s["shards"]):
            codes = rng.integers(0, s["codebook"], (per_shard, s["grid"], s["grid"]), dtype=np.uint16)
            labels = rng.integers(0, s["classes"], per_shard).astype(np.int32)
            keys = strings(f"{split}/{shard}/{i}" for i in range(per_shard))
            chunks = [Chunk(codes[i:i + s["chunk"]], labels[i:i + s["chunk"]], keys[i:i + s["chunk"]],
                            codes[i:i + s["chunk"], :, ::-1].copy()) for i in range(0, per_shard, s["chunk"])]
            records.append(write_shard(folder / f"{shard:06d}.tar", chunks, source=f"synthetic {split} {shard}"))
            first_codes = codes if first_codes is None else first_codes
        Manifest(grid=[s["grid"]] * 2, codebook_size=s["codebook"], num_classes=s["classes"], chunk_size=s["chunk"],
                 flipped=True, captions=False, tokenizer=spec, image_size=s["image_size"],
                 source={"kind": "synthetic", "seed": 0}, shards=records).save(folder)

    torch.manual_seed(0)
    vq = LlamaGenVQ(ch=s["vq_ch"], ch_mult=(1, 2, 2, 4), z_channels=s["vq_z"], codebook_size=s["codebook"])
    torch.save({"model": vq.state_dict()}, pipeline.vq)  # LlamaGen's layout: {"model": state dict}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vq = vq.to(device)
    pipeline.reference.mkdir(exist_ok=True)
    codes = torch.from_numpy(first_codes[:s["ref_images"]].astype(np.int64))
    for start in range(0, len(codes), 50):
        images = vq.decode(codes[start:start + 50].to(device))
        pixels = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for i, image in enumerate(pixels):
            Image.fromarray(image).save(pipeline.reference / f"{start + i:05d}.png")
    torch.save(random_inception_state(), pipeline.inception)
    facts = {"shards": str(pipeline.shards), "train_samples": s["train_batches"] * s["batch"],
             "vq_checkpoint": str(pipeline.vq), "inception_weights": str(pipeline.inception),
             "reference_images": len(codes), "tokenizer": spec}
    (work / "fixtures.json").write_text(json.dumps(facts, indent=1))
    print(json.dumps(facts))


def random_inception_state() -> dict:
    """torch-fidelity's Inception-v3 (``inception-v3-compat``) with random weights, as the state dict its weights
    file holds: the module is built with its weight loading made a no-op (no download), then He-initialised so
    that activations keep their scale through the 90-odd layers."""
    import torch
    from torch_fidelity import feature_extractor_inceptionv3 as inception

    cls, original = inception.FeatureExtractorInceptionV3, inception.load_state_dict_from_url
    inception.load_state_dict_from_url = lambda *args, **kwargs: {}
    cls.load_state_dict = lambda self, *args, **kwargs: None  # no weights loaded while the skeleton is built
    try:
        net = cls("inception-v3-compat", ["2048", "logits_unbiased"])
    finally:
        del cls.load_state_dict
        inception.load_state_dict_from_url = original
    torch.manual_seed(0)
    for module in net.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    return {k: v.float() if v.is_floating_point() else v for k, v in net.state_dict().items()}


# ------------------------------------------------------------------ readings
def machine() -> dict:
    """Versions and the GPU (nvidia-smi), without importing torch."""
    from importlib.metadata import version

    found = {"python": sys.version.split()[0], "torch": version("torch"), "lightning": version("lightning"),
             "cpus": os.cpu_count()}
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        found["gpu"] = subprocess.run(query, capture_output=True, text=True).stdout.strip()
    return found


def load(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of every CSV logger version of a run (a resumed run writes a new version), in order."""
    rows = []
    versions = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:]))
    for path in versions:
        for row in csv.DictReader(path.open()):
            rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def last_value(rows: list[dict], prefix: str) -> float | None:
    values = [(row["step"], v) for row in rows for k, v in row.items() if k.startswith(prefix) and "step" in row]
    return max(values)[1] if values else None


def throughput(rows: list[dict]) -> dict:
    """images/s, MFU and peak memory that the run logged (the training config's Throughput callback: ``perf/*``)
    after its first logged interval, which holds the compilation."""
    logged = {name: [row[f"perf/{name}"] for row in rows if f"perf/{name}" in row][1:]
              for name in ("images_per_s", "mfu", "peak_memory_gib")}
    return {"source": "metrics.csv perf/*", "intervals": len(logged["images_per_s"]),
            "images_per_s": mean(logged["images_per_s"]), "mfu": mean(logged["mfu"]),
            "peak_memory_gib": max(logged["peak_memory_gib"], default=None)}


def mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def compare(a_path: Path, c_path: Path, b_path: Path | None) -> dict:
    """Run C (stopped and resumed) against run A (uninterrupted): steps, learning rate, and the EMA and live weights,
    next to how much the weights changed from B's SIGTERM checkpoint to A's end."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # 3 x 2 x 2.8 GB for xl: the GPU is quicker
    a, c = load(a_path), load(c_path)
    b = load(b_path) if b_path else None
    found = {"final_step_a": a["global_step"], "final_step_c": c["global_step"],
             "lr_a": a["lr_schedulers"][0]["_last_lr"], "lr_c": c["lr_schedulers"][0]["_last_lr"]}
    found["lr_equal"] = found["lr_a"] == found["lr_c"]
    for what, key in (("ema", "state_dict"), ("live", "current_model_state")):
        if key not in a or key not in c:
            continue
        stats = {"max": 0.0, "diff": 0.0, "norm": 0.0, "change": 0.0, "change_max": 0.0}
        for name, ta in a[key].items():
            if not ta.is_floating_point():
                continue
            ta = ta.to(device, torch.float64)
            d = ta - c[key][name].to(device, torch.float64)
            stats["max"] = max(stats["max"], d.abs().max().item())
            stats["diff"] += d.pow(2).sum().item()
            stats["norm"] += ta.pow(2).sum().item()
            if b is not None:
                change = ta - b[key][name].to(device, torch.float64)
                stats["change"] += change.pow(2).sum().item()
                stats["change_max"] = max(stats["change_max"], change.abs().max().item())
        found[f"{what}_max_abs_diff"] = stats["max"]
        found[f"{what}_rel_norm_diff"] = math.sqrt(stats["diff"] / stats["norm"])
        if b is not None:  # what training changed from the SIGTERM step to the end: the scale for the difference
            found[f"{what}_change_since_sigterm_max_abs"] = stats["change_max"]
            found[f"{what}_change_since_sigterm_rel_norm"] = math.sqrt(stats["change"] / stats["norm"])
            found[f"{what}_diff_over_change"] = (math.sqrt(stats["diff"] / stats["change"]) if stats["change"]
                                                 else 0.0 if stats["diff"] == 0 else math.inf)
    return found


def summary(stage: str, r: dict) -> str:
    if "exception" in r:
        return r["exception"][:120]
    if stage == "fixtures":
        return f"{r.get('train_samples')} train samples, {r.get('reference_images')} reference PNGs"
    if stage == "train_a":
        t = r.get("throughput", {})
        return (f"step {r.get('final_step')}, command {r.get('wall_s')} s, {t.get('images_per_s')} images/s, MFU "
                f"{t.get('mfu')}, peak {t.get('peak_memory_gib')} GiB ({t.get('source')}), ckpt "
                f"{r.get('checkpoint_gib')} GiB")
    if stage == "resume":
        return (f"SIGTERM at step {r.get('sigterm_sent_at_step')}, saved {r.get('saved_step')}, C ended at "
                f"{r.get('final_step_c')}, lr equal {r.get('lr_equal')}, EMA max abs diff "
                f"{fmt(r.get('ema_max_abs_diff'))}, rel {fmt(r.get('ema_rel_norm_diff'))} (change since SIGTERM: rel "
                f"{fmt(r.get('ema_change_since_sigterm_rel_norm'))})")
    if stage == "sample":
        return f"{r.get('images')} images, grid {Path(r['grid']).name if r.get('grid') else None}"
    if stage == "evaluate":
        row = r.get("row") or {}
        return f"{row.get('num_images')} images, {row.get('images_per_s')} images/s, FID {row.get('fid')}"
    if stage == "digits":
        return f"final loss {fmt(r.get('final_loss'))}, digit read {r.get('recognised_pct')}%"
    return ""


def fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="fixtures and runs go here")
    parser.add_argument("--out", required=True, help="logs and pipeline.json go here")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--steps", type=int, help="training steps of runs A and B/C (default 40; dry run 6)")
    parser.add_argument("--stages", type=lambda s: [x for x in s.split(",") if x], help=f"of {','.join(STAGES)}")
    parser.add_argument("--timeout", action="append", default=[], metavar="STAGE=S",
                        help=f"a stage's time limit in seconds (defaults {TIMEOUTS})")
    parser.add_argument("--budget", type=float,
                        help="seconds for all stages: each stage's limit is cut to what is left")
    parser.add_argument("--make-fixtures", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.timeout = {k: float(v) for k, _, v in (t.partition("=") for t in args.timeout)}
    unknown = sorted(set(args.stages or []) - set(STAGES)) + sorted(set(args.timeout) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage {unknown[0]}; allowed: {', '.join(STAGES)}")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    pipeline = Pipeline(arguments)
    if arguments.make_fixtures:
        sys.path.insert(0, str(REPO))
        make_fixtures(pipeline)
    else:
        sys.exit(pipeline.main())
