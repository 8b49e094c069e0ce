#!/usr/bin/env bash
# The GPU figures of docs/RESULTS.md (throughput, per-operator profiles, time to quality of the
# default runs, AC-GAN probes side by side) in a few commands, on a GPU machine that may have no
# network access.
#
#   bash benchmarks/gpu_benchmarks.sh bench DATA_SRC OUT      # throughput (full) + VAE/AC-GAN profiles, ~5 min
#   bash benchmarks/gpu_benchmarks.sh ttq MODEL DATA_SRC OUT SECONDS [FLAGS...]
#                                                             # the default run of MODEL, stopped after SECONDS;
#                                                             # prints when it reached the quality target
#   bash benchmarks/gpu_benchmarks.sh probes DATA_SRC OUT SECONDS "FLAGS A" "FLAGS B" ...
#                                                             # AC-GAN runs side by side, one per quoted set of
#                                                             # flags, each stopped after SECONDS
#
# DATA_SRC is either a folder holding cifar-10-batches-py/ or one holding the local JPEG copy
# (cifar10-jpeg.tar.gz, order.json, build.py), which is built into $TMPDIR/cifar10 (default
# /tmp/cifar10) first: the official archive (178 MB) is much larger to copy onto the machine
# than the JPEG copy (19 MB).
# Files for results/ are written into OUT.
set -euo pipefail

mode=${1:?usage: gpu_benchmarks.sh bench|ttq|probes ...}
shift

prepare() {  # cifargen from this checkout on the machine's own torch (no install step), then the data
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    local src=$1
    if [ -d "$src/cifar-10-batches-py" ]; then DATA=$src; return; fi
    DATA=${TMPDIR:-/tmp}/cifar10
    [ -d "$DATA/cifar-10-batches-py" ] || python3 "$src/build.py" --out "$DATA" >/dev/null
}

case $mode in
bench)
    src=${1:?DATA_SRC}; out=${2:?OUT}
    mkdir -p "$out"
    prepare "$src"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    python3 benchmarks/throughput.py --data-dir "$DATA" --json "$out/throughput_gpu.json"
    python3 benchmarks/throughput.py --quick --data-dir "$DATA" --json "$out/throughput_gpu_quick.json"
    for model in vae acgan; do
        python3 benchmarks/profile_step.py --model "$model" --steps 50 --out "$out/profile_${model}_gpu.txt" | tail -5
    done
    ;;
ttq)
    model=${1:?MODEL}; src=${2:?DATA_SRC}; out=${3:?OUT}; seconds=${4:?SECONDS}
    shift 4
    mkdir -p "$out"
    prepare "$src"
    # Interrupted like Ctrl-C (killed 120 s later if it is then busy with its final figures):
    # metrics.json holds every finished epoch with its wall time. Any other failure stops here.
    rc=0
    timeout --signal=INT -k 120 "$seconds" python3 -m cifargen train "$model" --data-dir "$DATA" \
        --out "${TMPDIR:-/tmp}/run_$model" --overwrite --no-progress "$@" || rc=$?
    if [ "$rc" != 0 ] && [ "$rc" != 124 ] && [ "$rc" != 130 ]; then
        echo "training failed (exit $rc)" >&2
        exit "$rc"
    fi
    cp "${TMPDIR:-/tmp}/run_$model/metrics.json" "$out/metrics_${model}_gpu.json"
    python3 benchmarks/time_to_quality.py "${TMPDIR:-/tmp}/run_$model"
    ;;
probes)
    src=${1:?DATA_SRC}; out=${2:?OUT}; seconds=${3:?SECONDS}
    shift 3
    [ "$#" -gt 0 ] || { echo "probes: give at least one quoted set of flags" >&2; exit 2; }
    mkdir -p "$out"
    prepare "$src"
    i=0
    for flags in "$@"; do
        i=$((i + 1))
        echo "probe $i: $flags" | tee "$out/probe_$i.flags"
        # shellcheck disable=SC2086  # each probe's flags are split into words on purpose
        timeout --signal=INT -k 120 "$seconds" python3 -m cifargen train acgan --data-dir "$DATA" \
            --out "${TMPDIR:-/tmp}/probe_$i" --overwrite --no-progress $flags > "$out/probe_$i.log" 2>&1 &
    done
    wait || true  # a probe stopped by the timeout exits non-zero; metrics.json holds its finished epochs
    for j in $(seq 1 "$i"); do
        cp "${TMPDIR:-/tmp}/probe_$j/metrics.json" "$out/metrics_probe_$j.json" || echo "probe $j left no metrics.json"
        python3 -c "import json, sys; m = json.load(open(sys.argv[1])); print('probe', sys.argv[2], 'best', m['best'],
            'at epoch', m['best_epoch'], 'of', m['epochs_completed'])" "$out/metrics_probe_$j.json" "$j" || true
    done
    ;;
*)
    echo "unknown mode $mode: use bench, ttq or probes" >&2
    exit 2
    ;;
esac
