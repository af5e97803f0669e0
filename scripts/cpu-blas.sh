#!/usr/bin/env bash
# Installs Intel MKL into .blas/mkl/lib at the repository root, where `recast` finds it
# at run time for its linear layers (f32 GEMMs, and bf16 GEMMs on AMX / AVX512-BF16).
# MKL comes from the Python registry's `mkl` wheel, pinned by version and sha256; only
# the libraries of its sequential threading layer are unpacked (Recast splits GEMMs over
# its own threads). Idempotent; prints one line. Never fails its caller: without MKL,
# Recast multiplies with candle's matmul (or a system OpenBLAS / MKL, or $RECAST_BLAS).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.blas/mkl"
version="2026.2.1"
sha256="76322a3abf512594ab7b4e82cb72df91e4e5d195498769aa8b292373c1ddd6d1"
stamp="$dest/.installed"

if [[ "$(uname -sm)" != "Linux x86_64" ]]; then
    echo "MKL: only for x86-64 Linux; Recast uses candle's matmul here"
    exit 0
fi
if [[ -f "$stamp" && "$(cat "$stamp")" == "$version $sha256" ]]; then
    echo "MKL $version is installed in $dest"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "mkl==$version --hash=sha256:$sha256" >"$tmp/requirements.txt"
if ! python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --require-hashes -r "$tmp/requirements.txt" -d "$tmp/wheel" >"$tmp/log" 2>&1; then
    cat "$tmp/log" >&2
    echo "MKL: download failed; Recast falls back to candle's matmul" >&2
    exit 0
fi

rm -rf "$dest"
mkdir -p "$dest/lib"
# Python's zipfile, not unzip: the machine may not have unzip.
python3 - "$tmp"/wheel/mkl-*.whl "$dest/lib" <<'PY'
import os, re, shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
keep = re.compile(r"/lib/(libmkl_(?:rt|core|sequential|intel_lp64|def|mc3|avx2|avx512|avx10|vml_[a-z0-9]+)\.so\.\d+)$")
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        m = keep.search(name)
        if m:
            with z.open(name) as src, open(os.path.join(out, m.group(1)), "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
echo "$version $sha256" >"$stamp"
echo "installed MKL $version into $dest"
