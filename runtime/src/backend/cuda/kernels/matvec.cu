// matvec.cu — decode-time matrix-vector products: out[t, r] = Σ_c W[r, c]·x[t, c]
// for a few tokens t (1 ≤ ntok ≤ MV_MAXT).
//
// Quantized weights (Q4_0, Q4_1, Q8_0) run against activations quantized to
// 8 bits in blocks of 32 (quantize_act: x ≈ dx·qx, plus sx = dx·Σqx for the
// offset terms), with __dp4a doing four int8 products per instruction. Each
// warp owns MV_ROWS rows; each lane walks the row's 32-element blocks with a
// stride of 32, reading 16 (Q4) or 32 (Q8) quant bytes with aligned 16-byte
// loads, so a warp's loads of one row are contiguous; for long rows in short
// grids several warps share a row (`ks`). F16 and F32 weights
// use plain f32 arithmetic.

#define MV_MAXT 4
#ifndef MV_DIAG
#define MV_DIAG 0 // harness diagnostic: bit 0 no scale loads, bit 1 no activation loads
#endif
#ifndef MV_ROWS
#define MV_ROWS 1 // rows per warp; the host reads it from KernelConfig
#endif
#ifndef MV_UNROLL
#define MV_UNROLL 1 // blocks in flight per lane (KernelConfig)
#endif
#ifndef MV_PREFETCH
#define MV_PREFETCH 2 // weight reads before the dependent-launch wait (KernelConfig)
#endif

// One warp per 32-element block of one row: xq = round(x/d), d = amax/127.
extern "C" __global__ void quantize_act(const float* x, long long nblocks, signed char* xq,
                                        float2* xs) {
    pdl_entry();
    long long b = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (b >= nblocks) return;
    quantize_lane(x[b * 32 + threadIdx.x % 32], xq, xs, b);
}

// Dot of one 32-element weight block with one activation block.
__device__ __forceinline__ float block_dot(int ty, int4 wa, int4 wb, float d, float m, int4 xa,
                                           int4 xb, float2 s) {
    if (ty == TY_Q8_0) {
        int si = __dp4a(wa.x, xa.x, 0);
        si = __dp4a(wa.y, xa.y, si);
        si = __dp4a(wa.z, xa.z, si);
        si = __dp4a(wa.w, xa.w, si);
        si = __dp4a(wb.x, xb.x, si);
        si = __dp4a(wb.y, xb.y, si);
        si = __dp4a(wb.z, xb.z, si);
        si = __dp4a(wb.w, xb.w, si);
        return d * s.x * (float)si;
    }
    // Low nibbles are elements 0..15, high nibbles 16..31.
    int si = __dp4a(wa.x & 0x0f0f0f0f, xa.x, 0);
    si = __dp4a(wa.y & 0x0f0f0f0f, xa.y, si);
    si = __dp4a(wa.z & 0x0f0f0f0f, xa.z, si);
    si = __dp4a(wa.w & 0x0f0f0f0f, xa.w, si);
    si = __dp4a((wa.x >> 4) & 0x0f0f0f0f, xb.x, si);
    si = __dp4a((wa.y >> 4) & 0x0f0f0f0f, xb.y, si);
    si = __dp4a((wa.z >> 4) & 0x0f0f0f0f, xb.z, si);
    si = __dp4a((wa.w >> 4) & 0x0f0f0f0f, xb.w, si);
    if (ty == TY_Q4_0) return d * (s.x * (float)si - 8.f * s.y);
    return d * s.x * (float)si + m * s.y;
}

// Ask L2 for the bytes [p, p + n), one 128-byte line per thread per step.
__device__ __forceinline__ void prefetch_l2(const u8* p, long long n) {
    unsigned long long a = (unsigned long long)p & ~127ull, e = (unsigned long long)p + n;
    for (unsigned long long x = a + threadIdx.x * 128ull; x < e; x += blockDim.x * 128ull)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(x));
}

// One step of a lane's weight loads: MV_UNROLL blocks of each of its rows.
__device__ __forceinline__ void mv_load(int4 (&wa)[MV_ROWS][MV_UNROLL],
                                        int4 (&wb)[MV_ROWS][MV_UNROLL],
                                        float (&d)[MV_ROWS][MV_UNROLL],
                                        float (&m)[MV_ROWS][MV_UNROLL], const u8* w, const u16* dq,
                                        const u16* mq, int ty, int qb, int rows, int nb, int row0,
                                        int b0, int step) {
#pragma unroll
    for (int i = 0; i < MV_ROWS; i++) {
        int r = min(row0 + i, rows - 1);
#pragma unroll
        for (int u = 0; u < MV_UNROLL; u++) {
            // Blocks past the row's end reload block b0 (unused).
            int b = b0 + step * u < nb ? b0 + step * u : b0;
            long long blk = (long long)r * nb + b;
            const int4* p = (const int4*)(w + blk * qb);
            wa[i][u] = p[0];
            wb[i][u] = ty == TY_Q8_0 ? p[1] : make_int4(0, 0, 0, 0);
#if MV_DIAG & 1
            d[i][u] = 1.f + 1e-9f * (float)b;
#else
            d[i][u] = h2f(dq[blk]);
#endif
            m[i][u] = ty == TY_Q4_1 ? h2f(mq[blk]) : 0.f;
        }
    }
}

// NT: most tokens this instantiation handles (registers scale with it).
// KS warps of the 4-warp block share one row (split over its blocks: warp
// part p takes blocks p·32 + lane, stepping 32·KS) and their sums meet in
// shared memory in a fixed order, so short grids of long rows still have
// enough loads in flight; KS = 1 keeps one warp per row. Each lane takes
// MV_UNROLL blocks per step and issues all their loads before any
// arithmetic, so more bytes are in flight per warp.
template <int NT>
__device__ __forceinline__ void matvec_q_impl(const u8* w, int ty, int rows, int cols,
                                              const signed char* xq, const float2* xs, int ntok,
                                              float* out, int block, int add, float res, int ks,
                                              int pf, float* keep = nullptr) {
    __shared__ float red[4][MV_ROWS][NT];
    int lane = threadIdx.x % 32;
    int warp = threadIdx.x / 32;
    int part = warp % ks;
    int row0 = (block * (4 / ks) + warp / ks) * MV_ROWS;
    bool live = row0 < rows;
    int nb = cols / 32;
    long long nrow_blocks = (long long)rows * nb;
    int qb = ty == TY_Q8_0 ? 32 : 16;
    const u16* dq = (const u16*)(w + nrow_blocks * qb);
    const u16* mq = dq + nrow_blocks;
    float acc[MV_ROWS][NT];
#pragma unroll
    for (int i = 0; i < MV_ROWS; i++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[i][t] = 0.f;

    int step = 32 * ks;
    int b0 = live ? lane + 32 * part : nb;
    int4 wa[MV_ROWS][MV_UNROLL], wb[MV_ROWS][MV_UNROLL];
    float d[MV_ROWS][MV_UNROLL], m[MV_ROWS][MV_UNROLL];
    // Weights are never written by a kernel, so they may be read before
    // the wait for the previous kernel (common.cuh, pdl_entry): pf bit 0
    // asks L2 for the block's whole slice of the matrix, bit 1 loads each
    // lane's first step into registers (each compiled in by the same bit of
    // MV_PREFETCH; the host sets bit 0 for small launches only). A block
    // launched early (the previous kernel triggers its dependents at its
    // start) then overlaps its first DRAM reads with that kernel.
    bool pre = false;
#if MV_PREFETCH & 1
    if (pf & 1) {
        int per = (4 / ks) * MV_ROWS;
        long long r0 = (long long)block * per, r1 = min((long long)rows, r0 + per);
        if (r0 < r1) {
            prefetch_l2(w + r0 * nb * qb, (r1 - r0) * nb * qb);
            prefetch_l2((const u8*)(dq + r0 * nb), (r1 - r0) * nb * 2);
            if (ty == TY_Q4_1) prefetch_l2((const u8*)(mq + r0 * nb), (r1 - r0) * nb * 2);
        }
    }
#endif
#if MV_PREFETCH & 2
    if ((pf & 2) && b0 < nb) {
        mv_load(wa, wb, d, m, w, dq, mq, ty, qb, rows, nb, row0, b0, step);
        pre = true;
    }
#endif
    pdl_entry<1>();
    // The residual this launch adds to (add != 0), read right after the
    // wait so its round trip overlaps the products instead of trailing them.
    float old[MV_ROWS][NT];
#pragma unroll
    for (int i = 0; i < MV_ROWS; i++)
#pragma unroll
        for (int t = 0; t < NT; t++)
            old[i][t] = add && lane == 0 && part == 0 && t < ntok && row0 + i < rows
                            ? out[(long long)t * rows + row0 + i]
                            : 0.f;
    for (; b0 < nb; b0 += step * MV_UNROLL) {
        if (!pre) mv_load(wa, wb, d, m, w, dq, mq, ty, qb, rows, nb, row0, b0, step);
        pre = false;
#pragma unroll
        for (int u = 0; u < MV_UNROLL; u++) {
            int b = b0 + step * u;
            if (b >= nb) break;
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t < ntok) {
#if MV_DIAG & 2
                    int4 xa = make_int4(b, b + 1, b + 2, b + 3), xb = make_int4(b, b, b, b);
                    float2 s = make_float2(1.f, (float)b);
#else
                    const int4* p = (const int4*)(xq + ((long long)t * nb + b) * 32);
                    int4 xa = p[0], xb = p[1];
                    float2 s = xs[(long long)t * nb + b];
#endif
#pragma unroll
                    for (int i = 0; i < MV_ROWS; i++)
                        acc[i][t] += block_dot(ty, wa[i][u], wb[i][u], d[i][u], m[i][u], xa, xb, s);
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < MV_ROWS; i++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[i][t] = warp_sum(acc[i][t]);
    if (ks > 1) {
        if (lane == 0) {
#pragma unroll
            for (int i = 0; i < MV_ROWS; i++)
#pragma unroll
                for (int t = 0; t < NT; t++) red[warp][i][t] = acc[i][t];
        }
        __syncthreads();
        if (part != 0) return;
#pragma unroll
        for (int i = 0; i < MV_ROWS; i++)
#pragma unroll
            for (int t = 0; t < NT; t++) {
                float v = red[warp][i][t];
                for (int p = 1; p < ks; p++) v += red[warp + p][i][t];
                acc[i][t] = v;
            }
    }
#pragma unroll
    for (int i = 0; i < MV_ROWS; i++) {
#pragma unroll
        for (int t = 0; t < NT; t++) {
            int r = row0 + i;
            if (lane == 0 && t < ntok && r < rows) {
                float* o = out + (long long)t * rows + r;
                *o = add ? old[i][t] + res * acc[i][t] : acc[i][t];
                // The block's rows for an epilogue (keep[warp·MV_ROWS + i],
                // one token, ks = 1, no add), without reading `out` back.
                if (keep) keep[warp * MV_ROWS + i] = acc[i][t];
            }
        }
    }
}

// One token (decode). With add != 0 the product is added, × res, to what
// `out` holds (the residual update fused into the projection). ks: warps
// per row (1, 2 or 4); the grid has ceil(rows / (4 / ks · MV_ROWS)) blocks.
// pf: read the weights early (MV_PREFETCH), here and in the other three
// quantized mat-vecs.
extern "C" __global__ void matvec_q1(const u8* w, int ty, int rows, int cols,
                                     const signed char* xq, const float2* xs, int ntok,
                                     float* out, int add, float res, int ks, int pf) {
    matvec_q_impl<1>(w, ty, rows, cols, xq, xs, 1, out, blockIdx.x, add, res, ks, pf);
}

// One token against up to three weights that share the input (q/k/v,
// gate/up) in one launch: blocks [0, nb0) serve weight 0, the next nb1
// weight 1, the rest weight 2; each weight has its own type and output.
extern "C" __global__ void matvec_q1_multi(const u8* w0, int ty0, int rows0, float* out0,
                                           const u8* w1, int ty1, int rows1, float* out1,
                                           const u8* w2, int ty2, int rows2, float* out2,
                                           int nb0, int nb1, int cols, const signed char* xq,
                                           const float2* xs, int ks, int pf) {
    int b = blockIdx.x;
    if (b < nb0) {
        matvec_q_impl<1>(w0, ty0, rows0, cols, xq, xs, 1, out0, b, 0, 0.f, ks, pf);
    } else if (b < nb0 + nb1) {
        matvec_q_impl<1>(w1, ty1, rows1, cols, xq, xs, 1, out1, b - nb0, 0, 0.f, ks, pf);
    } else {
        matvec_q_impl<1>(w2, ty2, rows2, cols, xq, xs, 1, out2, b - nb0 - nb1, 0, 0.f, ks, pf);
    }
}

// One token's q/k/v products with RoPE and the cache write in the
// epilogue (what matvec_q1_multi followed by rope_kv computes, in one
// launch): blocks [0, nbq) take q's rows, the next nbk k's, the rest v's,
// 4·MV_ROWS rows per block (MV_ROWS a warp; a block's rows start at a
// multiple of 4, so a rotated pair (2p, 2p+1) is always in one block).
// After the products, each row's thread reads its pair from the output,
// rotates (q, k) with the same double-precision angle as rope_kv, writes
// it back and stores k and v in the cache at slot first_slot[0]. Rows of k
// and v number the cache's width.
extern "C" __global__ void matvec_qkv_rope(const u8* wq, int tyq, int rows_q, float* q,
                                           const u8* wk, int tyk, float* k, const u8* wv, int tyv,
                                           float* v, int rows_kv, int cols, const signed char* xq,
                                           const float2* xs, const u32* pos, const double* inv_freq,
                                           int head_dim, int n_rot, u8* kc, u8* vc,
                                           const u32* first_slot, int f16, int pf) {
    int per = 4 * MV_ROWS;
    int nbq = (rows_q + per - 1) / per, nbk = (rows_kv + per - 1) / per;
    int b = blockIdx.x, which = 0, rows = rows_q, ty = tyq;
    const u8* w = wq;
    float* out = q;
    if (b >= nbq + nbk) {
        which = 2, b -= nbq + nbk, rows = rows_kv, ty = tyv, w = wv, out = v;
    } else if (b >= nbq) {
        which = 1, b -= nbq, rows = rows_kv, ty = tyk, w = wk, out = k;
    }
    // Before the products (and so before their wait for the previous
    // kernel): this thread's rotation and cache slot. pos, inv_freq and
    // first_slot are step inputs copied before the step's first kernel and
    // tables uploaded at load; no kernel writes them.
    int lr = threadIdx.x, r = b * per + lr;
    bool act = lr < per && r < rows;
    bool rot = false;
    float c = 1.f, s = 0.f;
    long long dst = 0;
    if (act) {
        int p = (r % head_dim) / 2;
        rot = which < 2 && p < n_rot / 2;
        if (rot) {
            double theta = (double)pos[0] * inv_freq[p];
            double sn, cs;
            sincos(theta, &sn, &cs);
            c = (float)cs, s = (float)sn;
        }
        if (which > 0) dst = (long long)first_slot[0] * rows_kv + r;
    }
    __shared__ float keep[4 * MV_ROWS];
    matvec_q_impl<1>(w, ty, rows, cols, xq, xs, 1, out, b, 0, 0.f, 1, pf, keep);
    __syncthreads();
    if (!act) return;
    // A rotated pair (2p, 2p + 1) is two rows of this block.
    float x0 = keep[lr & ~1], x1 = keep[lr | 1];
    float y = (r & 1) ? x1 : x0;
    if (rot) {
        y = (r & 1) ? x0 * s + x1 * c : x0 * c - x1 * s;
        out[r] = y;
    }
    if (which == 0) return;
    u8* cache = which == 1 ? kc : vc;
    if (f16)
        ((u16*)cache)[dst] = f2h(y);
    else
        ((float*)cache)[dst] = y;
}

// Up to MV_MAXT tokens (short batches, speculative verification); add,
// res and ks as for matvec_q1.
extern "C" __global__ void matvec_q(const u8* w, int ty, int rows, int cols, const signed char* xq,
                                    const float2* xs, int ntok, float* out, int add, float res,
                                    int ks, int pf) {
    matvec_q_impl<MV_MAXT>(w, ty, rows, cols, xq, xs, ntok, out, blockIdx.x, add, res, ks, pf);
}

// F16 / F32 weights: one warp per row, 8 columns per lane per step.
extern "C" __global__ void matvec_f(const u8* w, int ty, int rows, int cols, const float* x,
                                    int ntok, float* out) {
    pdl_entry();
    int lane = threadIdx.x % 32;
    int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    float acc[MV_MAXT];
#pragma unroll
    for (int t = 0; t < MV_MAXT; t++) acc[t] = 0.f;
    for (int c = lane * 8; c < cols; c += 256) {
        float wv[8];
        if (ty == TY_F16) {
            uint4 p = *(const uint4*)((const u16*)w + (long long)r * cols + c);
            u32 pw[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                wv[2 * k] = h2f((u16)(pw[k] & 0xffff));
                wv[2 * k + 1] = h2f((u16)(pw[k] >> 16));
            }
        } else {
            const float4* p = (const float4*)((const float*)w + (long long)r * cols + c);
            float4 a = p[0], b = p[1];
            wv[0] = a.x; wv[1] = a.y; wv[2] = a.z; wv[3] = a.w;
            wv[4] = b.x; wv[5] = b.y; wv[6] = b.z; wv[7] = b.w;
        }
#pragma unroll
        for (int t = 0; t < MV_MAXT; t++) {
            if (t < ntok) {
                const float4* xp = (const float4*)(x + (long long)t * cols + c);
                float4 a = xp[0], b = xp[1];
                acc[t] += wv[0] * a.x + wv[1] * a.y + wv[2] * a.z + wv[3] * a.w + wv[4] * b.x +
                          wv[5] * b.y + wv[6] * b.z + wv[7] * b.w;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < MV_MAXT; t++) {
        float v = warp_sum(acc[t]);
        if (lane == 0 && t < ntok) out[(long long)t * rows + r] = v;
    }
}
