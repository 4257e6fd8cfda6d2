// attention.cu — causal attention over the KV cache (f16 or f32), split
// over the key axis (flash-decoding) and merged by attn_combine; prefill
// over an f16 cache runs as flash attention on the tensor cores
// (attn_prefill_*, at the end of this file).
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

// ---- Prefill attention on the tensor cores (`attn_prefill_64`, `_128`) ----
//
// Flash-attention over an f16 cache for a batch of queries: block (query
// tile of 64 tokens, head h), 4 warps of 16 queries each. Q (f32, scaled
// by scale·log2 e) becomes f16 A fragments held in registers for the whole
// key loop. Key tiles of 64 go through shared memory in two cp.async
// stages. Per tile each warp computes S = Q·Kᵀ (16 × 64) with mma.sync,
// masks keys past each query's slot, updates its running max and sum
// (base-2 online softmax, rows reduced over the 4 lanes of a quad), turns
// S into f16 P fragments in registers (the accumulator layout of two n8
// tiles is the A layout of one k16 step) and adds P·V, V read with
// transposed ldmatrix. Keys beyond the block's last visible slot are zero
// in shared memory and masked; slots up to it were written by this batch
// or earlier ones. HD is the head size (64 or 128).

#define AP_Q 64
#define AP_K 64

// One key tile of the base-2 online softmax for the two query rows a lane
// holds in mma C fragments (rows g and g + 8; `s` are the S fragments of J
// n8 key tiles, masked keys already -inf): updates the rows' running max
// `mx` and sum `sum` (reduced over the lane's quad), rescales O, and packs P
// into the A fragments of the P·V steps (two n8 key tiles per k16 step: the
// C layout of two n8 tiles is the A layout of one k16 step).
template <int J, int HD>
__device__ __forceinline__ void softmax_tile(float (&s)[J][4], float (&mx)[2], float (&sum)[2],
                                             float (&o)[HD / 8][4], u32 (&pf)[J / 2][4]) {
    float tmax[2] = {NEG_INF, NEG_INF};
#pragma unroll
    for (int j = 0; j < J; j++)
#pragma unroll
        for (int k = 0; k < 4; k++) tmax[k / 2] = fmaxf(tmax[k / 2], s[j][k]);
    float corr[2], mnew[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 1));
        tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 2));
        mnew[r] = fmaxf(mx[r], tmax[r]);
        // A row with no unmasked key yet keeps max -inf: use 0 so the
        // exponentials below give 0, not NaN (its sum stays 0).
        if (mnew[r] == NEG_INF) mnew[r] = 0.f;
        corr[r] = exp2f(mx[r] - mnew[r]);
        mx[r] = mnew[r];
    }
    float tsum[2] = {0.f, 0.f};
#pragma unroll
    for (int j = 0; j < J; j++) {
        float p0 = exp2f(s[j][0] - mnew[0]), p1 = exp2f(s[j][1] - mnew[0]);
        float p2 = exp2f(s[j][2] - mnew[1]), p3 = exp2f(s[j][3] - mnew[1]);
        tsum[0] += p0 + p1;
        tsum[1] += p2 + p3;
        pf[j / 2][(j % 2) * 2] = (u32)f2h(p0) | ((u32)f2h(p1) << 16);
        pf[j / 2][(j % 2) * 2 + 1] = (u32)f2h(p2) | ((u32)f2h(p3) << 16);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        tsum[r] += __shfl_xor_sync(0xffffffffu, tsum[r], 1);
        tsum[r] += __shfl_xor_sync(0xffffffffu, tsum[r], 2);
        sum[r] = sum[r] * corr[r] + tsum[r];
    }
#pragma unroll
    for (int i = 0; i < HD / 8; i++) {
        o[i][0] *= corr[0];
        o[i][1] *= corr[0];
        o[i][2] *= corr[1];
        o[i][3] *= corr[1];
    }
}

template <int HD>
__device__ __forceinline__ void attn_prefill_body(u16* outh, const float* q, const u16* kc, const u16* vc,
                                                  const u32* first_slot, int n_head, int n_head_kv,
                                                  float scale, int ntok, float* out, u16* smem) {
    constexpr int LD = HD + 8;  // halves per shared row: 16-byte aligned, ldmatrix conflict-free
    constexpr int KT = AP_K * LD;
    u16* sq = smem;                 // AP_Q × LD
    u16* sk = smem + AP_Q * LD;     // 2 stages × AP_K × LD
    u16* sv = sk + 2 * KT;          // 2 stages × AP_K × LD
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g = lane / 4, q4 = lane % 4;
    const int t0 = blockIdx.x * AP_Q, h = blockIdx.y;
    const int hk = h / (n_head / n_head_kv);
    const long long width = (long long)n_head_kv * HD;
    const long long fs = first_slot[0];
    const int t_last = min(t0 + AP_Q, ntok) - 1;
    const long long n_keys = fs + t_last + 1;  // the block's visible slots
    const int nkt = (int)((n_keys + AP_K - 1) / AP_K);

    auto load_kv = [&](int kt, int slot) {
        for (int c = tid; c < AP_K * HD / 8; c += 128) {
            int r = c / (HD / 8), part = c % (HD / 8);
            long long j = (long long)kt * AP_K + r;
            bool ok = j < n_keys;
            long long off = ok ? j * width + (long long)hk * HD + part * 8 : 0;
            cp_async16(sk + slot * KT + r * LD + part * 8, kc + off, ok);
            cp_async16(sv + slot * KT + r * LD + part * 8, vc + off, ok);
        }
    };
    load_kv(0, 0);
    cp_async_commit();

    // Q tile → f16, pre-scaled into the base-2 exponent domain.
    const float qs = scale * 1.4426950408889634f;
    for (int c = tid; c < AP_Q * HD / 2; c += 128) {
        int r = c / (HD / 2), d = (c % (HD / 2)) * 2;
        float2 v = make_float2(0.f, 0.f);
        if (t0 + r < ntok) v = *(const float2*)(q + ((long long)(t0 + r) * n_head + h) * HD + d);
        *(u32*)(sq + r * LD + d) = (u32)f2h(v.x * qs) | ((u32)f2h(v.y * qs) << 16);
    }
    __syncthreads();
    u32 qf[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        // A fragment (16 × 16): matrices (rows 0-7, k lo), (rows 8-15, k lo),
        // (rows 0-7, k hi), (rows 8-15, k hi).
        int r = warp * 16 + (lane / 8 % 2) * 8 + lane % 8;
        ldsm_x4(qf[kk], sq + r * LD + kk * 16 + (lane / 16) * 8);
    }

    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++)
#pragma unroll
        for (int k = 0; k < 4; k++) o[i][k] = 0.f;
    float mx[2] = {NEG_INF, NEG_INF}, sum[2] = {0.f, 0.f};
    // Slots of this lane's two query rows: keys ≤ them are visible.
    const long long vis0 = fs + t0 + warp * 16 + g, vis1 = vis0 + 8;

    for (int kt = 0; kt < nkt; kt++) {
        if (kt + 1 < nkt) load_kv(kt + 1, (kt + 1) % 2);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const u16* k_s = sk + (kt % 2) * KT;
        const u16* v_s = sv + (kt % 2) * KT;

        float s[AP_K / 8][4];
#pragma unroll
        for (int j = 0; j < AP_K / 8; j++)
#pragma unroll
            for (int k = 0; k < 4; k++) s[j][k] = 0.f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
#pragma unroll
            for (int jp = 0; jp < AP_K / 16; jp++) {
                u32 b[4];
                int key = jp * 16 + (lane / 16) * 8 + lane % 8;
                ldsm_x4(b, k_s + key * LD + kk * 16 + (lane / 8 % 2) * 8);
                mma_16816(s[2 * jp], qf[kk], b);
                mma_16816(s[2 * jp + 1], qf[kk], b + 2);
            }
        }
        // Mask, then the online softmax of rows g (k = 0, 1) and g + 8 (2, 3).
        // Mask keys past each row's slot, then the online softmax.
#pragma unroll
        for (int j = 0; j < AP_K / 8; j++) {
#pragma unroll
            for (int k = 0; k < 4; k++) {
                long long key = (long long)kt * AP_K + j * 8 + q4 * 2 + (k % 2);
                if (key > (k < 2 ? vis0 : vis1)) s[j][k] = NEG_INF;
            }
        }
        u32 pf[AP_K / 16][4];
        softmax_tile<AP_K / 8, HD>(s, mx, sum, o, pf);
        // O += P·V: k = keys (4 steps of 16), n = head dims (HD / 8 tiles).
#pragma unroll
        for (int kk = 0; kk < AP_K / 16; kk++) {
#pragma unroll
            for (int dp = 0; dp < HD / 16; dp++) {
                u32 b[4];
                int key = kk * 16 + (lane / 8 % 2) * 8 + lane % 8;
                ldsm_x4_t(b, v_s + key * LD + dp * 16 + (lane / 16) * 8);
                mma_16816(o[2 * dp], pf[kk], b);
                mma_16816(o[2 * dp + 1], pf[kk], b + 2);
            }
        }
        __syncthreads();
    }
    cp_async_wait<0>();
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int t = t0 + warp * 16 + g + r * 8;
        if (t >= ntok) continue;
        float inv = sum[r] > 0.f ? 1.f / sum[r] : 0.f;
        long long at = ((long long)t * n_head + h) * HD;
        float* orow = out + at;
#pragma unroll
        for (int i = 0; i < HD / 8; i++) {
            float a = o[i][2 * r] * inv, b = o[i][2 * r + 1] * inv;
            *(float2*)(orow + i * 8 + q4 * 2) = make_float2(a, b);
            if (outh) *(u32*)(outh + at + i * 8 + q4 * 2) = (u32)f2h(a) | ((u32)f2h(b) << 16);
        }
    }
}

extern "C" __global__ void __launch_bounds__(128) attn_prefill_64(
    const float* q, const u16* kc, const u16* vc, const u32* first_slot, int n_head,
    int n_head_kv, float scale, int ntok, float* out, u16* outh) {
    pdl_entry();
    extern __shared__ __align__(16) u16 ap_smem[];
    attn_prefill_body<64>(outh, q, kc, vc, first_slot, n_head, n_head_kv, scale, ntok, out,
                          ap_smem);
}

extern "C" __global__ void __launch_bounds__(128) attn_prefill_128(
    const float* q, const u16* kc, const u16* vc, const u32* first_slot, int n_head,
    int n_head_kv, float scale, int ntok, float* out, u16* outh) {
    pdl_entry();
    extern __shared__ __align__(16) u16 ap_smem[];
    attn_prefill_body<128>(outh, q, kc, vc, first_slot, n_head, n_head_kv, scale, ntok, out,
                          ap_smem);
}

// ---- Decode attention for grouped-query heads on the tensor cores ----
//
// `attn_decode_mma_64`, `_128` (f16 cache): block (split s, KV head hk,
// token t). The G ≤ 16 query heads of hk are the 16 rows of one m16 tile
// (rows ≥ G are zero and ignored), so S = Q·Kᵀ is an mma with the keys as
// n. Keys [s·chunk, min((s + 1)·chunk, n_vis)) come in tiles of 64 through
// two cp.async stages; each of the 4 warps takes 16 keys of every tile:
// S (16 × 16), masked past the split's end, the base-2 online softmax of
// attn_prefill_body, P as the A fragment of one k16 step, O += P·V with V
// read by transposed ldmatrix. At the end the warps' (m, l, O) merge in
// shared memory and the block writes the (o, m, l) partials attn_combine
// merges (o unnormalized, m in natural-log units); with one split
// (n_split == 1) it writes the finished output into part_o instead, and its
// 8-bit copy when xq is given, so no attn_combine follows. The scalar kernel above
// spent ~2,600 instructions a key tile per warp on Q·K from shared memory;
// here a 64-key tile is 32 mma per warp.
// K/V tile stages of the decode kernel: 4 for head size 64 (a split of up
// to 4 tiles waits for memory once), AD_STAGES_128 (KernelConfig) for 128.
#define AD_STAGES(HD) ((HD) <= 64 ? 4 : AD_STAGES_128)

template <int HD>
__device__ __forceinline__ void attn_decode_mma_body(const float* q, const u16* kc, const u16* vc,
                                                     u32 first, int n_head,
                                                     int n_head_kv, float scale, int chunk,
                                                     int n_split, float* part_o, float2* part_ml,
                                                     signed char* xq, float2* xs, u16* smem) {
    constexpr int LD = HD + 8;
    constexpr int KT = AP_K * LD;
    constexpr int ST = AD_STAGES(HD);
    u16* sq = smem;               // 16 × LD
    u16* sk = smem + 16 * LD;     // ST stages × AP_K × LD
    u16* sv = sk + ST * KT;       // ST stages × AP_K × LD
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g = lane / 4, q4 = lane % 4;
    const int s = blockIdx.x, hk = blockIdx.y, t = blockIdx.z;
    const int G = n_head / n_head_kv;
    const long long width = (long long)n_head_kv * HD;
    const long long n_vis = (long long)first + t + 1;
    const long long k0 = (long long)s * chunk;
    const long long k1 = min(k0 + chunk, n_vis);
    const int nkt = k1 > k0 ? (int)((k1 - k0 + AP_K - 1) / AP_K) : 0;

    // `early`: issued before the wait, so the rows this step writes (slots
    // from `first` on, the previous kernel's cache write) are left for
    // after it; rows past the split's end are zero-filled (P·V reads them
    // with weight 0).
    auto load_kv = [&](int kt, int slot, bool early) {
        for (int c = tid; c < AP_K * HD / 8; c += 128) {
            int r = c / (HD / 8), part = c % (HD / 8);
            long long j = k0 + (long long)kt * AP_K + r;
            bool ok = j < k1;
            if (early && ok && j >= first) continue;
            long long off = ok ? j * width + (long long)hk * HD + part * 8 : 0;
            cp_async16(sk + slot * KT + r * LD + part * 8, kc + off, ok);
            cp_async16(sv + slot * KT + r * LD + part * 8, vc + off, ok);
        }
    };
    // The cache below `first` is never written in this step: its first
    // tiles are read before the wait, overlapping the kernel before.
#pragma unroll
    for (int i = 0; i < ST - 1; i++) {
        if (i < nkt) load_kv(i, i, true);
        cp_async_commit();
    }
    pdl_entry();
    // This step's rows in those tiles (at most a batch's few), now written:
    // plain loads, in shared memory before the first tile's barrier.
    {
        long long j0 = max(k0, (long long)first), j1 = min(k1, k0 + (long long)(ST - 1) * AP_K);
        for (long long c = tid; c < (j1 - j0) * (HD / 8); c += 128) {
            long long j = j0 + c / (HD / 8);
            int part = (int)(c % (HD / 8));
            int rr = (int)(j - k0), slot = rr / AP_K, r = rr % AP_K;
            long long off = j * width + (long long)hk * HD + part * 8;
            *(int4*)(sk + slot * KT + r * LD + part * 8) = __ldcg((const int4*)(kc + off));
            *(int4*)(sv + slot * KT + r * LD + part * 8) = __ldcg((const int4*)(vc + off));
        }
    }

    // Q: the G heads of hk, f16, pre-scaled into the base-2 exponent domain.
    // All of a thread's loads are issued before any is used (one round trip
    // to L2, not QI).
    const float qs = scale * 1.4426950408889634f;
    constexpr int QI = 16 * HD / 2 / 128;
    float2 qv[QI];
#pragma unroll
    for (int i = 0; i < QI; i++) {
        int c = tid + 128 * i, r = c / (HD / 2), d = (c % (HD / 2)) * 2;
        qv[i] = r < G ? *(const float2*)(q + ((long long)t * n_head + hk * G + r) * HD + d)
                      : make_float2(0.f, 0.f);
    }
#pragma unroll
    for (int i = 0; i < QI; i++) {
        int c = tid + 128 * i, r = c / (HD / 2), d = (c % (HD / 2)) * 2;
        *(u32*)(sq + r * LD + d) = (u32)f2h(qv[i].x * qs) | ((u32)f2h(qv[i].y * qs) << 16);
    }
    __syncthreads();
    u32 qf[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        int r = (lane / 8 % 2) * 8 + lane % 8;
        ldsm_x4(qf[kk], sq + r * LD + kk * 16 + (lane / 16) * 8);
    }

    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++)
#pragma unroll
        for (int k = 0; k < 4; k++) o[i][k] = 0.f;
    float mx[2] = {NEG_INF, NEG_INF}, sum[2] = {0.f, 0.f};

    for (int kt = 0; kt < nkt; kt++) {
        if (kt + ST - 1 < nkt) load_kv(kt + ST - 1, (kt + ST - 1) % ST, false);
        cp_async_commit();
        cp_async_wait<ST - 1>();
        __syncthreads();
        const u16* k_s = sk + (kt % ST) * KT;
        const u16* v_s = sv + (kt % ST) * KT;

        // S = Q·Kᵀ over this warp's keys warp·16 .. warp·16 + 15 of the tile.
        float sc[2][4];
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int k = 0; k < 4; k++) sc[j][k] = 0.f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            u32 b[4];
            int key = warp * 16 + (lane / 16) * 8 + lane % 8;
            ldsm_x4(b, k_s + key * LD + kk * 16 + (lane / 8 % 2) * 8);
            mma_16816(sc[0], qf[kk], b);
            mma_16816(sc[1], qf[kk], b + 2);
        }
        // Mask keys past the split's end (they come after this warp's
        // valid ones, so a warp whose max stays -inf has no keys at all and
        // keeps sum 0, which the merge below reads as "no keys").
#pragma unroll
        for (int j = 0; j < 2; j++) {
#pragma unroll
            for (int k = 0; k < 4; k++) {
                long long key = k0 + (long long)kt * AP_K + warp * 16 + j * 8 + q4 * 2 + (k % 2);
                if (key >= k1) sc[j][k] = NEG_INF;
            }
        }
        u32 pf[1][4];
        softmax_tile<2, HD>(sc, mx, sum, o, pf);
        // O += P·V: k = this warp's 16 keys, n = head dims (HD / 8 tiles).
#pragma unroll
        for (int dp = 0; dp < HD / 16; dp++) {
            u32 b[4];
            int key = warp * 16 + (lane / 8 % 2) * 8 + lane % 8;
            ldsm_x4_t(b, v_s + key * LD + dp * 16 + (lane / 16) * 8);
            mma_16816(o[2 * dp], pf[0], b);
            mma_16816(o[2 * dp + 1], pf[0], b + 2);
        }
        __syncthreads();
    }
    cp_async_wait<0>();
    __syncthreads();

    // Merge the 4 warps (shared memory of the K/V stages, now idle):
    // so[w][row][d], sm/sl[w][row]; then per row the weights f[w][row] of
    // the warps' parts and the row's max and sum, computed once.
    float* so = (float*)sk;
    float* sm = so + 4 * 16 * HD;
    float* sl = sm + 4 * 16;
    float* sf = sl + 4 * 16;
    float* sM = sf + 4 * 16;
    float* sL = sM + 16;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int row = g + r * 8;
        if (q4 == 0) {
            sm[warp * 16 + row] = mx[r];
            sl[warp * 16 + row] = sum[r];
        }
#pragma unroll
        for (int i = 0; i < HD / 8; i++)
            *(float2*)(so + (warp * 16 + row) * HD + i * 8 + q4 * 2) =
                make_float2(o[i][2 * r], o[i][2 * r + 1]);
    }
    __syncthreads();
    if (tid < 16) {
        float M = NEG_INF, L = 0.f;
#pragma unroll
        for (int w = 0; w < 4; w++)
            if (sl[w * 16 + tid] > 0.f) M = fmaxf(M, sm[w * 16 + tid]);
#pragma unroll
        for (int w = 0; w < 4; w++) {
            float f = sl[w * 16 + tid] > 0.f ? exp2f(sm[w * 16 + tid] - M) : 0.f;
            sf[w * 16 + tid] = f;
            L += sl[w * 16 + tid] * f;
        }
        sM[tid] = M;
        sL[tid] = L;
    }
    __syncthreads();
    // A warp's 32 elements are one row's consecutive dims (32 | HD), so in
    // the one-split form it can quantize them.
#pragma unroll
    for (int i = 0; i < 16 * HD / 128; i++) {
        int e = tid + 128 * i, row = e / HD, d = e % HD;
        if (row >= G) break; // whole warps: G·HD is a multiple of 32
        float acc = 0.f;
#pragma unroll
        for (int w = 0; w < 4; w++) acc += so[(w * 16 + row) * HD + d] * sf[w * 16 + row];
        long long hrow = (long long)t * n_head + hk * G + row;
        if (n_split == 1) {
            // One split: the finished output (part_o is `out`), and its
            // 8-bit copy for the output projection when xq is given.
            float L = sL[row];
            float v = L > 0.f ? acc / L : 0.f;
            part_o[hrow * HD + d] = v;
            if (xq) quantize_lane(v, xq, xs, (hrow * HD + d - lane) / 32);
            continue;
        }
        part_o[(hrow * n_split + s) * HD + d] = acc;
        // Natural-log units for attn_combine (M = -inf stays -inf).
        if (d == 0) part_ml[hrow * n_split + s] = make_float2(sM[row] * 0.6931471805599453f, sL[row]);
    }
}

extern "C" __global__ void __launch_bounds__(128) attn_decode_mma_64(
    const float* q, const u16* kc, const u16* vc, const u32* first_slot, int n_head,
    int n_head_kv, float scale, int chunk, int n_split, float* part_o, float2* part_ml,
    signed char* xq, float2* xs) {
    // The wait is in the body, after the cache reads that may precede it;
    // the first slot is a step input (copied before the step's first kernel).
    u32 first = first_slot[0];
    extern __shared__ __align__(16) u16 ap_smem[];
    attn_decode_mma_body<64>(q, kc, vc, first, n_head, n_head_kv, scale, chunk, n_split,
                             part_o, part_ml, xq, xs, ap_smem);
}

extern "C" __global__ void __launch_bounds__(128) attn_decode_mma_128(
    const float* q, const u16* kc, const u16* vc, const u32* first_slot, int n_head,
    int n_head_kv, float scale, int chunk, int n_split, float* part_o, float2* part_ml,
    signed char* xq, float2* xs) {
    // The wait is in the body, after the cache reads that may precede it;
    // the first slot is a step input (copied before the step's first kernel).
    u32 first = first_slot[0];
    extern __shared__ __align__(16) u16 ap_smem[];
    attn_decode_mma_body<128>(q, kc, vc, first, n_head, n_head_kv, scale, chunk, n_split,
                             part_o, part_ml, xq, xs, ap_smem);
}
