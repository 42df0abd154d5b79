// Fused attention forward (FlashAttention-2 style, Dao 2023): softmax(q k^T
// * scale) v over key tiles with an online softmax, so the N x M scores are
// never written to memory. Every sum and the softmax run in f32.
// CPU reference: src/ops/attention.rs (`FlashAttention::cpu_fwd`, and
// `flash_attention_reference` built from candle's generic ops).
//
// Shapes: q (B, H, N, Dh), k and v (B, H, M, Dh), out (B, H, N, Dh), all
// contiguous. The mask is per token, never N x M: `qseg` (B, N) and `kseg`
// (B, M) u32 segment ids (or both null: everything visible). Query i sees key
// j iff kseg[j] != 0 and qseg[i] == kseg[j]: segment 0 is padding, seen by
// no query; a query of segment 0 sees nothing and its output is 0. A key
// padding mask is "1 for every query, 1 or 0 per key"; packed clips are "clip
// index + 1 per token". A query row with nothing visible gives 0, not NaN.
//
// Two kernels:
// - `attn_mma_*` (bf16, f16): tensor cores through `mma.sync.m16n8k16` with
//   f32 accumulators. A block is 4 warps, each owning 16 query rows (64 per
//   block); K and V tiles of 64 keys go through shared memory. The f32
//   accumulator layout of m16n8k16 is fixed by the PTX ISA (thread `lane`
//   holds rows lane/4 and lane/4 + 8), so the row max and sum of the online
//   softmax stay in registers and the probabilities are fed back as the A
//   operand of the P V product without a trip through shared memory.
//   The head dimension is padded with zeros to DP, a multiple of 16 (XL's 72
//   runs as 80).
// - `attn_scalar_*` (every type; the only one for f32): CUDA cores, 4
//   threads per query each holding a quarter of the head dimension, K and V
//   tiles of 32 keys in shared memory as f32. Exact f32 arithmetic, for the
//   f32 parity test and head sizes the tensor-core kernel does not cover.
// Both take head dims up to 128 (the Rust side checks) and any N, M.
#include "common.cuh"

// ---------------------------------------------------------------------------
// the tensor-core kernel

// Two 16-bit values as the b32 register an mma operand takes: `lo` is the
// element with the lower column (or row) index.
template <typename T> __device__ __forceinline__ unsigned pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned pack2<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned *>(&v);
}
template <> __device__ __forceinline__ unsigned pack2<__half>(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned *>(&v);
}

template <typename T> __device__ __forceinline__ unsigned pack2_raw(T lo, T hi) {
    unsigned short l = *reinterpret_cast<unsigned short *>(&lo);
    unsigned short h = *reinterpret_cast<unsigned short *>(&hi);
    return (unsigned)l | ((unsigned)h << 16);
}

// d = a b + d for a 16x16 (row) by 16x8 (col) product.
template <typename T>
__device__ __forceinline__ void mma16816(float d[4], const unsigned a[4], unsigned b0, unsigned b1);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float d[4], const unsigned a[4],
                                                        unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float d[4], const unsigned a[4], unsigned b0,
                                                 unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The pair (row, col), (row, col + 1) of a (rows, dh) matrix as one b32, or
// zeros outside it. `dh` and `col` are even, so the pair is 4-byte aligned
// and never straddles the end of a row.
template <typename T>
__device__ __forceinline__ unsigned load_pair(const T *base, int row, int col, int rows, int dh) {
    if (row < rows && col < dh) {
        return *reinterpret_cast<const unsigned *>(base + (size_t)row * dh + col);
    }
    return 0u;
}

constexpr int MMA_BQ = 64;  // query rows per block: 4 warps x 16
constexpr int MMA_BK = 64;  // keys per shared-memory tile

template <typename T, int DP>
__device__ void attn_mma(const T *__restrict__ q, const T *__restrict__ k,
                         const T *__restrict__ v, const unsigned *__restrict__ qseg,
                         const unsigned *__restrict__ kseg, T *__restrict__ out, int heads, int n,
                         int m, int dh, float scale) {
    // +8 elements per row: rows then start 4 banks apart, so the fragment
    // loads below hit 32 different banks
    constexpr int STRIDE = DP + 8;
    __shared__ __align__(16) T ks[MMA_BK * STRIDE];
    __shared__ __align__(16) T vs[MMA_BK * STRIDE];
    __shared__ unsigned ksg[MMA_BK];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, t = lane & 3;  // the mma's groupID and threadID_in_group
    const int bh = blockIdx.y, b = bh / heads;
    const T *qb = q + (size_t)bh * n * dh;
    const T *kb = k + (size_t)bh * m * dh;
    const T *vb = v + (size_t)bh * m * dh;
    T *ob = out + (size_t)bh * n * dh;
    const float scale_log2 = scale * 1.4426950408889634f;  // softmax through exp2

    // this thread's two query rows; rows past the end see nothing
    const int r0 = blockIdx.x * MMA_BQ + warp * 16 + g, r1 = r0 + 8;
    const unsigned seg0 = r0 < n ? (qseg ? qseg[(size_t)b * n + r0] : 1u) : 0u;
    const unsigned seg1 = r1 < n ? (qseg ? qseg[(size_t)b * n + r1] : 1u) : 0u;

    // Q as A fragments, one per 16 columns of the head dimension
    unsigned qf[DP / 16][4];
#pragma unroll
    for (int kc = 0; kc < DP / 16; ++kc) {
        const int col = kc * 16 + 2 * t;
        qf[kc][0] = load_pair(qb, r0, col, n, dh);
        qf[kc][1] = load_pair(qb, r1, col, n, dh);
        qf[kc][2] = load_pair(qb, r0, col + 8, n, dh);
        qf[kc][3] = load_pair(qb, r1, col + 8, n, dh);
    }

    float o[DP / 8][4];
#pragma unroll
    for (int dc = 0; dc < DP / 8; ++dc) {
        o[dc][0] = o[dc][1] = o[dc][2] = o[dc][3] = 0.f;
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;  // running row maxima (log2 units)
    float l0 = 0.f, l1 = 0.f;                // running row sums

    for (int j0 = 0; j0 < m; j0 += MMA_BK) {
        __syncthreads();  // every warp is done with the previous tile
        for (int e = threadIdx.x; e < MMA_BK * (DP / 2); e += blockDim.x) {
            const int r = e / (DP / 2), col = 2 * (e % (DP / 2));
            // zeros past the last key and the head dimension: a masked
            // probability is 0, and 0 times garbage could be NaN
            *reinterpret_cast<unsigned *>(ks + r * STRIDE + col) = load_pair(kb, j0 + r, col, m, dh);
            *reinterpret_cast<unsigned *>(vs + r * STRIDE + col) = load_pair(vb, j0 + r, col, m, dh);
        }
        if (threadIdx.x < MMA_BK) {
            const int j = j0 + threadIdx.x;
            ksg[threadIdx.x] = j < m ? (kseg ? kseg[(size_t)b * m + j] : 1u) : 0u;
        }
        __syncthreads();

        // S = Q K^T for 16 rows x 64 keys: s[nc] covers keys nc*8 .. nc*8+7;
        // s[nc][0..2] are row g, keys nc*8 + 2t + {0, 1}; s[nc][2..4] row g + 8
        float s[MMA_BK / 8][4];
#pragma unroll
        for (int nc = 0; nc < MMA_BK / 8; ++nc) {
            s[nc][0] = s[nc][1] = s[nc][2] = s[nc][3] = 0.f;
            const T *krow = ks + (nc * 8 + g) * STRIDE + 2 * t;
#pragma unroll
            for (int kc = 0; kc < DP / 16; ++kc) {
                const unsigned b0 = *reinterpret_cast<const unsigned *>(krow + kc * 16);
                const unsigned b1 = *reinterpret_cast<const unsigned *>(krow + kc * 16 + 8);
                mma16816<T>(s[nc], qf[kc], b0, b1);
            }
        }

        // mask, scale, and the tile's row maxima
        float tmax0 = -INFINITY, tmax1 = -INFINITY;
#pragma unroll
        for (int nc = 0; nc < MMA_BK / 8; ++nc) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const unsigned ksv = ksg[nc * 8 + 2 * t + e];
                s[nc][e] = (ksv != 0u && ksv == seg0) ? s[nc][e] * scale_log2 : -INFINITY;
                s[nc][2 + e] = (ksv != 0u && ksv == seg1) ? s[nc][2 + e] * scale_log2 : -INFINITY;
                tmax0 = fmaxf(tmax0, s[nc][e]);
                tmax1 = fmaxf(tmax1, s[nc][2 + e]);
            }
        }
        // a row is spread over the 4 lanes of its group (lanes differing in bits 0, 1)
        tmax0 = fmaxf(tmax0, __shfl_xor_sync(0xffffffffu, tmax0, 1));
        tmax0 = fmaxf(tmax0, __shfl_xor_sync(0xffffffffu, tmax0, 2));
        tmax1 = fmaxf(tmax1, __shfl_xor_sync(0xffffffffu, tmax1, 1));
        tmax1 = fmaxf(tmax1, __shfl_xor_sync(0xffffffffu, tmax1, 2));
        const float new0 = fmaxf(mx0, tmax0), new1 = fmaxf(mx1, tmax1);
        // a row that has seen nothing yet keeps -inf; subtract 0 there
        // instead, so that -inf - -inf never makes a NaN
        const float base0 = new0 == -INFINITY ? 0.f : new0;
        const float base1 = new1 == -INFINITY ? 0.f : new1;
        const float alpha0 = exp2f(mx0 - base0), alpha1 = exp2f(mx1 - base1);
        float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
        for (int nc = 0; nc < MMA_BK / 8; ++nc) {
            s[nc][0] = exp2f(s[nc][0] - base0);
            s[nc][1] = exp2f(s[nc][1] - base0);
            s[nc][2] = exp2f(s[nc][2] - base1);
            s[nc][3] = exp2f(s[nc][3] - base1);
            sum0 += s[nc][0] + s[nc][1];
            sum1 += s[nc][2] + s[nc][3];
        }
        sum0 += __shfl_xor_sync(0xffffffffu, sum0, 1);
        sum0 += __shfl_xor_sync(0xffffffffu, sum0, 2);
        sum1 += __shfl_xor_sync(0xffffffffu, sum1, 1);
        sum1 += __shfl_xor_sync(0xffffffffu, sum1, 2);
        l0 = l0 * alpha0 + sum0;
        l1 = l1 * alpha1 + sum1;
        mx0 = new0;
        mx1 = new1;
#pragma unroll
        for (int dc = 0; dc < DP / 8; ++dc) {
            o[dc][0] *= alpha0;
            o[dc][1] *= alpha0;
            o[dc][2] *= alpha1;
            o[dc][3] *= alpha1;
        }

        // O += P V, 16 keys at a time. P's accumulator layout is the A
        // operand's: keys kc*16 + 2t + {0,1} are s[2kc][0..2] (row g) and
        // s[2kc][2..4] (row g + 8); keys + 8 are s[2kc + 1]
#pragma unroll
        for (int kc = 0; kc < MMA_BK / 16; ++kc) {
            unsigned a[4];
            a[0] = pack2<T>(s[2 * kc][0], s[2 * kc][1]);
            a[1] = pack2<T>(s[2 * kc][2], s[2 * kc][3]);
            a[2] = pack2<T>(s[2 * kc + 1][0], s[2 * kc + 1][1]);
            a[3] = pack2<T>(s[2 * kc + 1][2], s[2 * kc + 1][3]);
            const T *vrow = vs + (kc * 16 + 2 * t) * STRIDE + g;
#pragma unroll
            for (int dc = 0; dc < DP / 8; ++dc) {
                // B = V (keys x dims): b0, b1 are keys 2t, 2t + 1 at dim
                // dc*8 + g; b2, b3 the same 8 keys further on
                const T *vc = vrow + dc * 8;
                const unsigned b0 = pack2_raw<T>(vc[0], vc[STRIDE]);
                const unsigned b1 = pack2_raw<T>(vc[8 * STRIDE], vc[9 * STRIDE]);
                mma16816<T>(o[dc], a, b0, b1);
            }
        }
    }

    // normalise and write rows g and g + 8, dims dc*8 + 2t + {0, 1}
    const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f;
    const float inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
#pragma unroll
    for (int dc = 0; dc < DP / 8; ++dc) {
        const int col = dc * 8 + 2 * t;
        if (col < dh) {
            if (r0 < n) {
                *reinterpret_cast<unsigned *>(ob + (size_t)r0 * dh + col) =
                    pack2<T>(o[dc][0] * inv0, o[dc][1] * inv0);
            }
            if (r1 < n) {
                *reinterpret_cast<unsigned *>(ob + (size_t)r1 * dh + col) =
                    pack2<T>(o[dc][2] * inv1, o[dc][3] * inv1);
            }
        }
    }
}

#define ATTN_MMA(NAME, T, DP)                                                                  \
    extern "C" __global__ void __launch_bounds__(128)                                          \
        NAME(const T *q, const T *k, const T *v, const unsigned *qseg, const unsigned *kseg,   \
             T *out, int heads, int n, int m, int dh, float scale) {                           \
        attn_mma<T, DP>(q, k, v, qseg, kseg, out, heads, n, m, dh, scale);                     \
    }

#define ATTN_MMA_ALL(TNAME, T)                                                                 \
    ATTN_MMA(attn_mma_##TNAME##_d16, T, 16)                                                    \
    ATTN_MMA(attn_mma_##TNAME##_d32, T, 32)                                                    \
    ATTN_MMA(attn_mma_##TNAME##_d48, T, 48)                                                    \
    ATTN_MMA(attn_mma_##TNAME##_d64, T, 64)                                                    \
    ATTN_MMA(attn_mma_##TNAME##_d80, T, 80)                                                    \
    ATTN_MMA(attn_mma_##TNAME##_d96, T, 96)                                                    \
    ATTN_MMA(attn_mma_##TNAME##_d112, T, 112)                                                  \
    ATTN_MMA(attn_mma_##TNAME##_d128, T, 128)

ATTN_MMA_ALL(bf16, __nv_bfloat16)
ATTN_MMA_ALL(f16, __half)

// ---------------------------------------------------------------------------
// the CUDA-core kernel

constexpr int SCALAR_BQ = 32;   // queries per block: 128 threads, 4 per query
constexpr int SCALAR_BK = 32;   // keys per shared-memory tile
constexpr int SCALAR_DMAX = 128;

// DPL: head dims per thread (a quarter of the head, rounded up): thread
// `sub` of a query holds dims sub, sub + 4, sub + 8, ...
template <typename T, int DPL>
__device__ void attn_scalar(const T *__restrict__ q, const T *__restrict__ k,
                            const T *__restrict__ v, const unsigned *__restrict__ qseg,
                            const unsigned *__restrict__ kseg, T *__restrict__ out, int heads,
                            int n, int m, int dh, float scale) {
    __shared__ float ks[SCALAR_BK][SCALAR_DMAX];
    __shared__ float vs[SCALAR_BK][SCALAR_DMAX];
    __shared__ unsigned ksg[SCALAR_BK];

    const int bh = blockIdx.y, b = bh / heads;
    const int qi = blockIdx.x * SCALAR_BQ + threadIdx.x / 4;
    const int sub = threadIdx.x % 4;
    const T *qb = q + (size_t)bh * n * dh;
    const T *kb = k + (size_t)bh * m * dh;
    const T *vb = v + (size_t)bh * m * dh;
    const bool row_ok = qi < n;
    const unsigned seg = row_ok ? (qseg ? qseg[(size_t)b * n + qi] : 1u) : 0u;

    float qr[DPL], acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
        const int d = sub + 4 * i;
        qr[i] = (row_ok && d < dh) ? to_float(qb[(size_t)qi * dh + d]) * scale : 0.f;
        acc[i] = 0.f;
    }
    float mx = -INFINITY, l = 0.f;
    // columns past dh are read (times q = 0) but never loaded: zero them
    // once, since 0 times whatever shared memory held could be NaN
    for (int e = threadIdx.x; e < SCALAR_BK * SCALAR_DMAX; e += blockDim.x) {
        ks[e / SCALAR_DMAX][e % SCALAR_DMAX] = 0.f;
        vs[e / SCALAR_DMAX][e % SCALAR_DMAX] = 0.f;
    }

    for (int j0 = 0; j0 < m; j0 += SCALAR_BK) {
        __syncthreads();
        for (int e = threadIdx.x; e < SCALAR_BK * dh; e += blockDim.x) {
            const int r = e / dh, c = e % dh, j = j0 + r;
            ks[r][c] = j < m ? to_float(kb[(size_t)j * dh + c]) : 0.f;
            vs[r][c] = j < m ? to_float(vb[(size_t)j * dh + c]) : 0.f;
        }
        if (threadIdx.x < SCALAR_BK) {
            const int j = j0 + threadIdx.x;
            ksg[threadIdx.x] = j < m ? (kseg ? kseg[(size_t)b * m + j] : 1u) : 0u;
        }
        __syncthreads();

        float s[SCALAR_BK];
        float tmax = -INFINITY;
#pragma unroll
        for (int r = 0; r < SCALAR_BK; ++r) {
            float part = 0.f;
#pragma unroll
            for (int i = 0; i < DPL; ++i) {
                const int d = sub + 4 * i;
                // d < SCALAR_DMAX always; dims past dh hold q = 0
                part += qr[i] * ks[r][d];
            }
            // every lane runs the shuffles (no early exit above), as they need
            part += __shfl_xor_sync(0xffffffffu, part, 1);
            part += __shfl_xor_sync(0xffffffffu, part, 2);
            const unsigned ksv = ksg[r];
            s[r] = (ksv != 0u && ksv == seg) ? part : -INFINITY;
            tmax = fmaxf(tmax, s[r]);
        }
        if (tmax == -INFINITY) {
            continue;  // nothing visible in this tile (the loop's sync is at its top)
        }
        const float mnew = fmaxf(mx, tmax);
        const float alpha = expf(mx - mnew);  // mx = -inf: 0, and acc, l are 0 anyway
        l *= alpha;
#pragma unroll
        for (int i = 0; i < DPL; ++i) {
            acc[i] *= alpha;
        }
#pragma unroll
        for (int r = 0; r < SCALAR_BK; ++r) {
            const float p = expf(s[r] - mnew);
            l += p;
#pragma unroll
            for (int i = 0; i < DPL; ++i) {
                acc[i] += p * vs[r][sub + 4 * i];
            }
        }
        mx = mnew;
    }

    if (row_ok) {
        const float inv = l > 0.f ? 1.f / l : 0.f;
        T *orow = out + (size_t)bh * n * dh + (size_t)qi * dh;
#pragma unroll
        for (int i = 0; i < DPL; ++i) {
            const int d = sub + 4 * i;
            if (d < dh) {
                orow[d] = from_float<T>(acc[i] * inv);
            }
        }
    }
}

#define ATTN_SCALAR(NAME, T, DPL)                                                              \
    extern "C" __global__ void __launch_bounds__(128)                                          \
        NAME(const T *q, const T *k, const T *v, const unsigned *qseg, const unsigned *kseg,   \
             T *out, int heads, int n, int m, int dh, float scale) {                           \
        attn_scalar<T, DPL>(q, k, v, qseg, kseg, out, heads, n, m, dh, scale);                 \
    }

#define ATTN_SCALAR_ALL(TNAME, T)                                                              \
    ATTN_SCALAR(attn_scalar_##TNAME##_l8, T, 8)                                                \
    ATTN_SCALAR(attn_scalar_##TNAME##_l16, T, 16)                                              \
    ATTN_SCALAR(attn_scalar_##TNAME##_l32, T, 32)

ATTN_SCALAR_ALL(f32, float)
ATTN_SCALAR_ALL(bf16, __nv_bfloat16)
ATTN_SCALAR_ALL(f16, __half)
