// block.cu — one whole decoder block for one token in one launch, on a
// thread-block cluster (sm_90+): `fused_block_64`, `fused_block_128` (the
// head size).
//
// Why: the small models' decode step is a chain of 9 dependent kernels per
// layer, each costing ~2 µs whatever it does (docs/cuda-kernel-notes.md,
// sixth pass). Here the block's phases meet at cluster barriers instead of
// kernel boundaries, and every weight the block needs is copied into the
// cluster's shared memory *before* the wait for the previous kernel (while
// the previous layer still runs), so no phase waits for DRAM.
//
// Status: correct (a GPU test against the CPU and the separate kernels,
// and the real SmolLM2's greedy text), but not faster on the H200: 16 SMs
// do a layer's work in chains of thousands of instructions per warp at
// ~12 cycles each, which costs what the launches it saves cost
// (docs/cuda-kernel-notes.md, seventh pass). So it is off by default
// (KernelConfig::fused_block_max_ctx, TERN_CUDA_FUSED_BLOCK).
//
// Layout: NB = the cluster's size blocks (one cluster is the whole grid),
// FB_THREADS threads each. Block b owns
//   - the q/k/v heads j = b, b + NB, … of the HT = Hq + 2·Hkv heads (q heads
//     first, then k, then v), and the attention of its q heads;
//   - rows [b·RPB, (b+1)·RPB) of the output and down projections;
//   - units [b·UPB, (b+1)·UPB) of gate/up, UPB a multiple of 32.
// Phases (A–E), with a cluster barrier between each two:
//   A  x (every block, from global) times the norm's weight quantized to 8
//      bits per 32-block (RMSNorm's scale is one factor per row, applied to
//      the products), its heads' products, RoPE on q and k, k and v stored
//      in the cache slot.
//   B  attention of its q heads over slots 0..first_slot (the cache, read
//      through L2), one key per thread per 512-key chunk, online softmax;
//      each head's output, quantized, is pushed into every block's 8-bit
//      input (QQ, QD) by distributed shared memory stores.
//   C  its rows of the output projection, the residual added (x1), x1
//      pushed into every block's XS.
//   D  x1 (now whole in XS) as in A with the second norm, its gate/up
//      units, silu(g)·u quantized and pushed into every block's AQ, AD.
//   E  its rows of the down projection; x = x1 + rs · down, stored.
// Pushing (remote stores before a barrier) rather than gathering (remote
// loads after it) keeps the DSMEM round trip off the chain: after each
// barrier a block's inputs are already local.
//
// Arithmetic: as the separate kernels, each mat-vec's input is quantized to
// 8 bits per 32-block and multiplied with __dp4a against the Q4_0 / Q4_1 /
// Q8_0 weights (block_dot; an f32 product needs an int-to-float conversion
// per weight, which bound the first form of this kernel); f16 cache, exp2
// softmax.
//
// Shared memory (bytes, each region 16-aligned; the host computes the same
// sizes, see fb_smem in backend/cuda/mod.rs): first the activation regions
// at offsets every block agrees on (remote stores address them), then the
// block's weight slices (sizes differ per block; quants transposed so a
// warp's lanes, one row each, read consecutive 16-byte chunks).

#define FB_THREADS 512
#define FB_WARPS (FB_THREADS / 32)
#define FB_MAXH 8 // q/k/v heads one block may own (host-checked)
#ifndef FB_PROBE
#define FB_PROBE 0 // where a timeline build stamps (KernelConfig::fb_probe)
#endif

#if __CUDA_ARCH__ >= 900
__device__ __forceinline__ u32 fb_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

__device__ __forceinline__ u32 fb_nrank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(r));
    return r;
}

// All threads of all blocks of the cluster; earlier writes (shared, remote
// shared and global) are visible to every thread of the cluster after it.
__device__ __forceinline__ void fb_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\t"
                 "barrier.cluster.wait.acquire.aligned;" ::
                     : "memory");
}

// The address of this block's shared `p` in block `rank` of the cluster.
__device__ __forceinline__ u32 fb_remote(const void* p, u32 rank) {
    u32 a = smem_u32(p), r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
    return r;
}

__device__ __forceinline__ void fb_st_remote(u32 addr, float v) {
    asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(addr), "f"(v) : "memory");
}

// 16 bytes from global through L2 only (the cache slot just written by
// another block of the cluster must not come from a stale L1 line).
__device__ __forceinline__ uint4 fb_ld_cg(const void* p) {
    uint4 v;
    asm volatile("ld.global.cg.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// cp.async of up to 16 bytes (the rest of the 16 zero-filled).
__device__ __forceinline__ void fb_cp16(u32 dst, const void* src, int n) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(n)
                 : "memory");
}

// Copy bytes [a, e) of global `src` (a 16-aligned) to shared `dst`.
__device__ __forceinline__ void fb_copy(u32 dst, const u8* src, long long a, long long e) {
    for (long long o = a + 16ll * threadIdx.x; o < e; o += 16ll * FB_THREADS)
        fb_cp16(dst + (u32)(o - a), src + o, (int)min(16ll, e - o));
}

// Where a weight slice sits in shared memory (byte offsets from the
// dynamic shared base): its quants, its first row's f16 scales and (Q4_1)
// minimums.
struct FbSlice {
    u32 q, d, m;
};

// Copy rows [r0, r1) of packed weight `w` (rows × cols, type ty) to shared
// memory at byte offset `*off` (advanced past it); returns where each part
// landed. Scale windows are widened to 16-byte boundaries.
__device__ __noinline__ FbSlice fb_load_slice(u8* smem, u32* off, const u8* w, int ty,
                                                 long long rows, int cols, long long r0,
                                                 long long r1) {
    long long nb = cols / 32, qb = ty == TY_Q8_0 ? 32 : 16;
    FbSlice s;
    u32 base = smem_u32(smem);
    s.q = *off;
    // The quants go in 16-byte chunks, transposed: chunk k of block `blk`
    // of slice row r lands at ((blk·c + k)·n + r)·16 (c = qb / 16 chunks a
    // block, n rows), so the lanes of a warp, one row each, read
    // consecutive chunks.
    {
        int n = (int)(r1 - r0), per = (int)(nb * (qb / 16));
        const u8* src = w + r0 * nb * qb;
        for (int o = threadIdx.x; o < n * per; o += FB_THREADS) {
            int r = o / per, k = o - r * per;
            fb_cp16(base + *off + (u32)((k * n + r) * 16), src + (long long)o * 16, 16);
        }
    }
    *off += (u32)((r1 - r0) * nb * qb);
    int parts = ty == TY_Q4_1 ? 2 : 1;
    for (int p = 0; p < 2; p++) {
        long long sec = rows * nb * qb + p * rows * nb * 2;
        long long st = sec + r0 * nb * 2, en = sec + r1 * nb * 2;
        long long a = st & ~15ll, e = (en + 15) & ~15ll;
        u32 at = *off + (u32)(st - a);
        if (p == 0) s.d = at;
        else s.m = at;
        if (p < parts && r1 > r0) {
            // Never past the array's end: the last chunk copies what is there.
            long long end = rows * nb * qb + parts * rows * nb * 2;
            fb_copy(base + *off, w, a, min(e, end));
            *off += (u32)(e - a);
        }
    }
    return s;
}

// Quantize n (a multiple of 32) f32 values to 8 bits per 32-block, as
// quantize_act does: q = round(x / d), d = amax / 127, and (d, d·Σq) per
// block. One warp a block.
__device__ __noinline__ void fb_quantize(const float* x, int n, signed char* q, float2* xs) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int b = warp; b < n / 32; b += FB_WARPS) quantize_lane(x[b * 32 + lane], q, xs, b);
}

// One 32-block of the matvec: the loads of fb_matvec's unrolled steps.
struct FbBlk {
    int4 xa, xb, wa, wb;
    float2 sx;
    float d, m;
};

__device__ __forceinline__ FbBlk fb_blk_load(const int4* wq, const u16* wd, const u16* wm, int ty,
                                             int n, int nb, int row, int blk,
                                             const signed char* xq, const float2* xs) {
    FbBlk v;
    const int4* xp = (const int4*)(xq + blk * 32);
    v.xa = xp[0];
    v.xb = xp[1];
    v.sx = xs[blk];
    if (ty == TY_Q8_0) {
        v.wa = wq[(2 * blk) * n + row];
        v.wb = wq[(2 * blk + 1) * n + row];
    } else {
        v.wa = wq[blk * n + row];
        v.wb = make_int4(0, 0, 0, 0);
    }
    v.d = h2f(wd[row * nb + blk]);
    v.m = ty == TY_Q4_1 ? h2f(wm[row * nb + blk]) : 0.f;
    return v;
}

// y[r] = scale · Σ_c W[r, c] · x[c] for the slice's rows [0, n): W in
// shared memory (quants transposed, see fb_load_slice), x quantized in
// shared memory (xq, xs), block_dot's __dp4a arithmetic. L lanes share a
// row (the most that keeps n · L ≤ FB_THREADS), lane = part · R + row in
// the warp's R = 32 / L rows, so a quarter-warp reads 8 consecutive rows'
// chunks (no bank conflicts) and the parts meet by shuffles; each lane
// issues the loads of 4 blocks before using any. No barrier inside.
__device__ __noinline__ void fb_matvec(const u8* smem, FbSlice s, int ty, int cols, int n,
                                       const signed char* xq, const float2* xs, float* y,
                                       float scale) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int nb = cols / 32;
    int L = 32;
    while (L > 1 && n * L > FB_THREADS) L >>= 1;
    int R = 32 / L, part = lane / R, ri = lane % R;
    const int4* wq = (const int4*)(smem + s.q);
    const u16* wd = (const u16*)(smem + s.d);
    const u16* wm = (const u16*)(smem + s.m);
    for (int r0 = warp * R; r0 < n; r0 += FB_WARPS * R) {
        int row = r0 + ri;
        float acc = 0.f;
        if (row < n) {
            int blk = part;
            for (; blk + 3 * L < nb; blk += 4 * L) {
                FbBlk v[4];
#pragma unroll
                for (int u = 0; u < 4; u++)
                    v[u] = fb_blk_load(wq, wd, wm, ty, n, nb, row, blk + u * L, xq, xs);
#pragma unroll
                for (int u = 0; u < 4; u++)
                    acc += block_dot(ty, v[u].wa, v[u].wb, v[u].d, v[u].m, v[u].xa, v[u].xb, v[u].sx);
            }
            for (; blk < nb; blk += L) {
                FbBlk v = fb_blk_load(wq, wd, wm, ty, n, nb, row, blk, xq, xs);
                acc += block_dot(ty, v.wa, v.wb, v.d, v.m, v.xa, v.xb, v.sx);
            }
        }
        for (int o = 16; o >= R; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (part == 0 && row < n) y[row] = acc * scale;
    }
}

// A value every thread of the block gets: the sum (or max) over threads,
// every warp reducing the FB_WARPS partials itself (same order, same
// value). `rs` holds FB_WARPS floats and has no trailing barrier: two
// calls in a row must use different buffers (the callers alternate two).
__device__ __forceinline__ float fb_reduce(float v, float* rs, bool is_max) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    v = is_max ? warp_max(v) : warp_sum(v);
    if (lane == 0) rs[warp] = v;
    __syncthreads();
    float r = lane < FB_WARPS ? rs[lane] : is_max ? NEG_INF : 0.f;
    return is_max ? warp_max(r) : warp_sum(r);
}

// Push n bytes (n % 4 == 0) of this block's shared `src` to `dst` in every
// block of the cluster, and n / 32 (d, d·Σq) scales from `ssrc` to `sdst`.
__device__ __forceinline__ void fb_push_q(const signed char* src, signed char* dst,
                                          const float2* ssrc, float2* sdst, int n, int nb) {
    int words = n / 4, per = words + n / 32 * 2;
    for (int idx = threadIdx.x; idx < per * nb; idx += FB_THREADS) {
        int i = idx % per, q = idx / per;
        if (i < words) {
            u32 v = ((const u32*)src)[i];
            asm volatile("st.shared::cluster.u32 [%0], %1;" ::"r"(fb_remote((const u32*)dst + i, (u32)q)),
                         "r"(v)
                         : "memory");
        } else {
            int k = i - words;
            float v = ((const float*)ssrc)[k];
            fb_st_remote(fb_remote((const float*)sdst + k, (u32)q), v);
        }
    }
}

// acc[e] += p · v[e] for the 8 halves of one value row's 16 bytes.
__device__ __forceinline__ void fb_pv(float (&acc)[8], float p, uint4 v) {
    acc[0] += p * h2f((u16)(v.x & 0xffff));
    acc[1] += p * h2f((u16)(v.x >> 16));
    acc[2] += p * h2f((u16)(v.y & 0xffff));
    acc[3] += p * h2f((u16)(v.y >> 16));
    acc[4] += p * h2f((u16)(v.z & 0xffff));
    acc[5] += p * h2f((u16)(v.z >> 16));
    acc[6] += p * h2f((u16)(v.w & 0xffff));
    acc[7] += p * h2f((u16)(v.w >> 16));
}

__device__ __forceinline__ u32 fb_align(u32 n_floats) { return (n_floats + 3) & ~3u; }
#endif

// ty: the seven weights' type codes, 4 bits each (q, k, v, o, gate, up,
// down from bit 0). The host checks every shape and launches one cluster of
// NB blocks (the whole grid) with the dynamic shared memory
// fb_smem (backend/cuda/mod.rs) computes.
template <int D>
__device__ __forceinline__ void fused_block_body(
    float* x, const float* n1w, const float* n2w, float eps, float rs, const u8* wq, const u8* wk,
    const u8* wv, const u8* wo, const u8* wg, const u8* wu, const u8* wdn, int tys, int E, int F,
    int Hq, int Hkv, const u32* pos, const double* inv_freq, int n_rot, u16* kc, u16* vc,
    const u32* first_slot, float scale) {
#if __CUDA_ARCH__ >= 900
    extern __shared__ __align__(16) u8 fb_smem[];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int b = (int)fb_rank(), NB = (int)fb_nrank();
    const int HT = Hq + 2 * Hkv, G = Hq / Hkv;
    // Rows of the output and down projections per block; gate/up units per
    // block in whole 32-blocks (their 8-bit copy is pushed by blocks).
    const int RPB = (E + NB - 1) / NB, UPB = ((F + NB - 1) / NB + 31) / 32 * 32;
    const int ty_q = tys & 15, ty_k = (tys >> 4) & 15, ty_v = (tys >> 8) & 15,
              ty_o = (tys >> 12) & 15, ty_g = (tys >> 16) & 15, ty_u = (tys >> 20) & 15,
              ty_d = (tys >> 24) & 15;
    const int maxh = (HT + NB - 1) / NB;
    const int QW = max(E, Hq * D); // widest input quantized in QQ

    // Activation regions, the same offsets in every block (fb_smem
    // on the host computes the same sizes).
    float* XS = (float*)fb_smem;                 // x, then x1 whole (E)
    float* HQ = XS + fb_align(E);                // this block's heads (maxh × D)
    float* N1 = HQ + fb_align(maxh * D);         // norm weights
    float* N2 = N1 + fb_align(E);
    float* SC = N2 + fb_align(E);                // attention probabilities; staging
    float* RED = SC + FB_THREADS;                // PV partials / projection outputs
    float* RS = RED + FB_THREADS * 8;            // two reduction buffers
    float2* QD = (float2*)(RS + 32);             // 8-bit input: (d, d·Σq) per 32-block
    float2* AD = QD + (QW / 32 + 1) / 2 * 2;     // pushed silu(g)·u: scales
    signed char* QQ = (signed char*)(AD + (F / 32 + 1) / 2 * 2); // 8-bit input
    signed char* AQ = QQ + ((QW + 15) & ~15);    // pushed silu(g)·u
    u32 off = (u32)((const u8*)(AQ + ((F + 15) & ~15)) - fb_smem);

    // ---- Before the wait: weights, norm weights, rotation, slot ----
    fb_copy(smem_u32(N1), (const u8*)n1w, 0, (long long)E * 4);
    fb_copy(smem_u32(N2), (const u8*)n2w, 0, (long long)E * 4);
    FbSlice sh[FB_MAXH];
    int nh = 0;
    for (int j = b; j < HT && nh < FB_MAXH; j += NB, nh++) {
        const u8* w = j < Hq ? wq : j < Hq + Hkv ? wk : wv;
        int ty = j < Hq ? ty_q : j < Hq + Hkv ? ty_k : ty_v;
        long long rows = j < Hq ? (long long)Hq * D : (long long)Hkv * D;
        long long h = j < Hq ? j : j < Hq + Hkv ? j - Hq : j - Hq - Hkv;
        sh[nh] = fb_load_slice(fb_smem, &off, w, ty, rows, E, h * D, (h + 1) * D);
    }
    long long rr0 = min((long long)b * RPB, (long long)E), rr1 = min(rr0 + RPB, (long long)E);
    long long ur0 = min((long long)b * UPB, (long long)F), ur1 = min(ur0 + UPB, (long long)F);
    const int nr = (int)(rr1 - rr0), nu = (int)(ur1 - ur0);
    FbSlice so = fb_load_slice(fb_smem, &off, wo, ty_o, E, Hq * D, rr0, rr1);
    FbSlice sg = fb_load_slice(fb_smem, &off, wg, ty_g, F, E, ur0, ur1);
    FbSlice su = fb_load_slice(fb_smem, &off, wu, ty_u, F, E, ur0, ur1);
    FbSlice sd = fb_load_slice(fb_smem, &off, wdn, ty_d, E, F, rr0, rr1);
    cp_async_commit();
    // pos, inv_freq and first_slot are step inputs and tables no kernel
    // writes (as in matvec_qkv_rope).
    float rc = 1.f, rsn = 0.f;
    if (tid < n_rot / 2) {
        double th = (double)pos[0] * inv_freq[tid], sn, cs;
        sincos(th, &sn, &cs);
        rc = (float)cs, rsn = (float)sn;
    }
    const long long fs = first_slot[0];

#ifdef TERN_TL
    // Phase stamps for the timeline (block 0's thread 0), in the record
    // whose number pdl_entry returns.
    const bool tl_me = b == 0 && tid == 0;
    u64 tl_n = 0, tl_t0 = 0, tl_t[5] = {0, 0, 0, 0, 0};
#define FB_STAMP(i) \
    if (tl_me) tl_t[i] = tl_now()
#else
#define FB_STAMP(i)
#endif
// FB_PROBE (KernelConfig::fb_probe) picks where the five stamps go: 0 at
// the ends of phases A–E; 1 inside phase D (after the barrier before it,
// the input's quantization and norm, the gate/up products, the pushes,
// the barrier); 2 inside phase B, block 0's first head and key chunk
// (after the key loads and products, the softmax, P·V, the output's
// merge and quantization, the pushes and barrier), from the end of A.
#define FB_AT(probe, i) \
    if (FB_PROBE == (probe)) FB_STAMP(i)
#ifdef TERN_TL
    tl_n = pdl_entry();
    if (tl_me) tl_t0 = tl_now();
#else
    pdl_entry();
#endif

    // ---- A: RMSNorm, q/k/v heads, RoPE, cache write ----
    // RMSNorm's scale multiplies a whole 32-block, so x·w is quantized
    // without waiting for it and the products are scaled afterwards.
    float ss = 0.f;
    {
        float vx[8]; // E ≤ 8 · FB_THREADS (host-checked)
#pragma unroll
        for (int i = 0; i < 8; i++) vx[i] = tid + i * FB_THREADS < E ? x[tid + i * FB_THREADS] : 0.f;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            if (tid + i * FB_THREADS < E) XS[tid + i * FB_THREADS] = vx[i];
            ss += vx[i] * vx[i];
        }
    }
    cp_async_wait<0>(); // weights and norms, issued long before
    __syncthreads();
    for (int q = warp; q < E / 32; q += FB_WARPS)
        quantize_lane(XS[q * 32 + lane] * N1[q * 32 + lane], QQ, QD, q);
    float sc = rsqrtf(fb_reduce(ss, RS, false) / (float)E + eps); // publishes QQ, QD
    for (int i = 0; i < nh; i++) {
        int j = b + i * NB;
        int ty = j < Hq ? ty_q : j < Hq + Hkv ? ty_k : ty_v;
        fb_matvec(fb_smem, sh[i], ty, E, D, QQ, QD, HQ + i * D, sc);
    }
    __syncthreads();
    for (int i = 0; i < nh; i++) {
        int j = b + i * NB;
        float* hv = HQ + i * D;
        if (j < Hq + Hkv && tid < n_rot / 2) {
            float x0 = hv[2 * tid], x1 = hv[2 * tid + 1];
            hv[2 * tid] = x0 * rc - x1 * rsn;
            hv[2 * tid + 1] = x0 * rsn + x1 * rc;
        }
    }
    __syncthreads();
    for (int i = 0; i < nh; i++) {
        int j = b + i * NB;
        if (j >= Hq && tid < D) {
            bool isk = j < Hq + Hkv;
            int hk = isk ? j - Hq : j - Hq - Hkv;
            u16* cache = isk ? kc : vc;
            cache[fs * Hkv * D + (long long)hk * D + tid] = f2h(HQ[i * D + tid]);
        }
    }
    fb_cluster_sync();
    FB_AT(0, 0);

    // ---- B: attention of this block's q heads ----
    // Keys [k0, k0 + 512) a chunk, one per thread for Q·K; for P·V thread
    // (c8, kg) sums dims c8·8.. over keys kg, kg + NG, …, its first VPRE
    // value rows loaded together with the keys (one L2 round trip).
    const float qscale = scale * 1.4426950408889634f;
    const long long n = fs + 1, width = (long long)Hkv * D;
    constexpr int CH = D / 8, NG = FB_THREADS / CH, VPRE = 8;
    const int c8 = tid % CH, kg = tid / CH;
    for (int i = 0; i < nh; i++) {
        int h = b + i * NB;
        if (h >= Hq) break;
        int hk = h / G;
        float* qv = HQ + i * D;
        const u16* kbase = kc + (long long)hk * D;
        const u16* vbase = vc + (long long)hk * D + c8 * 8;
        float m_run = NEG_INF, l_run = 0.f, acc[8];
#pragma unroll
        for (int e = 0; e < 8; e++) acc[e] = 0.f;
        for (long long k0 = 0; k0 < n; k0 += FB_THREADS) {
            int len = (int)min((long long)FB_THREADS, n - k0);
            uint4 vv[VPRE];
#pragma unroll
            for (int r = 0; r < VPRE; r++) {
                int k = kg + r * NG;
                vv[r] = k < len ? fb_ld_cg(vbase + (k0 + k) * width) : make_uint4(0, 0, 0, 0);
            }
            float s = NEG_INF;
            if (tid < len) {
                const u16* kr = kbase + (k0 + tid) * width;
                uint4 kv[CH];
#pragma unroll
                for (int c = 0; c < CH; c++) kv[c] = fb_ld_cg(kr + c * 8);
                float dot = 0.f;
#pragma unroll
                for (int c = 0; c < CH; c++) {
                    float4 qa = *(const float4*)(qv + c * 8), qb = *(const float4*)(qv + c * 8 + 4);
                    dot += h2f((u16)(kv[c].x & 0xffff)) * qa.x + h2f((u16)(kv[c].x >> 16)) * qa.y +
                           h2f((u16)(kv[c].y & 0xffff)) * qa.z + h2f((u16)(kv[c].y >> 16)) * qa.w +
                           h2f((u16)(kv[c].z & 0xffff)) * qb.x + h2f((u16)(kv[c].z >> 16)) * qb.y +
                           h2f((u16)(kv[c].w & 0xffff)) * qb.z + h2f((u16)(kv[c].w >> 16)) * qb.w;
                }
                s = dot * qscale;
            }
            if (i == 0 && k0 == 0) FB_AT(2, 0);
            float cmax = fb_reduce(s, RS, true);
            float m_new = fmaxf(m_run, cmax);
            float corr = exp2f(m_run - m_new); // m_run = -inf: 0
            float p = tid < len ? exp2f(s - m_new) : 0.f;
            SC[tid] = p;
            float csum = fb_reduce(p, RS + 16, false); // its barrier publishes SC
            l_run = l_run * corr + csum;
            m_run = m_new;
            if (i == 0 && k0 == 0) FB_AT(2, 1);
#pragma unroll
            for (int e = 0; e < 8; e++) acc[e] *= corr;
#pragma unroll
            for (int r = 0; r < VPRE; r++) {
                int k = kg + r * NG;
                if (k < len) fb_pv(acc, SC[k], vv[r]);
            }
            for (int k = kg + VPRE * NG; k < len; k += NG)
                fb_pv(acc, SC[k], fb_ld_cg(vbase + (k0 + k) * width));
            __syncthreads(); // SC is rewritten by the next chunk
            if (i == 0 && k0 == 0) FB_AT(2, 2);
        }
#pragma unroll
        for (int e = 0; e < 8; e++) RED[kg * D + c8 * 8 + e] = acc[e];
        __syncthreads();
        // The NG key groups' sums, in two steps: FB_THREADS / D parts of
        // each element into SC, then the parts into the q slot.
        {
            constexpr int P = FB_THREADS / D;
            int d = tid % D, part = tid / D;
            float o = 0.f;
#pragma unroll
            for (int g = part; g < NG; g += P) o += RED[g * D + d];
            SC[part * D + d] = o;
            __syncthreads();
            if (tid < D) {
                float r = 0.f;
#pragma unroll
                for (int p2 = 0; p2 < P; p2++) r += SC[p2 * D + tid];
                qv[tid] = r / l_run;
            }
            __syncthreads();
        }
        // Head h's output, quantized here (D / 32 blocks into SC as
        // staging), pushed into every block's QQ/QD at its place in the
        // concatenated heads: the output projection's 8-bit input.
        signed char* sq = (signed char*)SC;
        float2* sd2 = (float2*)(SC + 64);
        if (warp < D / 32) quantize_lane(qv[warp * 32 + lane], sq, sd2, warp);
        __syncthreads();
        if (i == 0) FB_AT(2, 3);
        fb_push_q(sq, QQ + h * D, sd2, QD + h * (D / 32), D, NB);
        __syncthreads(); // RED and SC are reused by the next head
    }
    fb_cluster_sync();
    FB_AT(0, 1);
    FB_AT(2, 4);

    // ---- C: output projection rows, residual, x1 pushed ----
    fb_matvec(fb_smem, so, ty_o, Hq * D, nr, QQ, QD, RED, 1.f);
    __syncthreads();
    float* X1 = RED + 2048; // nr ≤ RPB values (host: RPB ≤ 2048)
    for (int t = tid; t < nr; t += FB_THREADS) X1[t] = XS[rr0 + t] + rs * RED[t];
    __syncthreads();
    for (int idx = tid; idx < nr * NB; idx += FB_THREADS) {
        int t = idx % nr, q = idx / nr;
        fb_st_remote(fb_remote(XS + rr0 + t, (u32)q), X1[t]);
    }
    fb_cluster_sync();
    FB_AT(0, 2);
    FB_AT(1, 0);

    // ---- D: RMSNorm of x1, gate/up units, silu(g)·u pushed ----
    ss = 0.f;
    for (int q = warp; q < E / 32; q += FB_WARPS) {
        float v = XS[q * 32 + lane];
        ss += v * v;
        quantize_lane(v * N2[q * 32 + lane], QQ, QD, q);
    }
    sc = rsqrtf(fb_reduce(ss, RS + 16, false) / (float)E + eps);
    FB_AT(1, 1);
    fb_matvec(fb_smem, sg, ty_g, E, nu, QQ, QD, RED, sc);
    fb_matvec(fb_smem, su, ty_u, E, nu, QQ, QD, RED + 2048, sc);
    __syncthreads();
    for (int t = tid; t < nu; t += FB_THREADS) {
        float g = RED[t];
        RED[t] = g / (1.f + expf(-g)) * RED[2048 + t];
    }
    __syncthreads();
    {
        signed char* sq = (signed char*)SC; // nu ≤ 2048 bytes
        float2* sd2 = (float2*)(RED + 2048);
        for (int q = warp; q < nu / 32; q += FB_WARPS) quantize_lane(RED[q * 32 + lane], sq, sd2, q);
        __syncthreads();
        FB_AT(1, 2);
        fb_push_q(sq, AQ + ur0, sd2, AD + ur0 / 32, nu, NB);
    }
    FB_AT(1, 3);
    fb_cluster_sync();
    FB_AT(0, 3);
    FB_AT(1, 4);

    // ---- E: down projection rows, x = x1 + rs · down ----
    fb_matvec(fb_smem, sd, ty_d, F, nr, AQ, AD, RED, 1.f);
    __syncthreads();
    for (int t = tid; t < nr; t += FB_THREADS) x[rr0 + t] = XS[rr0 + t] + rs * RED[t];
    FB_AT(0, 4);
#ifdef TERN_TL
    // The phases' lengths (A–E, 8 ns units, 12 bits each) in the launch's
    // record's free word; timeline.py prints them.
    if (tl_me && tl_n < TL_CAP) { // pdl_entry writes records only that far
        u64 packed = 0;
        for (int i = 0; i < 5; i++) {
            u64 dt = (tl_t[i] - (i ? tl_t[i - 1] : tl_t0)) / 8;
            packed |= (dt > 4095 ? 4095 : dt) << (12 * i);
        }
        ((volatile u64*)TERN_TL)[4 * (tl_n + 1) + 3] = packed;
    }
#endif
#undef FB_STAMP
#undef FB_AT
#endif
}

extern "C" __global__ void __launch_bounds__(FB_THREADS, 1)
    fused_block_64(float* x, const float* n1w, const float* n2w, float eps, float rs,
                   const u8* wq, const u8* wk, const u8* wv, const u8* wo, const u8* wg,
                   const u8* wu, const u8* wdn, int tys, int E, int F, int Hq, int Hkv,
                   const u32* pos, const double* inv_freq, int n_rot, u16* kc, u16* vc,
                   const u32* first_slot, float scale) {
    fused_block_body<64>(x, n1w, n2w, eps, rs, wq, wk, wv, wo, wg, wu, wdn, tys, E, F, Hq, Hkv,
                         pos, inv_freq, n_rot, kc, vc, first_slot, scale);
}

extern "C" __global__ void __launch_bounds__(FB_THREADS, 1)
    fused_block_128(float* x, const float* n1w, const float* n2w, float eps, float rs,
                    const u8* wq, const u8* wk, const u8* wv, const u8* wo, const u8* wg,
                    const u8* wu, const u8* wdn, int tys, int E, int F, int Hq, int Hkv,
                    const u32* pos, const double* inv_freq, int n_rot, u16* kc, u16* vc,
                    const u32* first_slot, float scale) {
    fused_block_body<128>(x, n1w, n2w, eps, rs, wq, wk, wv, wo, wg, wu, wdn, tys, E, F, Hq, Hkv,
                          pos, inv_freq, n_rot, kc, vc, first_slot, scale);
}
