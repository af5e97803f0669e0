// Permute and unpermute of the MoE layer: tokens' rows sorted by expert so every
// expert's rows are contiguous (its GEMM reads one block), and back.
//   moe_positions       where every slot (token t's j-th choice, t*k + j) goes: expert e's
//                       rows start after the rows of experts < e, and within an expert
//                       slots keep token order (deterministic, as the CPU path).
//   moe_permute         rows[r] = x[token of slot_of_row[r]]           (the gather)
//   moe_permute_backward dx[t] = Σ_j drows[row_of_slot[t*k + j]]        (no atomics)
#include "common.cuh"

// One block per expert, scanning the slots in order in tiles of blockDim.x (a multiple
// of 32, at most 1024).
extern "C" __global__ void moe_positions(const uint32_t* __restrict__ chosen, const uint32_t* __restrict__ counts, uint32_t* __restrict__ row_of_slot,
                                         uint32_t* __restrict__ slot_of_row, int slots) {
    __shared__ uint32_t warp_totals[32];
    __shared__ uint32_t base;
    const uint32_t e = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (threadIdx.x == 0) {
        uint32_t b = 0;
        for (uint32_t i = 0; i < e; ++i) b += counts[i];
        base = b;
    }
    __syncthreads();
    for (int start = 0; start < slots; start += blockDim.x) {
        const int s = start + threadIdx.x;
        const bool mine = s < slots && chosen[s] == e;
        const uint32_t ballot = __ballot_sync(0xffffffffu, mine);
        if (lane == 0) warp_totals[warp] = __popc(ballot);
        __syncthreads();
        uint32_t before = __popc(ballot & ((1u << lane) - 1u)), tile_total = 0;
        for (int w = 0; w < warps; ++w) {
            if (w < warp) before += warp_totals[w];
            tile_total += warp_totals[w];
        }
        if (mine) {
            const uint32_t row = base + before;
            row_of_slot[s] = row;
            slot_of_row[row] = (uint32_t)s;
        }
        __syncthreads();
        if (threadIdx.x == 0) base += tile_total;
        __syncthreads();
    }
}

// One block per routed row, threads across the hidden dimension.
template <typename T>
__device__ void permute(const T* __restrict__ x, const uint32_t* __restrict__ slot_of_row, T* __restrict__ rows, int d, int k) {
    const size_t r = blockIdx.x;
    const size_t t = slot_of_row[r] / (uint32_t)k;
    for (int i = threadIdx.x; i < d; i += blockDim.x) rows[r * d + i] = x[t * d + i];
}

// One block per token.
template <typename T>
__device__ void permute_backward(const T* __restrict__ grad_rows, const uint32_t* __restrict__ row_of_slot, T* __restrict__ grad_x, int d, int k) {
    const size_t t = blockIdx.x;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float acc = 0.f;
        for (int j = 0; j < k; ++j) acc += load_f32(grad_rows + (size_t)row_of_slot[t * k + j] * d + i);
        store_f32(grad_x + t * d + i, acc);
    }
}

#define PERMUTE_OPS(NAME, T)                                                                                                                    \
    extern "C" __global__ void moe_permute_##NAME(const T* x, const uint32_t* slot_of_row, T* rows, int d, int k) {                            \
        permute(x, slot_of_row, rows, d, k);                                                                                                    \
    }                                                                                                                                           \
    extern "C" __global__ void moe_permute_backward_##NAME(const T* grad_rows, const uint32_t* row_of_slot, T* grad_x, int d, int k) {          \
        permute_backward(grad_rows, row_of_slot, grad_x, d, k);                                                                                 \
    }

PERMUTE_OPS(f32, float)
PERMUTE_OPS(bf16, bf16)
