#!/usr/bin/env bash
# Set up edge-mer on a Jetson (run on the device, as the user who will run edge-mer).
#
#   scripts/jetson/setup.sh [--from WHEEL_OR_SOURCE] [--prefix DIR] [--with-onnxruntime]
#                           [--power-mode N] [--clocks] [--root DIR] [--dry-run]
#
# TensorRT, its Python bindings, numpy and the GStreamer-enabled OpenCV come from JetPack (apt).
# The venv sees them through --system-site-packages; every pip install here is constrained to
# JetPack's numpy, so none replaces it, and nothing installs a wheel that would shadow JetPack's
# (no opencv-python*, no tensorrt, no onnxruntime-gpu). See docs/jetson.md.
set -euo pipefail

readonly PROG="setup.sh"
readonly CUDA_ROOT_DEFAULT="/usr/local/cuda"
readonly OPENCV_WHEELS_RE='^(opencv-python|opencv-python-headless|opencv-contrib-python|opencv-contrib-python-headless)=='

die() {
    printf '%s: error: %s\n' "$PROG" "$1" >&2
    exit "${2:-1}"
}

warn() {
    printf '%s: warning: %s\n' "$PROG" "$1" >&2
}

usage() {
    cat <<'EOF'
usage: setup.sh [--from PATH] [--prefix DIR] [--with-onnxruntime] [--power-mode N] [--clocks]
                [--python PY] [--root DIR] [--dry-run]

Install edge-mer on an NVIDIA Jetson into a virtual environment that keeps JetPack's
TensorRT and GStreamer OpenCV visible.

  --from PATH          an edge-mer wheel (.whl) or source folder (default: this checkout)
  --prefix DIR         where the venv goes (default: ~/.local/share/edge-mer/venv)
  --with-onnxruntime   also install the CPU onnxruntime wheel (never onnxruntime-gpu)
  --power-mode N       sudo nvpmodel -m N (mode numbers differ per board: sudo nvpmodel -q --verbose)
  --clocks             sudo jetson_clocks (lock clocks at the current mode's maximum until reboot)
  --python PY          the system Python the venv is made from (default: python3)
  --root DIR           read etc/nv_tegra_release under DIR instead of / (testing, images)
  --dry-run            print every command instead of running it
  -h, --help           this text

Steps: detect L4T/JetPack and the TensorRT it ships; create the venv with
--system-site-packages; pin JetPack's numpy in PREFIX/constraints.txt; pip install
edge-mer (and tqdm) under that pin; build pycuda against JetPack's numpy and CUDA
(nvcc from PATH, $CUDA_ROOT, /usr/local/cuda or the newest /usr/local/cuda-X.Y; skipped
with a warning when there is none); remove any pip OpenCV wheel from the venv; check
that numpy is unchanged and that cv2 has GStreamer; optional power mode and clocks;
edge-mer doctor.
EOF
}

DRY_RUN=0

# Quote one argument the way a user would type it (plain words stay bare).
quote() {
    if [[ "$1" =~ ^[A-Za-z0-9_./:+=,@%~-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

# Print a command; run it unless --dry-run.
run() {
    local line="" arg
    for arg in "$@"; do
        line+="${line:+ }$(quote "$arg")"
    done
    echo "+ $line"
    ((DRY_RUN)) || "$@"
}

# "R36.4.0" from a nv_tegra_release file ("# R36 (release), REVISION: 4.0, GCID: ...").
l4t_release() {
    local first major revision
    first="$(head -n 1 "$1")"
    major="$(sed -n 's/^# *R\([0-9][0-9]*\) .*/\1/p' <<<"$first")"
    revision="$(sed -n 's/.*REVISION: *\([0-9][0-9.]*\).*/\1/p' <<<"$first")"
    [[ -n "$major" ]] || return 1
    printf 'R%s.%s' "$major" "${revision:-0}"
}

# What JetPack and TensorRT an L4T release means, and edge-mer's engine API generation.
expected_tensorrt() {
    local major="$1" minor="$2"
    case "$major" in
        32) echo "JetPack 4.x, TensorRT 8.2 or older: too old (edge-mer needs TensorRT 8.5, JetPack 5.1)" ;;
        35)
            if ((minor < 2)); then
                echo "JetPack 5.0.x: older than JetPack 5.1; edge-mer needs TensorRT 8.5 (JetPack 5.1, R35.2+)"
            else
                echo "JetPack 5.1.x, Python 3.8, TensorRT 8.5 (engine API generation 8: 8.5 and 8.6)"
            fi
            ;;
        36)
            if ((minor < 4)); then
                echo "JetPack 6.0, Python 3.10, TensorRT 8.6 (engine API generation 8: 8.5 and 8.6)"
            else
                echo "JetPack 6.1/6.2, Python 3.10, TensorRT 10.3 (engine API generation 10: 9.x and 10.x)"
            fi
            ;;
        38 | 39) echo "JetPack 7.x, Python 3.12, TensorRT 10.13 or newer (engine API generation 10)" ;;
        *) echo "unknown L4T release: expected TensorRT not known" ;;
    esac
}

detect_release() {
    local root="$1" root_given="$2" file
    file="${root%/}/etc/nv_tegra_release"
    if [[ ! -f "$file" ]]; then
        if ((root_given)); then
            die "no $file: --root must point at a Jetson root file system" 2
        fi
        ((DRY_RUN)) || die "not a Jetson (no /etc/nv_tegra_release)" 2
        echo "L4T: not a Jetson (no /etc/nv_tegra_release); dry run goes on"
        return 0
    fi
    local release
    release="$(l4t_release "$file")" || die "cannot read the L4T release from $file" 1
    local major minor
    major="${release#R}"
    major="${major%%.*}"
    minor="$(cut -d. -f2 <<<"${release#R}")"
    echo "L4T: $release"
    echo "expected: $(expected_tensorrt "$major" "${minor:-0}")"
    if ((major < 35)) || { ((major == 35)) && ((${minor:-0} < 2)); }; then
        ((DRY_RUN)) || die "L4T $release is not supported: flash JetPack 5.1 or newer (scripts/jetson/flash.sh)" 1
    fi
}

report_packages() {
    if ((ROOT_GIVEN)); then
        echo "packages: not queried (--root given; dpkg describes this machine, not that root)"
        return 0
    fi
    if ! command -v dpkg-query >/dev/null 2>&1; then
        echo "packages: dpkg-query not found, not queried"
        return 0
    fi
    local pkg version
    for pkg in nvidia-l4t-core nvidia-jetpack tensorrt python3-libnvinfer; do
        version="$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)"
        echo "package $pkg: ${version:-not installed}"
    done
}

check_system_tensorrt() {
    if "$PYTHON" -c "import tensorrt" >/dev/null 2>&1; then
        echo "tensorrt: $("$PYTHON" -c "import tensorrt; print(tensorrt.__version__)" 2>/dev/null)"
    else
        warn "$PYTHON cannot import tensorrt: sudo apt install python3-libnvinfer (JetPack's bindings)"
    fi
}

# The CUDA compiler, found as the flow stage finds it (edge_mer/flow/cuda.py: find_nvcc); empty when none.
find_nvcc() {
    local candidate name prefix="${CUDA_PREFIX%/}"
    if candidate="$(command -v nvcc 2>/dev/null)"; then
        printf '%s' "$candidate"
        return 0
    fi
    local candidates=("$CUDA_ROOT/bin/nvcc" "$prefix/cuda/bin/nvcc")
    while IFS= read -r name; do
        candidates+=("$prefix/$name/bin/nvcc")
    done < <(find "$prefix" -maxdepth 1 -name 'cuda-*' -printf '%f\n' 2>/dev/null | sort -V -r)
    for candidate in "${candidates[@]}"; do
        if [[ -x "$candidate" ]]; then
            printf '%s' "$candidate"
            return 0
        fi
    done
}

# The toolkit folder of an nvcc (its include/cuda.h is what pycuda builds against), else $CUDA_ROOT.
toolkit_of() {
    local root
    root="$(cd "$(dirname "$1")/.." && pwd -P)"
    if [[ -f "$root/include/cuda.h" ]]; then
        printf '%s' "$root"
    else
        printf '%s' "$CUDA_ROOT"
    fi
}

check_build_tools() {
    NVCC="$(find_nvcc)"
    if [[ -z "$NVCC" ]]; then
        warn "no CUDA compiler (nvcc) on PATH, in $CUDA_ROOT/bin or ${CUDA_PREFIX%/}/cuda-*/bin: pycuda is skipped, so the TensorRT backend and the CUDA flow stage will not run; sudo apt install nvidia-jetpack (or its cuda-toolkit) and run setup.sh again"
    else
        echo "nvcc: $NVCC"
    fi
    local include
    include="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null || true)"
    if [[ -z "$include" || ! -f "$include/Python.h" ]]; then
        warn "no Python.h for $PYTHON: pycuda cannot build; sudo apt install python3-dev"
    fi
}

# Remove pip OpenCV wheels from the venv so JetPack's cv2 (with GStreamer) is the one imported.
remove_opencv_wheels() {
    local py="$1"
    if ((DRY_RUN)); then
        echo "+ $(quote "$py") -m pip list --local --format=freeze  # any opencv-python* found is uninstalled"
        return 0
    fi
    local found
    found="$("$py" -m pip list --local --format=freeze 2>/dev/null | grep -iE "$OPENCV_WHEELS_RE" | cut -d= -f1 || true)"
    if [[ -n "$found" ]]; then
        echo "removing pip OpenCV wheel(s) from the venv, they shadow JetPack's: $(tr '\n' ' ' <<<"$found")"
        # shellcheck disable=SC2086  # one package name per word
        run "$py" -m pip uninstall -y $found
    fi
}

check_gstreamer() {
    local py="$1"
    local probe="import cv2; print(cv2.getBuildInformation())"
    if ((DRY_RUN)); then
        echo "+ $(quote "$py") -c $(quote "$probe")  # must show GStreamer: YES"
        return 0
    fi
    local info
    if ! info="$("$py" -c "$probe" 2>/dev/null)"; then
        warn "cv2 does not import: sudo apt install python3-opencv (JetPack's OpenCV), never pip's"
        return 0
    fi
    if grep -qE 'GStreamer:[[:space:]]*YES' <<<"$info"; then
        echo "opencv: GStreamer YES (csi:// cameras work)"
    else
        warn "this cv2 has no GStreamer: csi:// cameras will not open; pip uninstall opencv-python* and use JetPack's python3-opencv"
    fi
}

# The numpy the venv sees (JetPack's, through --system-site-packages): "VERSION PATH", or empty.
visible_numpy() {
    "$1" -c 'import numpy; print(numpy.__version__, numpy.__file__)' 2>/dev/null || true
}

# PREFIX/constraints.txt pins the numpy the system has, so no pip install replaces it; every install
# below reads it (-c). Without a system numpy the file stays empty and pip installs one.
# $3: what visible_numpy said of the venv's python $1.
write_constraints() {
    local py="$1" file="$2" found="$3"
    if ((DRY_RUN)); then
        echo "+ $(quote "$py") -c 'import numpy; print(numpy.__version__)'  # written to $(quote "$file") as numpy==VERSION"
        return 0
    fi
    if [[ -n "$found" ]]; then
        printf 'numpy==%s\n' "${found%% *}" >"$file"
        echo "numpy: ${found%% *} from the system, pinned in $file"
    else
        : >"$file"
        warn "no numpy on this system (sudo apt install python3-numpy keeps JetPack's OpenCV working): pip installs one"
    fi
}

# Stop when the installs changed the numpy the venv sees: JetPack's OpenCV is built against it.
check_numpy_kept() {
    local py="$1" before="$2" after
    ((DRY_RUN)) && return 0
    [[ -n "$before" ]] || return 0
    after="$(visible_numpy "$py")"
    [[ "$after" == "$before" ]] ||
        die "numpy changed from ${before} to ${after:-nothing}: remove $PREFIX_DIR and report this" 1
    echo "numpy: unchanged (${before%% *})"
}

main() {
    local from="" prefix="${HOME:-.}/.local/share/edge-mer/venv" with_ort=0 power_mode="" clocks=0 root="/"
    ROOT_GIVEN=0
    PYTHON="python3"
    CUDA_ROOT="${CUDA_ROOT:-$CUDA_ROOT_DEFAULT}"
    CUDA_PREFIX="${CUDA_PREFIX:-/usr/local}"
    while (($#)); do
        case "$1" in
            --from) (($# >= 2)) || die "--from needs a wheel or a source folder" 2; from="$2"; shift 2 ;;
            --prefix) (($# >= 2)) || die "--prefix needs a folder" 2; prefix="$2"; shift 2 ;;
            --with-onnxruntime) with_ort=1; shift ;;
            --power-mode) (($# >= 2)) || die "--power-mode needs a mode number" 2; power_mode="$2"; shift 2 ;;
            --clocks) clocks=1; shift ;;
            --python) (($# >= 2)) || die "--python needs an interpreter" 2; PYTHON="$2"; shift 2 ;;
            --root) (($# >= 2)) || die "--root needs a folder" 2; root="$2"; ROOT_GIVEN=1; shift 2 ;;
            --dry-run) DRY_RUN=1; shift ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown argument '$1' (see --help)" 2 ;;
        esac
    done
    [[ -z "$power_mode" || "$power_mode" =~ ^[0-9]+$ ]] || die "--power-mode must be a number, got '$power_mode'" 2
    if [[ -z "$from" ]]; then
        from="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
    fi
    if [[ -f "$from" ]]; then
        [[ "$from" == *.whl ]] || die "--from $from is a file but not a wheel (.whl)" 2
    elif [[ ! -f "$from/pyproject.toml" ]]; then
        die "--from $from is neither a wheel nor an edge-mer source folder (no pyproject.toml)" 2
    fi

    ((DRY_RUN)) && echo "dry run: commands are printed, not run"
    detect_release "$root" "$ROOT_GIVEN"
    report_packages
    check_system_tensorrt
    check_build_tools

    local venv_py="$prefix/bin/python" constraints="$prefix/constraints.txt" numpy_before=""
    PREFIX_DIR="$prefix"
    run "$PYTHON" -m venv --system-site-packages "$prefix"
    ((DRY_RUN)) || numpy_before="$(visible_numpy "$venv_py")"
    write_constraints "$venv_py" "$constraints" "$numpy_before"
    run "$venv_py" -m pip install --upgrade pip
    # no extra: the base requirements (numpy, held by the constraints, and tqdm) bring no OpenCV wheel
    run "$venv_py" -m pip install -c "$constraints" "$from"
    if [[ -f "$from" ]]; then
        # a changed wheel keeps its version number: put this one in place whatever was installed before
        run "$venv_py" -m pip install -c "$constraints" --no-deps --force-reinstall "$from"
    fi
    if [[ -n "$NVCC" ]]; then
        # built here against JetPack's numpy (pycuda's own build would take numpy 2 and not import on 1.x)
        run "$venv_py" -m pip install -c "$constraints" setuptools wheel
        run env "CUDA_ROOT=$(toolkit_of "$NVCC")" "PATH=$(dirname "$NVCC"):$PATH" \
            "$venv_py" -m pip install -c "$constraints" --no-build-isolation "pycuda>=2025.1.2"
    fi
    if ((with_ort)); then
        # the newest CPU wheel that accepts JetPack's numpy (JetPack 5.1's numpy 1.17: ONNX Runtime 1.10)
        run "$venv_py" -m pip install -c "$constraints" onnxruntime
    fi
    remove_opencv_wheels "$venv_py"
    check_numpy_kept "$venv_py" "$numpy_before"
    check_gstreamer "$venv_py"

    if [[ -n "$power_mode" ]]; then
        run sudo nvpmodel -m "$power_mode"
    fi
    if ((clocks)); then
        run sudo jetson_clocks
    fi
    run "$prefix/bin/edge-mer" doctor --no-torch
    echo "done: . $(quote "$prefix/bin/activate") && edge-mer doctor --selftest"
}

main "$@"
