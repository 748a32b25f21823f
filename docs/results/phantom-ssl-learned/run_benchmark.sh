#!/usr/bin/env bash
# The learned augmentation inside semi-supervised training, on the phantom (README.md beside
# this file): unimatch with the generators' transformations against unimatch without them.
#
#   bash docs/results/phantom-ssl-learned/run_benchmark.sh [SHARD] [N_SHARDS]
#
# runs shard SHARD of N_SHARDS (default: 0 of 1, everything) of every grid below, in
# priority order: the decisive comparison (unimatch [lrdri], unimatch_gdgi [bdv3R] and
# unimatch_gdgi_joint [bdv3R], five labeled draws, every variant, draw by draw), then the
# ablations (three draws). It writes into the semi-supervised benchmark's runs folders
# (docs/results/phantom-ssl), so a run both benchmarks need (unimatch [lrdri], and the
# generator stages that gdgi [bdv3R] and unimatch_gdgi [bdv3R] share) is trained once.
# Start one process per shard; stopping and starting again resumes every run from its
# checkpoint; finished runs are skipped. RUNS and CACHE may be set in the environment
# (defaults: runs-ssl, cache).
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

# The semi-supervised benchmark's budget (equal iterations; the README there shows it is
# enough for rdri on wide): a 6000-step final stage, 6 more validation volumes, budget marks.
BUDGET=(
    --set train.segmenter_iterations=6000 --set split.n_extra_validation=6
    --set train.budget_marks=10
)
# The bounded, smooth generators of docs/results/phantom-nl1-switches (gdgi [bdv3R]); the
# same generator settings give the same shared generator stages.
BDV3R=(
    --set model.deformation_max_mm=10 --set model.deformation_grid=8
    --set model.intensity_max=0.2 --set model.intensity_grid=8
    --set train.real_label=0.9 --set train.discriminator_learning_rate=0.0002
    --set train.validation_smoothing=0.5 --set train.lambda_diversity=3.0
    --set augment.generated_composition=chain --set augment.generated_after_random=true
    --set augment.random_before_generators=true
)
# The baseline: unimatch whose labeled slices get rdri's augmentation (plain unimatch's
# teacher drifts on wide, docs/results/phantom-ssl/README.md).
LRDRI=(--set tag=lrdri --set ssl.labeled_augmentation=rdri)

CALL=0
grid() {  # grid VARIANT DRAWS METHODS [extra arguments...]
    local variant=$1 draws=$2 methods=$3
    shift 3
    local part=$(( (SHARD + CALL) % N_SHARDS ))
    CALL=$((CALL + 1))
    python "$REPO/train/grid.py" --dataset phantom --nl 1 --methods "$methods" \
        --draws "$draws" --seeds 1 --set "phantom.variant=$variant" "${BUDGET[@]}" "$@" \
        --runs-dir "$RUNS/$variant" --cache-dir "$CACHE" --shard "$part/$N_SHARDS"
}

# (a) frozen generators and (b) generators trained in the stage, against the baseline.
for draws in 1 2 3 4 5; do
    for variant in wide hard default; do
        grid "$variant" "$draws" unimatch "${LRDRI[@]}"
        grid "$variant" "$draws" unimatch_gdgi,unimatch_gdgi_joint "${BDV3R[@]}" --set tag=bdv3R
    done
done
# Ablations of (a): the generators on the labeled or the unlabeled slices only, and the
# learned view replacing the two generic strong views.
for draws in 1 2 3; do
    for variant in wide hard default; do
        grid "$variant" "$draws" unimatch_gdgi "${BDV3R[@]}" \
            --set ssl.learned_view=labeled --set tag=bdv3R_labeled
        grid "$variant" "$draws" unimatch_gdgi "${BDV3R[@]}" \
            --set ssl.learned_view=unlabeled --set tag=bdv3R_unlabeled
        grid "$variant" "$draws" unimatch_gdgi "${BDV3R[@]}" \
            --set ssl.learned_view=unlabeled --set ssl.strong_views=0 --set tag=bdv3R_replace
    done
done
