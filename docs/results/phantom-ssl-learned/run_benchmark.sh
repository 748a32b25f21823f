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
# shellcheck source=../phantom-ssl/common.sh
source "$HERE/../phantom-ssl/common.sh"

# (a) frozen generators and (b) generators trained in the stage, against the baseline.
for draws in 1 2 3 4 5; do
    for variant in wide hard default; do
        grid "$variant" 1 "$draws" unimatch "${LRDRI[@]}"
        grid "$variant" 1 "$draws" unimatch_gdgi,unimatch_gdgi_joint "${BDV3R[@]}"
    done
done
# Ablations of (a): the generators on the labeled or the unlabeled slices only, and the
# learned view replacing the two generic strong views.
for draws in 1 2 3; do
    for variant in wide hard default; do
        grid "$variant" 1 "$draws" unimatch_gdgi "${BDV3R[@]}" \
            --set ssl.learned_view=labeled --set tag=bdv3R_labeled
        grid "$variant" 1 "$draws" unimatch_gdgi "${BDV3R[@]}" \
            --set ssl.learned_view=unlabeled --set tag=bdv3R_unlabeled
        grid "$variant" 1 "$draws" unimatch_gdgi "${BDV3R[@]}" \
            --set ssl.learned_view=unlabeled --set ssl.strong_views=0 --set tag=bdv3R_replace
    done
done
