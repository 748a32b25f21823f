# Shared by the phantom benchmark scripts (run_benchmark.sh here and in
# ../phantom-ssl-learned): the environment check, the budget, the generator setting bdv3R,
# the unimatch [lrdri] setting and grid(). Source it after setting SHARD, N_SHARDS, RUNS,
# CACHE and REPO. RECORDS (default: the records folder beside this file) holds the records of
# the finished runs (tfaug records: configs, results and metrics, no weights), committed so
# that the benchmark carries on across machines: grid() copies them into the runs folder
# first, so the grid skips those runs, and copies the records of the runs it finished back.

if ! python -c "import keras, tfaug.cli" 2>/dev/null; then
    echo "run_benchmark.sh: 'python' cannot import tfaug and keras; activate the environment" \
        "tfaug is installed in (pip install -e .) and start again" >&2
    exit 1
fi

# The budget every method gets (equal iterations): a 6000-step final stage (10x the phantom
# config's 600; at 3000 steps rdri's validation Dice on wide was still rising,
# phantom-ssl/README.md), validation every 25 steps on the config's 2 volumes, 6 more
# validation volumes that only measure the checkpoint choice, and the choice made by each
# tenth of the final stage kept and tested (the report's comparison at equal wall time).
BUDGET=(
    --set train.segmenter_iterations=6000 --set split.n_extra_validation=6
    --set train.budget_marks=10
)
# The bounded, smooth generators of docs/results/phantom-nl1-switches (gdgi [bdv3R]) and
# unimatch whose labeled slices get rdri's augmentation instead of the weak view (the remedy
# for its teacher's drift on wide, phantom-ssl/README.md): the setting files of
# configs/settings, which also tag the runs (bdv3R, lrdri). The same generator settings give
# the same shared generator stages.
BDV3R=(--config "$REPO/configs/settings/bdv3R.yaml")
LRDRI=(--config "$REPO/configs/settings/lrdri.yaml")

RECORDS=${RECORDS:-$REPO/docs/results/phantom-ssl/records}

# Every shard makes the same grid calls in the same order; call c gives shard s the part
# (s + c) mod N_SHARDS of that grid's runs, so the parts of one call are disjoint and a grid
# of a single run does not always fall to shard 0.
CALL=0
grid() {  # grid VARIANT N_L DRAWS METHODS [extra arguments...]
    local variant=$1 nl=$2 draws=$3 methods=$4
    shift 4
    local part=$(( (SHARD + CALL) % N_SHARDS ))
    CALL=$((CALL + 1))
    if [ -d "$RECORDS/$variant" ]; then
        python -m tfaug.cli records "$RECORDS/$variant" "$RUNS/$variant" > /dev/null
    fi
    python "$REPO/train/grid.py" --dataset phantom --nl "$nl" --methods "$methods" \
        --draws "$draws" --seeds 1 --set "phantom.variant=$variant" "${BUDGET[@]}" "$@" \
        --runs-dir "$RUNS/$variant" --cache-dir "$CACHE" --shard "$part/$N_SHARDS"
    python -m tfaug.cli records "$RUNS/$variant" "$RECORDS/$variant" | tail -n 1
}
