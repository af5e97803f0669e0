#!/usr/bin/env bash
# Runs every test Recast has (the README's test command; CI runs it through .ci/run):
# formatting and clippy first, then every test in release mode, the fuzz suite
# (tests/fuzz.rs, about a minute) included.
# Installs what it needs: Open MPI for the distributed tests (apt-get), the wasm32 Rust
# target for plugins (via rustup), the Python
# environment of the Hugging Face parity tests and the Python and JavaScript plugin
# toolchains (.venv and scripts/js-tools, via scripts/plugin-tools.sh), MKL for the
# linear layers (.blas, via scripts/cpu-blas.sh), and nvcc to compile the CUDA kernels
# to PTX (.cuda, via scripts/cuda-kernels.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi

scripts/plugin-tools.sh

# Formatting (rustfmt.toml sets the project's width) and lints are checked like tests.
if command -v rustup >/dev/null 2>&1; then
    for component in rustfmt clippy; do
        rustup component list --installed | grep -q "^$component" || rustup component add "$component"
    done
fi
# Open MPI for the distributed tests: mpirun, and the headers and libclang the `mpi`
# crate binds against (Debian's packages; DESIGN.md §10). With it the host is built and
# tested with the `mpi` feature; without it, the tests check that a multi-rank job is
# refused with how to build one.
if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""
        [[ $(id -u) -ne 0 ]] && sudo="sudo"
        packages=(libopenmpi-dev openmpi-bin libclang-dev)
        $sudo apt-get install -y -qq "${packages[@]}" >/dev/null || { $sudo apt-get update -qq && $sudo apt-get install -y -qq "${packages[@]}" >/dev/null; }
    fi
fi
features=()
if command -v mpirun >/dev/null 2>&1 && command -v mpicc >/dev/null 2>&1; then
    features=(--features recast-host/mpi)
else
    echo "Open MPI is not installed: the distributed tests run without MPI" >&2
fi

cargo fmt --all --check
cargo fmt --all --check --manifest-path plugins/Cargo.toml
cargo clippy --release --workspace --all-targets -- -D warnings
if [[ ${#features[@]} -gt 0 ]]; then
    cargo clippy --release --workspace --all-targets "${features[@]}" -- -D warnings
fi

# Every CUDA kernel must compile (to PTX, with the pinned pip CUDA toolchain; no GPU).
scripts/cuda-kernels.sh

# MKL for the linear layers; the BLAS tests then insist on it.
scripts/cpu-blas.sh
if [[ -f .blas/mkl/.installed ]]; then
    export RECAST_REQUIRE_BLAS=1
fi

# Heavy tests run in release mode: the plugin runtime's timings (fuel, deadlines) are
# asserted there, and the release build is shared with the main job. One package at a
# time: the host's tests then build the host exactly as `cargo install --path host`
# does (tests/install.rs installs it without recompiling), which a workspace-wide build,
# unifying features with the SDK's dependencies, would not.
cargo test --release --no-fail-fast -p recast-host "${features[@]}" "$@"
if [[ $# -eq 0 ]]; then
    cargo test --release -p recast-sdk
fi
