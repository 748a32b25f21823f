#!/usr/bin/env bash
# The semi-supervised benchmark on the phantom (README.md beside this file).
#
#   bash docs/results/phantom-ssl/run_benchmark.sh [SHARD] [N_SHARDS]
#
# runs shard SHARD of N_SHARDS (default: 0 of 1, everything) of every grid below, in
# priority order: three labeled draws of the decisive methods (and of unimatch [lrdri]) on
# every variant (draw by draw), then three of the other methods, the extra draws of the decisive methods, then
# N_L = 3 on the default variant.
# Start one process per shard (e.g. `... 0 2` and `... 1 2` on two cores); they share the
# runs folders and never run the same run. Stopping and starting again resumes every run
# from its checkpoint; finished runs are skipped. RUNS and CACHE may be set in the
# environment (defaults: runs-ssl, cache).
set -u
SHARD=${1:-0}
N_SHARDS=${2:-1}
RUNS=${RUNS:-runs-ssl}
CACHE=${CACHE:-cache}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
if ! python -c "import keras, tfaug.cli" 2>/dev/null; then
    echo "run_benchmark.sh: 'python' cannot import tfaug and keras; activate the environment" \
        "tfaug is installed in (pip install -e .) and start again" >&2
    exit 1
fi

# The budget every method gets (equal iterations): a 6000-step final stage (10x the phantom
# config's 600; at 3000 steps rdri's validation Dice on wide was still rising, README.md),
# validation every 25 steps on the config's 2 volumes, 6 more validation volumes that only
# measure the checkpoint choice, and the choice made by each tenth of the final stage kept
# and tested (the report's comparison at equal wall time).
BUDGET=(
    --set train.segmenter_iterations=6000 --set split.n_extra_validation=6
    --set train.budget_marks=10
)
DECISIVE=unimatch,rdri,heavy  # and gdgi [bdv3R]
OTHERS=fixmatch,self_training,aff,none,gdgi
# gdgi [bdv3R]: the best generator setting of docs/results/phantom-nl1-switches.
BDV3R=(
    --set tag=bdv3R
    --set model.deformation_max_mm=10 --set model.deformation_grid=8
    --set model.intensity_max=0.2 --set model.intensity_grid=8
    --set train.real_label=0.9 --set train.discriminator_learning_rate=0.0002
    --set train.validation_smoothing=0.5 --set train.lambda_diversity=3.0
    --set augment.generated_composition=chain --set augment.generated_after_random=true
    --set augment.random_before_generators=true
)

# unimatch [lrdri]: unimatch whose labeled slices get rdri's augmentation instead of the
# weak view (the remedy for its teacher's drift on wide, README.md), beside plain unimatch.
LRDRI=(--set tag=lrdri --set ssl.labeled_augmentation=rdri)

# Every shard makes the same grid calls in the same order; call c gives shard s the part
# (s + c) mod N_SHARDS of that grid's runs, so the parts of one call are disjoint and a grid
# of a single run does not always fall to shard 0.
CALL=0
grid() {  # grid VARIANT N_L DRAWS METHODS [extra arguments...]
    local variant=$1 nl=$2 draws=$3 methods=$4
    shift 4
    local part=$(( (SHARD + CALL) % N_SHARDS ))
    CALL=$((CALL + 1))
    python "$REPO/train/grid.py" --dataset phantom --nl "$nl" --methods "$methods" \
        --draws "$draws" --seeds 1 --set "phantom.variant=$variant" "${BUDGET[@]}" "$@" \
        --runs-dir "$RUNS/$variant" --cache-dir "$CACHE" --shard "$part/$N_SHARDS"
}

for draws in 1 2 3; do
    for variant in wide hard default; do
        grid "$variant" 1 "$draws" "$DECISIVE"
        grid "$variant" 1 "$draws" gdgi "${BDV3R[@]}"
        grid "$variant" 1 "$draws" unimatch "${LRDRI[@]}"
    done
done
for draws in 1 2 3; do
    for variant in wide hard default; do
        grid "$variant" 1 "$draws" "$OTHERS"
    done
done
for draws in 4 5; do
    for variant in wide hard default; do
        grid "$variant" 1 "$draws" "$DECISIVE"
        grid "$variant" 1 "$draws" gdgi "${BDV3R[@]}"
    done
done
for draws in 1 2 3; do
    grid default 3 "$draws" "$DECISIVE,$OTHERS"
    grid default 3 "$draws" gdgi "${BDV3R[@]}"
done
