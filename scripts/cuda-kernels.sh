#!/usr/bin/env bash
# Compiles every CUDA kernel in kernels/*.cu to PTX with the pinned pip toolchain
# (scripts/cuda-toolchain.sh): what CI checks on a machine without a GPU, so a kernel
# that does not compile fails the tests, and assembles each for sm_90 (the H100/H200) so
# ptxas's limits are checked too. Output lands in target/ptx/ (the `cuda` build compiles
# its own PTX in build.rs). Prints one line per kernel and its entry points.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
home="$(bash scripts/cuda-toolchain.sh | sed -n 's/^CUDA_HOME=//p')"
mkdir -p target/ptx
for source in kernels/*.cu; do
    name="$(basename "$source" .cu)"
    "$home/bin/nvcc" -ptx -O3 -std=c++17 -arch=compute_"${CUDA_COMPUTE_CAP:-80}" "$source" -o "target/ptx/$name.ptx"
    echo "kernels/$name.cu → PTX: $(grep -o '^\.visible \.entry [a-z_0-9]*' "target/ptx/$name.ptx" | sed 's/.* //' | tr '\n' ' ')"
    # Also through ptxas for the GPU machine's Hopper (sm_90): resource limits (registers,
    # local memory) fail here rather than at the first launch there.
    "$home/bin/nvcc" -cubin -O3 -std=c++17 -arch=sm_90 -Xptxas -warn-spills,-warn-lmem-usage "$source" -o "target/ptx/$name.sm_90.cubin" 2>"target/ptx/$name.ptxas.log" \
        || { cat "target/ptx/$name.ptxas.log" >&2; exit 1; }
done
