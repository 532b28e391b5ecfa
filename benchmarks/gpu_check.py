"""The main path on one GPU in one command: the CUDA tests, the real ``train.py`` / ``sample.py`` / ``evaluate.py``
on the XL model, training throughput and MFU with the speed levers on and off and a profile, the training step
beside the reference trainer's, and the samplers beside the reference's. Logs and a short table go under OUT.

    OUT=/tmp/gpu_check python benchmarks/gpu_check.py                   # on one GPU, at most --budget seconds
    OUT=/tmp/gpu_check python benchmarks/gpu_check.py --dry-run         # anywhere: every stage at tiny sizes

Stages run one after the other in the order below (the timed ones never share the GPU), each under a time limit
cut to what is left of ``--budget``, so the most important ones run first and a slow or failing stage costs only
itself. ``REFERENCE`` (default ``.reference/Halton-MaskGIT``): a checkout of github valeoai/Halton-MaskGIT for the
side-by-side stages (skipped without one; nothing of it is in this repository).

What goes under OUT (three files, so that a lent GPU machine can return them): ``table.md`` (also printed last),
``summary.json`` (every stage's status, seconds and numbers) and ``logs.tar.gz`` (every stage's log, the
benchmarks' JSON files, the profile table, the runs' metrics and sample grids), rewritten after each stage so a run
cut short keeps what it measured. Runs, checkpoints and the compiled kernels stay in ``GPU_CHECK_WORK`` (default:
the temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def stages(dry: bool, work: Path, reference: Path, peak: str,
           train_steps: int | None = None) -> list[tuple[str, int, dict[str, list[str]]]]:
    """(name, time limit in seconds on the GPU, {log name: command}) in order of importance; the commands of one
    stage run at the same time (only stages whose time is not measured have several)."""
    bench = [PY, "benchmarks/train_step.py"]
    if dry:
        tiny = ["--device", "cpu", "--precision", "fp32", "--batch", "4", "--steps", "2", "--warmup", "1"]
        xl, xl16, t2i = (["--preset", "digits", *tiny],) * 3
        kernels = ["--device", "cpu", "--batch", "2", "--width", "64", "--heads", "4", "--hidden", "128",
                   "--classes", "128", "--positions", "64", "--tokens", "17", "--params", "1e5", "--repeats", "2"]
        ref = ["--size", "tiny", "--grid", "8", "--batch", "4", "--steps", "2", "--warmup", "1", "--device", "cpu",
               "--precision", "fp32"]
        sampling = ["--size", "tiny", "--grid", "4", "--codebook", "64", "--classes", "10", "--batch", "2", "--steps",
                    "4", "--repeats", "1", "--device", "cpu"]
        variants = "base,compiled_update,batch64_update"  # the others differ from base only when compiled
    else:
        common = ["--batch", "32", "--compile", "--peak-tflops", peak, "--steps", "15", "--warmup", "5"]
        xl, xl16, t2i = ["--preset", "xl", *common], ["--preset", "xl16", *common], ["--preset", "t2i", *common]
        kernels = []
        ref = ["--size", "xlarge", "--grid", "16", "--batch", "32", "--steps", "15", "--warmup", "5", "--compile",
               "--precision", "bf16", "--peak-tflops", peak]
        sampling = ["--size", "large", "--grid", "16", "--codebook", "16384", "--batch", "32", "--steps", "32",
                    "--cfg", "2", "--bf16", "--repeats", "2", "--compile", "--compile-mode", "default"]
        # measured before (docs/performance.md): eager_loss, fp8, batch64
        variants = "base,compiled_update,coordinate_descent,cudagraphs,batch64_update,whole_graph"
    pipeline = [PY, "benchmarks/gpu_pipeline.py", "--work", str(work / "pipeline_work"), *(["--dry-run"] * dry),
                *(["--steps", str(train_steps)] if train_steps else [])]

    def pipeline_stages(out: str, names: str) -> list[str]:
        return [*pipeline, "--out", str(work / out), "--stages", names]

    listed = [
        ("train_xl", 150, {"train_xl": pipeline_stages("pipeline_train", "fixtures,train_a")}),
        ("resume", 200, {"resume": pipeline_stages("pipeline_resume", "resume")}),
        ("mfu_xl", 260, {"mfu_xl": [*bench, *xl, "--loops", "bare,lightning", "--variants", variants, "--profile",
                                    "5", "--json", str(work / "mfu_xl.json")]}),
        ("ours_xl16", 80, {"ours_xl16": [*bench, *xl16, "--loops", "bare", "--variants", "base,compiled_update",
                                         "--json", str(work / "ours_xl16.json")]}),
        ("mfu_t2i", 90, {"mfu_t2i": [*bench, *t2i, "--loops", "bare", "--variants", "base,compiled_update",
                                     "--json", str(work / "mfu_t2i.json")]}),
        ("sampling_large", 120, {"sampling_large": [
            PY, "benchmarks/sampling.py", *sampling, "--schedulers", "halton,confidence", "--reference",
            str(reference)]} if reference.is_dir() else {}),
        # untimed, so side by side on the GPU: sampling and evaluation on run A's checkpoint, the demo, the tests
        ("sample_evaluate_tests", 150, {
            "sample_evaluate_digits": pipeline_stages("pipeline_sample", "sample,evaluate,digits"),
            "test_cuda": [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]}),
        ("reference_xl16", 150, {"reference_xl16": [PY, "benchmarks/reference_train.py", "--reference",
                                                    str(reference), *ref]} if reference.is_dir() else {}),
        ("kernels", 60, {"kernels": [PY, "benchmarks/step_pieces.py", *kernels, "--json", str(work / "kernels.json")]}),
    ]
    return listed


def run_stage(commands: dict[str, list[str]], limit: float, work: Path) -> dict:
    """Run the stage's commands at the same time, each with its log, all stopped at ``limit`` seconds."""
    if not commands:
        return {"status": "skipped (no reference checkout: set REFERENCE)", "seconds": 0}
    if limit <= 5:
        return {"status": "skipped (out of time)", "seconds": 0}
    start = time.time()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    running = {}
    for name, command in commands.items():
        handle = open(work / f"{name}.log", "w")
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        running[name] = (subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True), handle)
    codes = {}
    for name, (process, handle) in running.items():
        try:
            codes[name] = process.wait(timeout=max(limit - (time.time() - start), 1))
        except subprocess.TimeoutExpired:  # SIGTERM first: the pipeline then stops the entry point it runs
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            codes[name] = "timeout"
        handle.close()
    failed = {name: code for name, code in codes.items() if code != 0}
    status = "ok" if not failed else "; ".join(
        f"{name} timed out ({limit:.0f} s)" if code == "timeout" else f"{name} failed (exit {code})"
        for name, code in failed.items())
    tails = {name: (work / f"{name}.log").read_text()[-1500:] for name in failed}
    return {"status": status, "seconds": round(time.time() - start, 1), "tails": tails}


def result_lines(log: Path) -> list[str]:
    """The benchmark result lines of a stage's log (``name: ... images/s ...`` and ratios)."""
    if not log.is_file():
        return []
    keep = ("ms/step", "Lightning / bare", "speed-up", " passed", "max difference", "reference MFU", " ms",
            "x floor", "x      ", "| ", "TFLOP")
    lines = [line.strip() for line in log.read_text().splitlines()
             if any(k in line for k in keep) and len(line) < 300 and "Warning" not in line
             and "`" not in line and "---" not in line and not line.startswith("$")]
    return lines[-16:]


def table(summary: dict) -> str:
    lines = [f"# GPU check: {summary['device']} ({'dry run' if summary['dry_run'] else 'GPU run'}), "
             f"{summary['seconds']:.0f} s", "", "| stage | status | seconds | results |", "| --- | --- | --- | --- |"]
    for name, stage in summary["stages"].items():
        results = "<br>".join(stage.get("results", [])).replace("|", "/")
        lines.append(f"| {name} | {stage['status']} | {stage['seconds']} | {results} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: every stage in seconds")
    parser.add_argument("--budget", type=float, default=540, help="seconds for all stages together")
    parser.add_argument("--only", default=None, help="comma-separated stages to run (default: all)")
    parser.add_argument("--train-steps", type=int, default=None, help="steps of the train.py runs (pipeline's default)")
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", "runs/gpu_check")).resolve()
    # runs, checkpoints (~10 GiB each for the XL model) and compiled kernels stay outside OUT
    work = Path(os.environ.get("GPU_CHECK_WORK", Path(tempfile.gettempdir()) / "halton_gpu_check")).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    reference = Path(os.environ.get("REFERENCE", ROOT / ".reference" / "Halton-MaskGIT")).resolve()
    start = time.time()
    sys.path.insert(0, str(ROOT))
    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.cuda.get_device_name() if cuda else "CPU"
    summary = {"device": device, "dry_run": args.dry_run, "torch": torch.__version__, "stages": {}, "seconds": 0}
    if cuda:
        from halton.training.throughput import measured_peak_tflops

        summary["peak_tflops"] = round(measured_peak_tflops("cuda"), 1)
        summary["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True, text=True).stdout.strip()
        print(f"{summary['nvidia_smi']}; torch {torch.__version__}; bf16 matmul peak {summary['peak_tflops']} "
              f"TFLOP/s (measured, 8192^3)", flush=True)
    wanted = set(args.only.split(",")) if args.only else None
    env_cache = os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(work.parent / "halton_inductor_cache"))
    summary["inductor_cache"] = env_cache  # shared by every stage: the XL blocks compile once
    for name, limit, commands in stages(args.dry_run, work, reference, str(summary.get("peak_tflops", 0)),
                                        args.train_steps):
        if wanted and name not in wanted:
            continue
        left = args.budget - (time.time() - start) - 10  # 10 s to write the table
        stage = run_stage(commands, min(limit, left) if not args.dry_run else max(left, 120), work)
        stage["results"] = [line for log in commands for line in result_lines(work / f"{log}.log")]
        summary["stages"][name] = stage
        summary["seconds"] = time.time() - start
        print(f"[{summary['seconds']:5.0f} s] {name}: {stage['status']} ({stage['seconds']} s)", flush=True)
        write_outputs(summary, out, work)
    print(table(summary))
    sys.exit(0 if all(s["status"] == "ok" or s["status"].startswith("skipped (no reference")
                      for s in summary["stages"].values()) else 1)


def write_outputs(summary: dict, out: Path, work: Path) -> None:
    """table.md, summary.json and logs.tar.gz under OUT, each replaced whole."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(table(summary))
    partial = out / "logs.tar.gz.tmp"
    with tarfile.open(partial, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            skipped = {"reference", "shards", "checkpoints", "inductor_cache"} & set(path.relative_to(work).parts)
            if path.is_file() and not skipped and path.suffix in (".log", ".json", ".md", ".csv", ".png", ".txt") \
                    and path.stat().st_size < 20e6:
                tar.add(path, arcname=str(path.relative_to(work)))
    partial.replace(out / "logs.tar.gz")


if __name__ == "__main__":
    main()
