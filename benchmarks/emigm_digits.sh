#!/bin/bash
# eMIGM's options and Halton-ordered training masks on the digits (README, "eMIGM's options ..."): four digits models
# of the demo's configuration (1,000 steps, training seed 0) differing in one training option, then the Halton
# sampler at 8 and 16 steps, CFG 1, sampling seeds 0-2, 500 images per cell. About 40 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/emigm}
R=$OUT/runs
train="experiment=digits paths.runs_dir=$R paths.data_dir=$OUT/data model.sample_grid=null"
python train.py $train name=baseline
python train.py $train name=mask_token model.net.null_condition=mask_token
python train.py $train name=exp_exact model.mask_schedule=exp model.masking=exact
python train.py $train name=halton_masks model.masking=halton
common="experiment=digits paths.runs_dir=$R paths.data_dir=$OUT/data scheduler=halton steps=8,16 seed=0,1,2 num_images=500 diagnostics=false"
python evaluate.py -m $common name=baseline checkpoint=$R/baseline/checkpoints/last.ckpt results=$OUT/eval/baseline.csv
python evaluate.py -m $common name=baseline checkpoint=$R/baseline/checkpoints/last.ckpt schedule=exp results=$OUT/eval/exp_sampling.csv
python evaluate.py -m $common name=baseline checkpoint=$R/baseline/checkpoints/last.ckpt cfg_interval=[0.1,0.3] results=$OUT/eval/cfg_interval.csv
python evaluate.py -m $common name=exp_exact checkpoint=$R/exp_exact/checkpoints/last.ckpt results=$OUT/eval/exp_exact.csv
python evaluate.py -m $common name=mask_token checkpoint=$R/mask_token/checkpoints/last.ckpt model.net.null_condition=mask_token results=$OUT/eval/mask_token.csv
python evaluate.py -m $common name=halton_masks checkpoint=$R/halton_masks/checkpoints/last.ckpt results=$OUT/eval/halton_masks.csv
echo done
