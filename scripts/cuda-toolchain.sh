#!/usr/bin/env bash
# Installs the CUDA build pieces Recast needs from the Python registry into .cuda/ at the
# repository root (git-ignored), pinned by version and sha256 to the GPU machine's CUDA
# 13.0 (nvcc V13.0.88, driver 580; DESIGN.md §8: mixing versions gives PTX the driver
# rejects). No GPU and no system CUDA are needed.
#
#   scripts/cuda-toolchain.sh            nvcc and headers: enough to compile kernels/*.cu
#                                        to PTX (what CI checks)
#   scripts/cuda-toolchain.sh --link     also NVRTC, cuBLAS, cuRAND and a driver stub:
#                                        enough to build and link `recast --features cuda`
#
# Either way .cuda/home is a CUDA_HOME (bin, include, nvvm, lib) and the last line printed
# is `CUDA_HOME=<path>`. Idempotent.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.cuda"
home="$dest/home"
link=0
[[ "${1:-}" == "--link" ]] && link=1

if [[ "$(uname -sm)" != "Linux x86_64" ]]; then
    echo "CUDA toolchain: the pip CUDA packages are for x86-64 Linux only" >&2
    exit 1
fi

# name==version --hash: the compile set, then the link set.
compile_set=(
    "nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03"
    "nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0"
    "nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4"
    "nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649"
    "nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
)
link_set=(
    "nvidia-cuda-nvrtc==13.0.88 --hash=sha256:ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575"
    "nvidia-cublas==13.0.2.14 --hash=sha256:0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c"
    "nvidia-curand==10.4.0.35 --hash=sha256:1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc"
)

install_set() {
    local name="$1"
    shift
    local stamp="$dest/.installed-$name"
    local want
    want="$(printf '%s\n' "$@")"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    local tmp
    tmp="$(mktemp -d)"
    printf '%s\n' "$@" >"$tmp/requirements.txt"
    echo "CUDA toolchain: downloading the $name set ($(printf '%s\n' "$@" | cut -d' ' -f1 | tr '\n' ' '))"
    if ! python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
            --require-hashes -r "$tmp/requirements.txt" -d "$tmp/wheels" >"$tmp/log" 2>&1; then
        cat "$tmp/log" >&2
        rm -rf "$tmp"
        echo "CUDA toolchain: download of the $name set failed" >&2
        exit 1
    fi
    mkdir -p "$dest/pkgs"
    # Python's zipfile, not unzip: the machine may not have unzip. Wheels drop the
    # executable bit, so it is restored for the compiler's programs.
    python3 - "$dest/pkgs" "$tmp"/wheels/*.whl <<'PY'
import os, sys, zipfile
out = sys.argv[1]
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if not info.filename.startswith("nvidia/"):
                continue
            path = z.extract(info, out)
            if "/bin/" in info.filename and not info.is_dir():
                os.chmod(path, 0o755)
PY
    rm -rf "$tmp"
    echo "$want" >"$stamp"
}

install_set compile "${compile_set[@]}"
rm -rf "$home"
ln -s "$dest/pkgs/nvidia/cu13" "$home"

if [[ $link == 1 ]]; then
    install_set link "${link_set[@]}"
    # Unversioned names for the linker, next to the versioned libraries.
    for lib in cudart nvrtc cublas cublasLt curand; do
        found="$(cd "$home/lib" && ls "lib$lib.so."* 2>/dev/null | grep -v alt | sort | head -1)"
        [[ -n "$found" ]] || { echo "CUDA toolchain: lib$lib.so.* missing from $home/lib" >&2; exit 1; }
        ln -sf "$found" "$home/lib/lib$lib.so"
    done
    # The driver, libcuda.so.1, exists only on a GPU machine. A stub with the same soname
    # that defines every driver function cudarc binds lets the build link here; the real
    # driver replaces it at run time (as NVIDIA's own stubs do).
    stub="$home/lib/stubs/libcuda.so"
    if [[ ! -f "$stub" ]]; then
        bindings="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-0.19*/src/driver/sys/mod.rs' 2>/dev/null | head -1)"
        if [[ -z "$bindings" ]]; then
            (cd "$root" && cargo fetch --quiet) || true
            bindings="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-0.19*/src/driver/sys/mod.rs' | head -1)"
        fi
        [[ -n "$bindings" ]] || { echo "CUDA toolchain: cudarc's driver bindings not found (cargo fetch)" >&2; exit 1; }
        mkdir -p "$home/lib/stubs"
        grep -hoE "^pub unsafe fn cu[A-Za-z0-9_]*" "$bindings" | sed "s/^pub unsafe fn //" | sort -u \
            | sed 's/.*/void &(void) {}/' >"$dest/cuda-stub.c"
        cc -shared -fPIC -Wl,-soname,libcuda.so.1 "$dest/cuda-stub.c" -o "$stub"
        ln -sf libcuda.so "$home/lib/stubs/libcuda.so.1"
    fi
fi

"$home/bin/nvcc" --version | tail -2 | head -1
echo "CUDA_HOME=$home"
