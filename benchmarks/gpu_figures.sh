#!/bin/bash
# The README's GPU figures in one go (about 15 minutes on one H100): the CUDA tests (sync-free hot paths, flash
# attention), training-step throughput and MFU of the XL class model and the paper's text model (bare loop and
# Lightning, eager and compiled), and the Halton and Confidence samplers against the reference code on the same
# weights. REFERENCE: a local checkout of github valeoai/Halton-MaskGIT (nothing of it is in this repository).
# Logs go to LOGS (default runs/gpu_figures).
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-runs/gpu_figures}
REFERENCE=${REFERENCE:-}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOGS/gpu.txt"
python -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -3 | tee "$LOGS/test_cuda.txt"
for preset in xl t2i; do
  python benchmarks/train_step.py --preset $preset --batch 32 --precision bf16 2>&1 | grep -v "Warning\|warn(" \
    | tee "$LOGS/train_$preset.txt"
  python benchmarks/train_step.py --preset $preset --batch 32 --precision bf16 --compile 2>&1 \
    | grep -v "Warning\|warn(" | tee "$LOGS/train_${preset}_compile.txt"
done
if [ -n "$REFERENCE" ]; then
  for size in tiny large; do
    for compiled in "" "--compile --compile-mode default" "--compile --compile-mode reduce-overhead"; do
      python benchmarks/sampling.py --size $size --grid 16 --codebook 16384 --batch 32 --steps 32 --cfg 2 --bf16 \
        --repeats 3 --schedulers halton,confidence --reference "$REFERENCE" $compiled 2>&1 | grep -v Warning \
        | tee -a "$LOGS/sampling_$size.txt"
    done
  done
fi
