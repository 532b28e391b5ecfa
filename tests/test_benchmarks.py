"""The benchmark scripts run (smoke tests on tiny presets; no timing is asserted)."""

import math
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_train_step_counts_the_head_on_the_scored_tokens_only():
    import train_step

    from halton.training.throughput import training_flops_per_image

    module = train_step.make_module(type("Args", (), {"preset": "digits", "compile": False})(), torch.device("cpu"))
    model_flops, executed = training_flops_per_image(module)
    head = 3 * 2 * 64 * 128 * 18  # forward + backward of the 128 -> 18 head on the 64 positions
    assert executed > head and math.isclose(executed - model_flops, head * (1 - 2 / math.pi), rel_tol=1e-6)
    assert all(p.grad is None for p in module.model.parameters())  # the count leaves no gradients behind


def test_train_step_runs_both_loops_on_cpu():
    result = subprocess.run([sys.executable, "benchmarks/train_step.py", "--preset", "digits", "--batch", "4",
                             "--steps", "2", "--warmup", "1", "--device", "cpu", "--precision", "fp32"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("device ") and "preset digits (0.6M parameters), batch 4" in lines[0]
    assert any(line.strip().startswith("bare:") and "images/s" in line for line in lines)
    assert any(line.strip().startswith("lightning:") and "images/s" in line for line in lines)
    assert lines[-1].startswith("Lightning / bare: ")
