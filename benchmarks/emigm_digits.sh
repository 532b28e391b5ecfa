#!/bin/bash
# eMIGM's options and Halton-ordered training masks on the digits (README, "eMIGM's options ..."): digits models of
# the demo's configuration (1,000 steps) differing in one training option, then the Halton sampler at 8 and 16
# steps, CFG 1, sampling seeds 0-2, 500 images per cell. The baseline and the Halton-ordered masks are trained with
# seeds 0, 1 and 2 (TRAIN_SEEDS), the other variants with seed 0. About 35 minutes on 2 CPU cores; the summary at the
# end averages every row of a variant (training seeds x sampling seeds).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/emigm}
TRAIN_SEEDS=${TRAIN_SEEDS:-0 1 2}
R=$OUT/runs
train="experiment=digits paths.runs_dir=$R paths.data_dir=$OUT/data model.sample_grid=null"
common="experiment=digits paths.runs_dir=$R paths.data_dir=$OUT/data scheduler=halton steps=8,16 seed=0,1,2 num_images=500 diagnostics=false"
run_name() { if [ "$2" = 0 ]; then echo "$1"; else echo "$1_seed$2"; fi; }  # seed 0 keeps the plain name

for seed in $TRAIN_SEEDS; do
  python train.py $train name=$(run_name baseline $seed) seed=$seed
  python train.py $train name=$(run_name halton_masks $seed) seed=$seed model.masking=halton
done
python train.py $train name=mask_token model.net.null_condition=mask_token
python train.py $train name=exp_exact model.mask_schedule=exp model.masking=exact

evaluate() {  # variant, run name, extra options
  local variant=$1 name=$2; shift 2
  python evaluate.py -m $common name=$name checkpoint=$R/$name/checkpoints/last.ckpt results=$OUT/eval/$variant.csv "$@"
}
for seed in $TRAIN_SEEDS; do
  evaluate baseline $(run_name baseline $seed)
  evaluate halton_masks $(run_name halton_masks $seed)
done
evaluate exp_sampling baseline schedule=exp
evaluate cfg_interval baseline cfg_interval=[0.1,0.3]
evaluate exp_exact exp_exact
evaluate mask_token mask_token model.net.null_condition=mask_token

python - "$OUT/eval" <<'PY'
import csv, statistics, sys
from pathlib import Path
print("| variant | steps | runs | digits-FID | precision | recall | NFE / image |")
for path in sorted(Path(sys.argv[1]).glob("*.csv")):
    rows = list(csv.DictReader(path.open()))
    for steps in sorted({int(r["steps"]) for r in rows}):
        cell = [r for r in rows if int(r["steps"]) == steps]
        show = lambda key: (f"{statistics.mean(float(r[key]) for r in cell):.3g} ± "
                            f"{statistics.stdev(float(r[key]) for r in cell):.2g}")
        print(f"| {path.stem} | {steps} | {len(cell)} | {show('digits_fid')} | {show('digits_precision')} | "
              f"{show('digits_recall')} | {cell[0]['nfe_per_image']} |")
PY
