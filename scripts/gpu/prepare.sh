#!/usr/bin/env bash
# Fill .gpu/ for check_flow.sh on a GPU machine that has no package index: a prebuilt
# pycuda (a .tgz of the installed package plus the wheels it imports) copied from FOLDER,
# and pytest's wheels downloaded here for that machine's Python, so that the GPU tests run
# there too. .gpu/ is kept out of git (.git/info/exclude).
#
#   bash scripts/gpu/prepare.sh FOLDER [--python 3.12]
#
# Then, on the GPU machine: PYCUDA_DIR=$PWD/.gpu OUT=... bash scripts/gpu/check_flow.sh
set -euo pipefail

die() { echo "prepare.sh: $*" >&2; exit 2; }

[ $# -ge 1 ] || die "usage: bash scripts/gpu/prepare.sh FOLDER [--python 3.12]"
src="$1"; shift
python_version="3.12"
while [ $# -gt 0 ]; do
    case "$1" in
        --python) python_version="$2"; shift 2 ;;
        *) die "unknown argument $1" ;;
    esac
done
compgen -G "$src/pycuda-*.tgz" >/dev/null || die "no pycuda-*.tgz in $src"

root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="$root/.gpu"
mkdir -p "$dest"
cp "$src"/* "$dest/"
grep -qx '/.gpu/' "$root/.git/info/exclude" 2>/dev/null || echo '/.gpu/' >> "$root/.git/info/exclude"
python3 -m pip download -q pytest -d "$dest" --only-binary=:all: --python-version "$python_version" \
    --platform manylinux2014_x86_64 || die "pytest's wheels could not be downloaded"
ls "$dest"
