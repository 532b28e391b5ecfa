#!/usr/bin/env bash
# The embedded demo, from a fresh machine: install, train the digits model on CPU, then write a sample grid (and
# the step-by-step progression image) per scheduler under runs/digits/samples/.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -e .
start=$(date +%s)
python train.py experiment=digits "$@"
python sample.py -m experiment=digits scheduler=halton,confidence,random steps=16 progression=true
echo "demo: trained and sampled in $(( $(date +%s) - start )) s; grids in runs/digits/samples/"
