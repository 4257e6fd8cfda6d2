// attention.cu — causal attention over the KV cache (f16 or f32), split
// over the key axis (flash-decoding) and merged by attn_combine.
//
// attn_partial: block (split s, query head h, token t), 4 warps. The token
// at batch row t sits in slot first_slot[0] + t and sees slots 0..=that.
// Block s takes keys [s·chunk, (s+1)·chunk) of those; each warp takes every
// 4th tile of 32 keys and keeps a running max, sum and weighted value sum
// (online softmax). The warps merge in shared memory. With
// one split the block writes the normalised output; with several it writes
// (o, m, l) partials that attn_combine merges. Grouped-query attention: query
// head h reads KV head h / (n_head / n_head_kv).

#define ATT_WARPS 4

// Key/value element i of a cache row as f32.
template <bool F16>
__device__ __forceinline__ float kv_at(const u8* c, long long i) {
    return F16 ? h2f(((const u16*)c)[i]) : ((const float*)c)[i];
}

// q·k for the key row at `row` (element offset): each lane reads its own
// row with 16-byte loads, all independent; the loops have compile-time
// bounds (ND = head_dim / 32 rounded up) so they unroll and every load is
// in flight at once.
template <bool F16, int ND>
__device__ __forceinline__ float qk_row(const float* sq, const u8* kc, long long row, int head_dim) {
    float dot = 0.f;
    if (F16) {
        const uint4* p = (const uint4*)((const u16*)kc + row);
#pragma unroll
        for (int c = 0; c < 4 * ND; c++) {
            if (c >= head_dim / 8) break;
            uint4 v = p[c];
            u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                dot += sq[8 * c + 2 * k] * h2f((u16)(w[k] & 0xffff));
                dot += sq[8 * c + 2 * k + 1] * h2f((u16)(w[k] >> 16));
            }
        }
    } else {
        const float4* p = (const float4*)((const float*)kc + row);
#pragma unroll
        for (int c = 0; c < 8 * ND; c++) {
            if (c >= head_dim / 4) break;
            float4 v = p[c];
            dot += sq[4 * c] * v.x + sq[4 * c + 1] * v.y + sq[4 * c + 2] * v.z + sq[4 * c + 3] * v.w;
        }
    }
    return dot;
}

// Keys are taken 32 at a time per warp: lane j scores key j of the tile
// (its own row, read with wide loads), the tile's softmax terms come from
// warp reductions, then each lane accumulates its slice of the head
// dimension over the tile's 32 value rows (coalesced across the warp),
// eight rows' loads issued before their products. ND = ceil(head_dim / 32).
template <bool F16, int ND>
__device__ __forceinline__ void attn_partial_impl(
    const float* q, const u8* kc, const u8* vc, const u32* first_slot, int n_head, int n_head_kv,
    int head_dim, float scale, int chunk, int n_split, float* out, float* part_o,
    float2* part_ml, float* sq, float (*so)[256], float* sm, float* sl) {
    int s = blockIdx.x, h = blockIdx.y, t = blockIdx.z;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int hk = h / (n_head / n_head_kv);
    long long width = (long long)n_head_kv * head_dim;
    long long n_vis = (long long)first_slot[0] + t + 1;
    long long k0 = (long long)s * chunk;
    long long k1 = min(k0 + chunk, n_vis);
    const float* qr = q + ((long long)t * n_head + h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) sq[d] = qr[d] * scale;
    __syncthreads();

    float m = NEG_INF, l = 0.f, o[ND];
#pragma unroll
    for (int i = 0; i < ND; i++) o[i] = 0.f;
    long long off = (long long)hk * head_dim;
    for (long long j0 = k0 + 32 * warp; j0 < k1; j0 += 32 * ATT_WARPS) {
        long long j = j0 + lane;
        bool valid = j < k1;
        float sc = valid ? qk_row<F16, ND>(sq, kc, j * width + off, head_dim) : NEG_INF;
        float mn = fmaxf(m, warp_max(sc));
        float corr = __expf(m - mn);
        float p = valid ? __expf(sc - mn) : 0.f;
        l = l * corr + warp_sum(p);
#pragma unroll
        for (int i = 0; i < ND; i++) o[i] *= corr;
        int n = (int)min((long long)32, k1 - j0);
        for (int u0 = 0; u0 < n; u0 += 8) {
            // Rows past the tile's end repeat its last row; their weight
            // (an invalid lane's p) is 0.
            float vv[8][ND];
#pragma unroll
            for (int u = 0; u < 8; u++) {
                long long base = min(j0 + u0 + u, k1 - 1) * width + off;
#pragma unroll
                for (int i = 0; i < ND; i++) {
                    int d = lane + 32 * i;
                    vv[u][i] = d < head_dim ? kv_at<F16>(vc, base + d) : 0.f;
                }
            }
#pragma unroll
            for (int u = 0; u < 8; u++) {
                float pj = __shfl_sync(0xffffffffu, p, u0 + u);
#pragma unroll
                for (int i = 0; i < ND; i++) o[i] += pj * vv[u][i];
            }
        }
        m = mn;
    }
    if (lane == 0) { sm[warp] = m; sl[warp] = l; }
#pragma unroll
    for (int i = 0; i < ND; i++) {
        int d = lane + 32 * i;
        if (d < head_dim) so[warp][d] = o[i];
    }
    __syncthreads();
    float M = NEG_INF;
    for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, sm[w]);
    float L = 0.f;
    for (int w = 0; w < ATT_WARPS; w++) L += sm[w] == NEG_INF ? 0.f : sl[w] * __expf(sm[w] - M);
    long long row = (long long)t * n_head + h;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (sm[w] != NEG_INF) acc += so[w][d] * __expf(sm[w] - M);
        if (n_split == 1)
            out[row * head_dim + d] = L > 0.f ? acc / L : 0.f;
        else
            part_o[(row * n_split + s) * head_dim + d] = acc;
    }
    if (n_split > 1 && threadIdx.x == 0) part_ml[row * n_split + s] = make_float2(M, L);
}

#define PARTIAL_CASE(ND)                                                                         \
    if (f16)                                                                                     \
        attn_partial_impl<true, ND>(q, kc, vc, first_slot, n_head, n_head_kv, head_dim, scale,   \
                                    chunk, n_split, out, part_o, part_ml, sq, so, sm, sl);       \
    else                                                                                         \
        attn_partial_impl<false, ND>(q, kc, vc, first_slot, n_head, n_head_kv, head_dim, scale,  \
                                     chunk, n_split, out, part_o, part_ml, sq, so, sm, sl);

extern "C" __global__ void __launch_bounds__(128) attn_partial(
    const float* q, const u8* kc, const u8* vc, const u32* first_slot, int n_head, int n_head_kv,
    int head_dim, float scale, int chunk, int n_split, int f16, float* out, float* part_o,
    float2* part_ml) {
    pdl_entry();
    // Declared here, not in the templated body: one copy shared by every
    // instantiation.
    __shared__ __align__(16) float sq[256];
    __shared__ float so[ATT_WARPS][256];
    __shared__ float sm[ATT_WARPS], sl[ATT_WARPS];
    if (head_dim <= 64) {
        PARTIAL_CASE(2)
    } else if (head_dim <= 128) {
        PARTIAL_CASE(4)
    } else {
        PARTIAL_CASE(8)
    }
}

// Merge the splits of one (token, head): o = Σ_s o_s·e^{m_s−M} / Σ_s l_s·e^{m_s−M}.
// The splits are spread over the block (max, then weights and L by block
// reductions; then warp w sums splits w, w + 4, ... with lanes over the
// head dimension), not walked by each thread in turn: with 128+ splits at
// depth 32768 the serial walk was the slowest part of decoding. With xq
// non-null (head_dim % 32 == 0) it also leaves the 8-bit quantization of
// the output for the output projection's mat-vec. n_split ≤ COMBINE_MAXS,
// head_dim ≤ 256, 128 threads.
#define COMBINE_MAXS 4096
extern "C" __global__ void __launch_bounds__(128) attn_combine(const float* part_o,
                                                               const float2* part_ml, int n_split,
                                                               int head_dim, float* out,
                                                               signed char* xq, float2* xs) {
    pdl_entry();
    __shared__ float sw[COMBINE_MAXS];
    __shared__ float red[ATT_WARPS];
    __shared__ float sacc[ATT_WARPS][256];
    long long row = blockIdx.x;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const float2* ml = part_ml + row * n_split;
    float M = NEG_INF;
    for (int s = threadIdx.x; s < n_split; s += blockDim.x) M = fmaxf(M, ml[s].x);
    M = warp_max(M);
    if (lane == 0) red[warp] = M;
    __syncthreads();
    M = NEG_INF;
    for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, red[w]);
    __syncthreads();
    float L = 0.f;
    for (int s = threadIdx.x; s < n_split; s += blockDim.x) {
        float2 v = ml[s];
        float e = v.x == NEG_INF ? 0.f : __expf(v.x - M);
        sw[s] = e;
        L += v.y * e;
    }
    L = warp_sum(L);
    if (lane == 0) red[warp] = L;
    __syncthreads();
    L = 0.f;
    for (int w = 0; w < ATT_WARPS; w++) L += red[w];
    float a[8];
#pragma unroll
    for (int i = 0; i < 8; i++) a[i] = 0.f;
    for (int s = warp; s < n_split; s += ATT_WARPS) {
        float e = sw[s];
        if (e == 0.f) continue;
        const float* po = part_o + (row * n_split + s) * head_dim;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int d = lane + 32 * i;
            if (d < head_dim) a[i] += po[d] * e;
        }
    }
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int d = lane + 32 * i;
        if (d < head_dim) sacc[warp][d] = a[i];
    }
    __syncthreads();
    // Each warp takes whole 32-element slices, so it can quantize them.
    for (int d0 = threadIdx.x - lane; d0 < head_dim; d0 += blockDim.x) {
        int d = d0 + lane;
        float v = 0.f;
        if (d < head_dim) {
            float acc = 0.f;
            for (int w = 0; w < ATT_WARPS; w++) acc += sacc[w][d];
            v = L > 0.f ? acc / L : 0.f;
            out[row * head_dim + d] = v;
        }
        if (xq) quantize_lane(v, xq, xs, (row * head_dim + d0) / 32);
    }
}

// Decode attention with the query heads of one KV head served together
// (grouped-query attention): block (split s, KV head hk, token t) reads
// each key and value row of its split once for all G = n_head / n_head_kv
// query heads, instead of once per query head. head_dim ≤ 128 and
// G·head_dim ≤ 2048; the host falls back to attn_partial otherwise. Writes
// the same (o, m, l) partials attn_combine merges.
template <int G, bool F16>
__device__ __forceinline__ void attn_gqa_impl(const float* q, const u8* kc, const u8* vc,
                                              const u32* first_slot, int n_head, int n_head_kv,
                                              int head_dim, float scale, int chunk, int n_split,
                                              float* part_o, float2* part_ml, float* sq,
                                              float (*so)[2048], float (*sm)[16], float (*sl)[16]) {
    int s = blockIdx.x, hk = blockIdx.y, t = blockIdx.z;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int h0 = hk * G;
    long long width = (long long)n_head_kv * head_dim;
    long long n_vis = (long long)first_slot[0] + t + 1;
    long long k0 = (long long)s * chunk;
    long long k1 = min(k0 + chunk, n_vis);
    const float* qr = q + ((long long)t * n_head + h0) * head_dim;
    for (int d = threadIdx.x; d < G * head_dim; d += blockDim.x) sq[d] = qr[d] * scale;
    __syncthreads();

    float m[G], l[G], o[G][4];
#pragma unroll
    for (int g = 0; g < G; g++) {
        m[g] = NEG_INF;
        l[g] = 0.f;
#pragma unroll
        for (int i = 0; i < 4; i++) o[g][i] = 0.f;
    }
    long long off = (long long)hk * head_dim;
    for (long long j0 = k0 + 32 * warp; j0 < k1; j0 += 32 * ATT_WARPS) {
        long long j = j0 + lane;
        bool valid = j < k1;
        float sc[G];
#pragma unroll
        for (int g = 0; g < G; g++) sc[g] = 0.f;
        if (valid) {
            long long row = j * width + off;
#pragma unroll 8
            for (int c = 0; c < head_dim / 4; c++) {
                float kf[4];
                if (F16) {
                    uint2 v = ((const uint2*)((const u16*)kc + row))[c];
                    kf[0] = h2f((u16)(v.x & 0xffff));
                    kf[1] = h2f((u16)(v.x >> 16));
                    kf[2] = h2f((u16)(v.y & 0xffff));
                    kf[3] = h2f((u16)(v.y >> 16));
                } else {
                    float4 v = ((const float4*)((const float*)kc + row))[c];
                    kf[0] = v.x; kf[1] = v.y; kf[2] = v.z; kf[3] = v.w;
                }
#pragma unroll
                for (int g = 0; g < G; g++) {
                    const float* qg = sq + g * head_dim + 4 * c;
                    sc[g] += qg[0] * kf[0] + qg[1] * kf[1] + qg[2] * kf[2] + qg[3] * kf[3];
                }
            }
        }
        float p[G];
#pragma unroll
        for (int g = 0; g < G; g++) {
            float x = valid ? sc[g] : NEG_INF;
            float mn = fmaxf(m[g], warp_max(x));
            float corr = __expf(m[g] - mn);
            p[g] = valid ? __expf(x - mn) : 0.f;
            l[g] = l[g] * corr + warp_sum(p[g]);
#pragma unroll
            for (int i = 0; i < 4; i++) o[g][i] *= corr;
            m[g] = mn;
        }
        int n = (int)min((long long)32, k1 - j0);
        for (int u0 = 0; u0 < n; u0 += 4) {
            // Four rows' loads before their products; rows past the tile's
            // end repeat its last row with weight 0 (an invalid lane's p).
            float v[4][4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                long long base = min(j0 + u0 + u, k1 - 1) * width + off;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    int d = lane + 32 * i;
                    v[u][i] = d < head_dim ? kv_at<F16>(vc, base + d) : 0.f;
                }
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
#pragma unroll
                for (int g = 0; g < G; g++) {
                    float pj = __shfl_sync(0xffffffffu, p[g], u0 + u);
#pragma unroll
                    for (int i = 0; i < 4; i++) o[g][i] += pj * v[u][i];
                }
            }
        }
    }
#pragma unroll
    for (int g = 0; g < G; g++) {
        if (lane == 0) { sm[warp][g] = m[g]; sl[warp][g] = l[g]; }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int d = lane + 32 * i;
            if (d < head_dim) so[warp][g * head_dim + d] = o[g][i];
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < G * head_dim; e += blockDim.x) {
        int g = e / head_dim, d = e % head_dim;
        float M = NEG_INF;
        for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, sm[w][g]);
        float L = 0.f, acc = 0.f;
        for (int w = 0; w < ATT_WARPS; w++) {
            if (sm[w][g] != NEG_INF) {
                float f = __expf(sm[w][g] - M);
                L += sl[w][g] * f;
                acc += so[w][e] * f;
            }
        }
        long long row = (long long)t * n_head + h0 + g;
        part_o[(row * n_split + s) * head_dim + d] = acc;
        if (d == 0) part_ml[row * n_split + s] = make_float2(M, L);
    }
}

#define GQA_CASE(GV)                                                                             \
    case GV:                                                                                     \
        if (f16)                                                                                 \
            attn_gqa_impl<GV, true>(q, kc, vc, first_slot, n_head, n_head_kv, head_dim, scale,   \
                                    chunk, n_split, part_o, part_ml, sq, so, sm, sl);            \
        else                                                                                     \
            attn_gqa_impl<GV, false>(q, kc, vc, first_slot, n_head, n_head_kv, head_dim, scale,  \
                                     chunk, n_split, part_o, part_ml, sq, so, sm, sl);           \
        break;

// G ∈ {1, 2, 3, 4, 6, 8, 16}: the host only launches it for those.
extern "C" __global__ void __launch_bounds__(128) attn_decode_gqa(
    const float* q, const u8* kc, const u8* vc, const u32* first_slot, int n_head, int n_head_kv,
    int head_dim, float scale, int chunk, int n_split, int f16, float* part_o, float2* part_ml) {
    pdl_entry();
    // Declared here, not in the templated body: one copy shared by every
    // instantiation (per-instantiation arrays would add up past the limit).
    __shared__ __align__(16) float sq[2048];
    __shared__ float so[ATT_WARPS][2048];
    __shared__ float sm[ATT_WARPS][16], sl[ATT_WARPS][16];
    switch (n_head / n_head_kv) {
        GQA_CASE(1)
        GQA_CASE(2)
        GQA_CASE(3)
        GQA_CASE(4)
        GQA_CASE(6)
        GQA_CASE(8)
        GQA_CASE(16)
        default: break;
    }
}
