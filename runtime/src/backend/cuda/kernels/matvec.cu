// matvec.cu — decode-time matrix-vector products: out[t, r] = Σ_c W[r, c]·x[t, c]
// for a few tokens t (1 ≤ ntok ≤ MV_MAXT).
//
// Quantized weights (Q4_0, Q4_1, Q8_0) run against activations quantized to
// 8 bits in blocks of 32 (quantize_act: x ≈ dx·qx, plus sx = dx·Σqx for the
// offset terms), with __dp4a doing four int8 products per instruction. Each
// warp owns MV_ROWS rows; each lane walks the row's 32-element blocks with a
// stride of 32, reading 16 (Q4) or 32 (Q8) quant bytes with aligned 16-byte
// loads, so a warp's loads of one row are contiguous. F16 and F32 weights
// use plain f32 arithmetic.

#define MV_MAXT 4
#ifndef MV_ROWS
#define MV_ROWS 2 // rows per warp; the host reads it from KernelConfig
#endif

// One warp per 32-element block of one row: xq = round(x/d), d = amax/127.
extern "C" __global__ void quantize_act(const float* x, long long nblocks, signed char* xq,
                                        float2* xs) {
    long long b = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (b >= nblocks) return;
    int lane = threadIdx.x % 32;
    float v = x[b * 32 + lane];
    float amax = warp_max(fabsf(v));
    float d = amax / 127.f;
    int q = d == 0.f ? 0 : __float2int_rn(v / d);
    xq[b * 32 + lane] = (signed char)q;
    float s = warp_sum((float)q);
    if (lane == 0) xs[b] = make_float2(d, d * s);
}

extern "C" __global__ void matvec_q(const u8* w, int ty, int rows, int cols, const signed char* xq,
                                    const float2* xs, int ntok, float* out) {
    int lane = threadIdx.x % 32;
    int row0 = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * MV_ROWS;
    if (row0 >= rows) return;
    int nb = cols / 32;
    long long nrow_blocks = (long long)rows * nb;
    const u16* dq = (const u16*)(w + nrow_blocks * (ty == TY_Q8_0 ? 32 : 16));
    const u16* mq = dq + nrow_blocks;
    float acc[MV_ROWS][MV_MAXT];
#pragma unroll
    for (int i = 0; i < MV_ROWS; i++)
#pragma unroll
        for (int t = 0; t < MV_MAXT; t++) acc[i][t] = 0.f;

    for (int b = lane; b < nb; b += 32) {
        // The activation block of every token, shared by this warp's rows.
        int4 xa[MV_MAXT], xb[MV_MAXT];
        float2 s[MV_MAXT];
#pragma unroll
        for (int t = 0; t < MV_MAXT; t++) {
            if (t < ntok) {
                const int4* p = (const int4*)(xq + ((long long)t * nb + b) * 32);
                xa[t] = p[0];
                xb[t] = p[1];
                s[t] = xs[(long long)t * nb + b];
            }
        }
#pragma unroll
        for (int i = 0; i < MV_ROWS; i++) {
            int r = row0 + i;
            if (r >= rows) break;
            long long blk = (long long)r * nb + b;
            float d = h2f(dq[blk]);
            if (ty == TY_Q8_0) {
                const int4* p = (const int4*)(w + blk * 32);
                int4 wa = p[0], wb = p[1];
#pragma unroll
                for (int t = 0; t < MV_MAXT; t++) {
                    if (t < ntok) {
                        int si = __dp4a(wa.x, xa[t].x, 0);
                        si = __dp4a(wa.y, xa[t].y, si);
                        si = __dp4a(wa.z, xa[t].z, si);
                        si = __dp4a(wa.w, xa[t].w, si);
                        si = __dp4a(wb.x, xb[t].x, si);
                        si = __dp4a(wb.y, xb[t].y, si);
                        si = __dp4a(wb.z, xb[t].z, si);
                        si = __dp4a(wb.w, xb[t].w, si);
                        acc[i][t] += d * s[t].x * (float)si;
                    }
                }
            } else {
                int4 q = *(const int4*)(w + blk * 16);
                int lo0 = q.x & 0x0f0f0f0f, hi0 = (q.x >> 4) & 0x0f0f0f0f;
                int lo1 = q.y & 0x0f0f0f0f, hi1 = (q.y >> 4) & 0x0f0f0f0f;
                int lo2 = q.z & 0x0f0f0f0f, hi2 = (q.z >> 4) & 0x0f0f0f0f;
                int lo3 = q.w & 0x0f0f0f0f, hi3 = (q.w >> 4) & 0x0f0f0f0f;
                float m = ty == TY_Q4_1 ? h2f(mq[blk]) : 0.f;
#pragma unroll
                for (int t = 0; t < MV_MAXT; t++) {
                    if (t < ntok) {
                        // Low nibbles are elements 0..15, high nibbles 16..31.
                        int si = __dp4a(lo0, xa[t].x, 0);
                        si = __dp4a(lo1, xa[t].y, si);
                        si = __dp4a(lo2, xa[t].z, si);
                        si = __dp4a(lo3, xa[t].w, si);
                        si = __dp4a(hi0, xb[t].x, si);
                        si = __dp4a(hi1, xb[t].y, si);
                        si = __dp4a(hi2, xb[t].z, si);
                        si = __dp4a(hi3, xb[t].w, si);
                        if (ty == TY_Q4_0)
                            acc[i][t] += d * (s[t].x * (float)si - 8.f * s[t].y);
                        else
                            acc[i][t] += d * s[t].x * (float)si + m * s[t].y;
                    }
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < MV_ROWS; i++) {
#pragma unroll
        for (int t = 0; t < MV_MAXT; t++) {
            float v = warp_sum(acc[i][t]);
            int r = row0 + i;
            if (lane == 0 && t < ntok && r < rows) out[(long long)t * rows + r] = v;
        }
    }
}

// F16 / F32 weights: one warp per row, 8 columns per lane per step.
extern "C" __global__ void matvec_f(const u8* w, int ty, int rows, int cols, const float* x,
                                    int ntok, float* out) {
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
