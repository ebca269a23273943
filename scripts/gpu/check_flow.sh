#!/usr/bin/env bash
# The GPU checks of the CUDA flow stage in one run, for a machine with an NVIDIA GPU:
# the CUDA-vs-reference tests (pytest -m gpu) and the flow benchmark with the card's
# name, then the S = 112 cuda rows again with the kernels' diagnostic switches (switched/). Results go
# to $OUT (default ./gpu-check): gpu.txt, tests.txt, flow.md, flow.json, switched/flow.md.
#
#   bash scripts/gpu/check_flow.sh [--sizes "112 64 128 224"] [--repeats 3] [--test-limit 200] [--bench-limit 300]
#
# pycuda must be importable; where it is prebuilt in a folder (a .tgz of the installed
# package plus its wheels, as .gpu/ holds it), give that folder as PYCUDA_DIR and it is
# unpacked onto PYTHONPATH first, with every other wheel there (scripts/gpu/prepare.sh
# adds pytest's, for a machine without a package index).
set -euo pipefail

sizes="112 64 128 224"  # S = 112 first: the model's size is measured before a later size can run out of time
repeats=3
test_limit=200  # seconds for the GPU tests
bench_limit=300  # seconds for the benchmark
switch_limit=120  # seconds for the S = 112 rows with the diagnostic switches
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) sizes="$2"; shift 2 ;;
        --repeats) repeats="$2"; shift 2 ;;
        --test-limit) test_limit="$2"; shift 2 ;;
        --bench-limit) bench_limit="$2"; shift 2 ;;
        *) echo "check_flow.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "check_flow.sh: no NVIDIA GPU here (nvidia-smi not found); run it on the GPU machine" >&2
    exit 2
fi

root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-$root/gpu-check}"
mkdir -p "$out"
cd "$root"

if [ -n "${PYCUDA_DIR:-}" ]; then
    site="$(mktemp -d)"
    tar xzf "$PYCUDA_DIR"/pycuda-*.tgz -C "$site"
    python3 -m pip install -q --no-index --no-deps --target "$site" "$PYCUDA_DIR"/*.whl
    export PYTHONPATH="$site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$root:${PYTHONPATH:-}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import pycuda.driver as d; d.init(); print('pycuda', d.get_version(), d.Device(0).name())" \
    | tee -a "$out/gpu.txt"

# Each step has its own time limit, so that a kernel that never ends costs that step only
# (ending the process ends its kernels); the benchmark writes its tables after every size.
status=0
if python3 -m pytest --version >/dev/null 2>&1; then
    timeout "$test_limit" python3 -m pytest -m gpu -rs -s -q -p no:cacheprovider tests/test_flow_cuda.py 2>&1 \
        | tee "$out/tests.txt" || status=1
else
    echo "pytest is not installed here: tests skipped" | tee "$out/tests.txt"
fi
# shellcheck disable=SC2086  # sizes is a list of numbers
timeout "$bench_limit" python3 benchmarks/flow.py --repeats "$repeats" --sizes $sizes --out "$out" 2>&1 \
    | tee "$out/flow.txt" || status=1
# what the kernels' two savings that only a GPU shows change (approximate square roots and reciprocals in
# the dual step; cluster barriers that order shared memory only): S = 112 again with both turned off
EDGE_MER_CUDA_DEFINES="TVL1_EXACT_DUAL TVL1_FULL_BARRIERS" timeout "$switch_limit" python3 benchmarks/flow.py \
    --repeats "$repeats" --sizes 112 --methods cuda cuda-cluster --out "$out/switched" 2>&1 \
    | tee "$out/switched.txt" || status=1
exit "$status"
