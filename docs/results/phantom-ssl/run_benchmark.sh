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
# shellcheck source=common.sh
source "$HERE/common.sh"
DECISIVE=unimatch,rdri,heavy  # and gdgi [bdv3R]
OTHERS=fixmatch,self_training,aff,none,gdgi

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
