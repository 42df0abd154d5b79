// Rotary position embedding on interleaved pairs (candle-nn's `rope_i`
// layout): (x[2i], x[2i+1]) turns by the angle whose cosine and sine are
// cos[pos, i], sin[pos, i]. `sign` -1 turns the other way: the transpose,
// which is the backward pass. CPU reference: src/ops/fused.rs (`Rope`).
//
// x, out: (B, H, N, Dh) in T; cos, sin: (N, Dh / 2) always f32 (the tables
// are exact in f32 and tiny; rounding them to bf16 would add an error of
// 2^-9 to every rotation). One thread per pair, grid-stride.
#include "common.cuh"

template <typename T>
__device__ void rope(const T *__restrict__ x, const float *__restrict__ cos,
                     const float *__restrict__ sin, T *__restrict__ out,
                     unsigned long long pairs, int n, int half, float sign) {
    for (unsigned long long p = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; p < pairs;
         p += (unsigned long long)gridDim.x * blockDim.x) {
        const int i = (int)(p % half);
        const int pos = (int)((p / half) % n);
        const float a = to_float(x[2 * p]);
        const float b = to_float(x[2 * p + 1]);
        const float c = cos[pos * half + i];
        const float s = sign * sin[pos * half + i];
        out[2 * p] = from_float<T>(a * c - b * s);
        out[2 * p + 1] = from_float<T>(a * s + b * c);
    }
}

#define ROPE(NAME, T)                                                                          \
    extern "C" __global__ void NAME(const T *x, const float *cos, const float *sin, T *out,     \
                                    unsigned long long pairs, int n, int half, float sign) {  \
        rope<T>(x, cos, sin, out, pairs, n, half, sign);                                       \
    }

ROPE(rope_f32, float)
ROPE(rope_bf16, __nv_bfloat16)
ROPE(rope_f16, __half)
