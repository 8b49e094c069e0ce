#!/usr/bin/env bash
# The GPU figures of docs/RESULTS.md (throughput, per-operator profiles, time to quality of the
# default runs) in a few commands, on a GPU machine that may have no network access.
#
#   bash benchmarks/gpu_benchmarks.sh bench DATA_SRC OUT      # throughput (full) + VAE/AC-GAN profiles, ~5 min
#   bash benchmarks/gpu_benchmarks.sh ttq MODEL DATA_SRC OUT SECONDS [FLAGS...]
#                                                             # the default run of MODEL, stopped after SECONDS;
#                                                             # prints when it reached the quality target
#
# DATA_SRC is either a folder holding cifar-10-batches-py/ or one holding the local JPEG copy
# (cifar10-jpeg.tar.gz, order.json, build.py), which is built into /tmp/cifar10 first: the
# official archive (178 MB) is much larger to copy onto the machine than the JPEG copy (19 MB).
# Files for results/ are written into OUT.
set -euo pipefail

mode=${1:?usage: gpu_benchmarks.sh bench|ttq ...}
shift

prepare() {  # cifargen from this checkout on the machine's own torch (no install step), then the data
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    local src=$1
    if [ -d "$src/cifar-10-batches-py" ]; then DATA=$src; return; fi
    DATA=/tmp/cifar10
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
*)
    echo "unknown mode $mode: use bench or ttq" >&2
    exit 2
    ;;
esac
