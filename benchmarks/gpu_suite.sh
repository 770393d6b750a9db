#!/usr/bin/env bash
# The GPU suite of issue 15: every real-size benchmark and the `gpu` tests, in at most
# about 5 minutes, written as ONE JSON file of figures.
#
#   bash benchmarks/gpu_suite.sh [--install] [--scale real|tiny] [--device DEV]
#                                [--out FILE] [--only PART[,PART...]]
#
# --install   first install what the GPU machine lacks: the wheels under wheels/
#             (benchmarks/gpu_wheels.sh downloads them) and mechtune itself
#             (pip install --no-deps -e .); not counted in the suite's time.
# --scale     real (the published model sizes; the default) or tiny (a smoke run of the
#             same code, a few seconds a part: the CPU test runs it so).
# --device    cuda (the default when CUDA is present) or cpu.
# --out       the merged JSON (default benchmarks/results/gpu_suite.json).
# --only      run these parts only: trace, nast, medgemma, ddp, openclip, gpu_tests.
#
# Every part's full output is kept in FILE's folder as gpu_suite_logs/PART.log (the JSON
# keeps only a tail), unbuffered and with Python's faulthandler on, so a part killed at its
# limit still shows where it was.
#
# Each part runs under its own time limit (PART_LIMIT_<part> seconds may override it), so
# one hung part cannot eat the device time of the others; a part that fails or times out
# is recorded with its exit status and the tail of its output, and the suite goes on.
# PART_ARGS_<part> adds options to that part's command (e.g. PART_ARGS_trace="--pairs 50"
# for a CPU run of the real shapes), read as words.
# `python benchmarks/suite_table.py FILE` turns the JSON into the docs/benchmarks.md table.
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
SCALE=real
DEVICE=""
OUT=benchmarks/results/gpu_suite.json
ONLY=""
INSTALL=0
while [ $# -gt 0 ]; do
    case "$1" in
        --install) INSTALL=1; shift ;;
        --scale) SCALE="$2"; shift 2 ;;
        --device) DEVICE="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "gpu_suite.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$SCALE" in real|tiny) ;; *) echo "gpu_suite.sh: --scale must be real or tiny, got $SCALE" >&2; exit 2 ;; esac
ALL_PARTS=",trace,nast,medgemma,ddp,openclip,gpu_tests,"
IFS=',' read -r -a only_parts <<< "$ONLY"
for part in "${only_parts[@]}"; do
    if [[ "$ALL_PARTS" != *",$part,"* ]]; then
        echo "gpu_suite.sh: --only: unknown part '$part' (parts: ${ALL_PARTS:1:-1})" >&2
        exit 2
    fi
done

if [ "$INSTALL" -eq 1 ]; then
    # offline: the runtime wheels, then mechtune, whose isolated build takes setuptools
    # and wheel from wheels/build/ (benchmarks/gpu_wheels.sh downloads both sets)
    if compgen -G "wheels/*.whl" > /dev/null; then
        "$PY" -m pip install --no-deps --no-index wheels/*.whl || exit 1
    fi
    "$PY" -m pip install --no-deps --no-index --find-links wheels/build -e . || exit 1
fi
if [ -z "$DEVICE" ]; then
    DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')") || exit 1
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SUITE_START=$(date +%s%N)

free_port() {
    "$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
}

wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# run_part NAME LIMIT_S COMMAND...: the command writes $WORK/NAME.json; the status goes to
# $WORK/NAME.status (exit code, seconds).
run_part() {
    local name="$1" limit="$2"; shift 2
    wanted "$name" || return 0
    local var="PART_LIMIT_${name}"
    limit="${!var:-$limit}"
    local extra="PART_ARGS_${name}"
    # shellcheck disable=SC2206  # the extra options are words by design
    local more=(${!extra:-})
    set -- "$@" "${more[@]}"
    echo "== $name (limit ${limit}s): $*" >&2
    local start end rc ms
    start=$(date +%s%N)
    # SIGINT first: Python unwinds and prints its traceback; SIGKILL 10 s later
    timeout --signal=INT --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
    rc=$?
    end=$(date +%s%N)
    ms=$(( (end - start) / 1000000 ))
    echo "$rc $ms $limit" > "$WORK/$name.status"
    echo "   exit $rc in $ms ms" >&2
}

COMMON=(--scale "$SCALE" --device "$DEVICE")
run_part trace 60 "$PY" benchmarks/trace_real.py "${COMMON[@]}" --out "$WORK/trace.json"
run_part nast 40 "$PY" benchmarks/nast_throughput.py "${COMMON[@]}" --out "$WORK/nast.json"
run_part medgemma 90 "$PY" benchmarks/medgemma.py "${COMMON[@]}" --out "$WORK/medgemma.json"
run_part ddp 40 "$PY" -m torch.distributed.run --nproc_per_node 1 --master_port "$(free_port)" \
    benchmarks/ddp_step.py "${COMMON[@]}" --out "$WORK/ddp.json"
run_part openclip 50 "$PY" benchmarks/openclip_path.py "${COMMON[@]}" --out "$WORK/openclip.json"
# Every `gpu`-marked test lives in one of these paths (tests/bench/test_gpu_suite.py
# checks it), so collection never imports what the GPU machine lacks (MiniLM, medspacy).
GPU_TEST_PATHS=(tests/gpu tests/bench tests/interp/test_sae_stream.py)
run_part gpu_tests 50 "$PY" -m pytest -q -m gpu "${GPU_TEST_PATHS[@]}" -p no:cacheprovider \
    --junitxml "$WORK/gpu_tests.xml"

SUITE_END=$(date +%s%N)
LOGS="$(dirname "$OUT")/gpu_suite_logs"
mkdir -p "$LOGS" && cp "$WORK"/*.log "$LOGS"/ 2>/dev/null
"$PY" benchmarks/suite_table.py merge "$WORK" --out "$OUT" --scale "$SCALE" \
    --wall-ms "$(( (SUITE_END - SUITE_START) / 1000000 ))"
