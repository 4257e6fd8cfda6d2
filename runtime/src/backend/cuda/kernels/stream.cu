// stream.cu — one token's decoder block in two persistent launches of one
// block per SM (sm_90): `sd_pre` (RMSNorm, q/k/v, RoPE, the cache write)
// and `sd_post` (output projection + residual, RMSNorm, gate/up + SwiGLU,
// down projection + residual); the decode attention's own kernels run
// between them.
//
// Why: the 8B's decode step is bound by weight bytes, yet the separate
// kernels leave DRAM idle for every small kernel and every launch's ramp
// and tail (docs/cuda-kernel-notes.md, tenth pass). Here each block's
// producer warp streams the block's share of every weight of its launch,
// in order, into a ring of shared-memory slots (cp.async.bulk, completion
// on an mbarrier per slot), independently of the data dependencies: it
// starts before the wait for the previous kernel (weights are never
// written by a kernel) and runs on through the grid-wide barriers between
// the stages, held back only by free slots. The eight consumer warps wait
// for a slot, multiply it with the 8-bit activations they hold in
// registers, and free it.
//
// Layout: the grid is one block per SM, all resident (one block fills an
// SM's shared memory; the host checks the occupancy). A stage's rows are
// split into contiguous ranges, one per block (q/k/v in whole rotated
// pairs, gate/up in whole 32-unit groups so SwiGLU's 8-bit blocks are
// quantized where they are made), so a block's share of a matrix is one
// contiguous range of quants and one of scales. A slot holds up to
// SD_SLOT bytes of whole rows (8 rows of 4,096 columns); each consumer
// warp takes one (row, 4,096-column segment) of it, each lane the same 4
// blocks of 32 columns of every row of the stage, so a lane's activations
// stay in registers for the whole stage. Results go to shared memory; the
// stage's epilogue adds the residual, rotates, stores the cache or forms
// SwiGLU.
//
// Arithmetic: the separate kernels' exactly, where the order allows: the
// norm is rms_norm_q's (same partial sums, same quantization), each
// product block_dot's in the same lane order as matvec_q1 with one warp a
// row, SwiGLU silu_mul_q's, RoPE matvec_qkv_rope's.
//
// Weights must be Q4_0 and every mat-vec input a multiple of 4,096 wide
// (the host checks; other models take the separate kernels).

#define SD_GW 8                 // warps of a consumer group (one slot's tasks)
#define SD_CW (2 * SD_GW)       // consumer warps: two groups, alternate slots
#define SD_CT (SD_CW * 32)      // consumer threads (named barrier 1)
#define SD_THREADS (SD_CT + 32) // and one producer warp
#define SD_SEG 128              // 32-column blocks of one warp task (4,096 columns)
#define SD_SLOT 18432           // bytes of one ring slot: 8 × 128 blocks × 18
#define SD_NPW 8                // 32-blocks of the normed input per consumer warp
#define SD_MAXE (SD_CW * SD_NPW * 32) // widest normed input (4,096)
#define SD_OUT 2048             // result floats a block keeps for an epilogue
#define SD_MAXS 16              // most ring slots

struct SdSmem {
    unsigned long long full[SD_MAXS];  // slot filled (the producer's copies landed)
    unsigned long long empty[SD_MAXS]; // slot freed (its group's warps are done)
    float red[32];
    float2 xs[SD_MAXE / 32];
    float out[SD_OUT];
    signed char xq[SD_MAXE];
};

// One stage of a launch: this block's rows [r0, r1) of the row space of up
// to three Q4_0 matrices laid end to end (q, k, v), or with `pair` the
// same rows of two (gate and up) in each slot.
struct SdPlan {
    const u8* w[3];
    int rows[3];
    int nb; // 32-column blocks per row (a multiple of SD_SEG)
    int r0, r1;
    int pair;
};

__device__ __forceinline__ void sd_bar() {
    asm volatile("bar.sync 1, %0;" ::"n"(SD_CT) : "memory");
}

#if __CUDA_ARCH__ >= 900
__device__ __forceinline__ void mbar_init(u32 a, u32 n) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(a), "r"(n) : "memory");
}
__device__ __forceinline__ void mbar_expect(u32 a, u32 bytes) {
    asm volatile("{ .reg .b64 st; mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1; }" ::"r"(a),
                 "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 a) {
    asm volatile("{ .reg .b64 st; mbarrier.arrive.shared::cta.b64 st, [%0]; }" ::"r"(a) : "memory");
}
__device__ __forceinline__ void mbar_wait(u32 a, u32 parity) {
    asm volatile("{ .reg .pred p;\n"
                 "SD_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra SD_WAIT;\n"
                 "}" ::"r"(a),
                 "r"(parity)
                 : "memory");
}
// Global → shared, completing `bytes` on the mbarrier at `bar`.
__device__ __forceinline__ void sd_bulk(u32 dst, const void* src, u32 bytes, u32 bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}
#endif

// Loads of what other blocks of the launch wrote before a grid barrier:
// through L2 (ld.global.cg), never a line this SM's L1 kept from earlier.
__device__ __forceinline__ float4 sd_ld4(const float* p) {
    float4 v;
    asm volatile("ld.global.cg.v4.f32 {%0,%1,%2,%3}, [%4];"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "l"(p));
    return v;
}
__device__ __forceinline__ float sd_ld(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ int4 sd_ldi4(const void* p) {
    int4 v;
    asm volatile("ld.global.cg.v4.s32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}
__device__ __forceinline__ float2 sd_ld2(const float2* p) {
    float2 v;
    asm volatile("ld.global.cg.v2.f32 {%0,%1}, [%2];" : "=f"(v.x), "=f"(v.y) : "l"(p));
    return v;
}

// The rows of the chunk starting at row `cur`: n rows of matrix m from its
// row rm (with `pair`, of both matrices).
__device__ __forceinline__ int sd_chunk(const SdPlan& p, int cur, int& m, int& rm) {
    int cr = SD_SLOT / (p.nb * 18 * (p.pair ? 2 : 1));
    m = 0;
    rm = cur;
    if (p.pair) return min(cr, p.r1 - cur);
    while (m < 2 && rm >= p.rows[m]) {
        rm -= p.rows[m];
        m++;
    }
    return min(cr, min(p.r1 - cur, p.rows[m] - rm));
}

// [u0, u1) of `units` split evenly over the grid.
__device__ __forceinline__ void sd_split(int units, int& u0, int& u1) {
    u0 = (int)((long long)units * blockIdx.x / gridDim.x);
    u1 = (int)((long long)units * (blockIdx.x + 1) / gridDim.x);
}

// The producer: every chunk of the plan into the ring, slot k mod ns,
// after the consumers freed that slot's previous use. A slot's rows: all
// quants, then all scales. The whole producer warp calls it: lane 0 issues
// bulk copies (cp.async.bulk, the default), or with dbg bit 2 every lane
// issues 16-byte cp.async copies and the slot's barrier counts the 32
// lanes' completions (a diagnostic of the copy engine's rate).
__device__ __forceinline__ void sd_produce(const SdPlan& p, u32 ring, u32 full, u32 empty, int ns,
                                           int& k, int dbg) {
#if __CUDA_ARCH__ >= 900
    int lane = threadIdx.x % 32;
    bool lsu = dbg & 4;
    for (int cur = p.r0; cur < p.r1;) {
        int m, rm;
        int n = sd_chunk(p, cur, m, rm);
        int parts = p.pair ? 2 : 1, s = k % ns;
        if (k >= ns) mbar_wait(empty + 8 * s, ((k / ns) & 1) ^ 1);
        u32 qb = (u32)n * p.nb * 16, sb = (u32)n * p.nb * 2;
        u32 dst = ring + (u32)s * SD_SLOT;
        if (!lsu && lane == 0) mbar_expect(full + 8 * s, parts * (qb + sb));
        for (int j = 0; j < parts; j++) {
            const u8* w = p.w[m + j];
            long long nbl = (long long)p.rows[m + j] * p.nb;
            const u8* qsrc = w + (long long)rm * p.nb * 16;
            const u8* ssrc = w + nbl * 16 + (long long)rm * p.nb * 2;
            u32 qdst = dst + j * qb, sdst = dst + parts * qb + j * sb;
            if (lsu) {
                for (u32 o = lane * 16; o < qb; o += 512)
                    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(qdst + o),
                                 "l"(qsrc + o)
                                 : "memory");
                for (u32 o = lane * 16; o < sb; o += 512)
                    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sdst + o),
                                 "l"(ssrc + o)
                                 : "memory");
            } else if (lane == 0) {
                sd_bulk(qdst, qsrc, qb, full + 8 * s);
                sd_bulk(sdst, ssrc, sb, full + 8 * s);
            }
        }
        if (lsu)
            asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(full + 8 * s)
                         : "memory");
        cur += n;
        k++;
    }
#endif
}

// This warp's activations for the stage: segment `seg` of the 8-bit input
// (GLOBAL: in global memory, read through L2; else shared), lane blocks
// lane + 32·u.
template <bool GLOBAL>
__device__ __forceinline__ void sd_act(const signed char* xq, const float2* xs, int seg,
                                       int4 (&xa)[4], int4 (&xb)[4], float2 (&sc)[4]) {
    int lane = threadIdx.x % 32;
#pragma unroll
    for (int u = 0; u < 4; u++) {
        int b = seg * SD_SEG + lane + 32 * u;
        const int4* p = (const int4*)(xq + (long long)b * 32);
        if (GLOBAL) {
            xa[u] = sd_ldi4(p);
            xb[u] = sd_ldi4(p + 1);
            sc[u] = sd_ld2(xs + b);
        } else {
            xa[u] = p[0];
            xb[u] = p[1];
            sc[u] = xs[b];
        }
    }
}

// The consumers: every chunk of the plan from the ring, group g taking the
// chunks k with k mod 2 = g. Warp w of a group takes row w / nq of the
// slot, segment w mod nq (the one its activations hold), and leaves the
// row's partial sum in out[lo · nq + segment], lo the row's index in the
// block's range (with `pair`, up's rows from SD_OUT / 2). dbg bit 0: no
// arithmetic (a diagnostic of the streaming alone; results are wrong).
__device__ __forceinline__ void sd_consume(const SdPlan& p, const u8* ring, u32 full, u32 empty,
                                           int ns, int& k, const int4 (&xa)[4],
                                           const int4 (&xb)[4], const float2 (&sc)[4], float* out,
                                           int dbg) {
#if __CUDA_ARCH__ >= 900
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int grp = warp / SD_GW, wi = warp % SD_GW;
    int nq = p.nb / SD_SEG, seg = wi % nq, i = wi / nq;
    for (int cur = p.r0; cur < p.r1;) {
        int m, rm;
        int n = sd_chunk(p, cur, m, rm);
        int nr = p.pair ? 2 * n : n, s = k % ns;
        if ((k & 1) == grp) {
            mbar_wait(full + 8 * s, (k / ns) & 1);
            if (i < nr && (dbg & 1)) {
                int lo = cur - p.r0 + (i < n ? i : i - n) + (i < n ? 0 : SD_OUT / 2);
                if (lane == 0) out[lo * nq + seg] = 0.f;
            } else if (i < nr) {
                const u8* slot = ring + (long long)s * SD_SLOT;
                const u8* qs = slot + ((long long)i * p.nb + seg * SD_SEG) * 16;
                const u16* ds =
                    (const u16*)(slot + (long long)nr * p.nb * 16) + i * p.nb + seg * SD_SEG;
                float acc = 0.f;
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    int b = lane + 32 * u;
                    int4 wa = *(const int4*)(qs + b * 16);
                    acc += block_dot(TY_Q4_0, wa, wa, h2f(ds[b]), 0.f, xa[u], xb[u], sc[u]);
                }
                acc = warp_sum(acc);
                if (lane == 0) {
                    int lo = cur - p.r0 + (i < n ? i : i - n) + (i < n ? 0 : SD_OUT / 2);
                    out[lo * nq + seg] = acc;
                }
            }
            __syncwarp();
            if (lane == 0) mbar_arrive(empty + 8 * s);
        }
        cur += n;
        k++;
    }
#endif
}

// The norm's weight for this warp's 32-blocks b = warp + SD_CW·j of the
// row (weights: read before the wait).
__device__ __forceinline__ void sd_norm_w(const float* nw, int E, float (&w)[SD_NPW]) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int j = 0; j < SD_NPW; j++) {
        int b = warp + SD_CW * j;
        w[j] = b < E / 32 ? nw[b * 32 + lane] : 0.f;
    }
}

// RMSNorm of the row x (E ≤ SD_MAXE) with the weight sd_norm_w loaded,
// quantized into S.xq / S.xs as rms_norm_q quantizes (the sum of squares
// in another order). Every load is issued before the first is used.
__device__ __forceinline__ void sd_norm(const float* x, const float (&w)[SD_NPW], float eps, int E,
                                        SdSmem& S) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float v[SD_NPW];
#pragma unroll
    for (int j = 0; j < SD_NPW; j++) {
        int b = warp + SD_CW * j;
        v[j] = b < E / 32 ? sd_ld(x + b * 32 + lane) : 0.f;
    }
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < SD_NPW; j++) ss += v[j] * v[j];
    ss = warp_sum(ss);
    if (lane == 0) S.red[warp] = ss;
    sd_bar();
    float t = lane < SD_CW ? S.red[lane] : 0.f;
    t = warp_sum(t);
    float s = rsqrtf(t / (float)E + eps);
#pragma unroll
    for (int j = 0; j < SD_NPW; j++) {
        int b = warp + SD_CW * j;
        if (b < E / 32) quantize_lane(v[j] * s * w[j], S.xq, S.xs, b);
    }
    sd_bar();
}

// Every block has finished the stage before (its global writes visible)
// when any block passes. bar counts arrivals over the buffer's whole life
// (64 bits: it never wraps); the arrivals of one barrier are the G values
// from a multiple of the grid's size G on, so each block waits for the
// next multiple. Every launch of a backend has the same G.
__device__ __forceinline__ void sd_grid_sync(unsigned long long* bar, int dbg) {
    sd_bar();
    if (dbg & 2) return; // a diagnostic: no barrier (results are wrong)
    if (threadIdx.x == 0) {
        unsigned long long g = gridDim.x;
        __threadfence();
        unsigned long long old = atomicAdd(bar, 1ull);
        unsigned long long target = (old / g + 1) * g;
        while (*(volatile unsigned long long*)bar < target) {
        }
        __threadfence();
    }
    sd_bar();
}

// The residual update of a projection stage: x[r] += res · Σ segments, one
// thread per row of the block's range.
__device__ __forceinline__ void sd_residual(const SdPlan& p, float* x, float res, const float* out) {
    int nq = p.nb / SD_SEG;
    for (int lo = threadIdx.x; lo < p.r1 - p.r0; lo += SD_CT) {
        float v = 0.f;
        for (int q = 0; q < nq; q++) v += out[lo * nq + q];
        x[p.r0 + lo] = sd_ld(x + p.r0 + lo) + res * v;
    }
}

// Body of sd_pre; everything before the wait reads only weights.
__device__ __forceinline__ void sd_pre_body(const float* x, const float* nw, float eps, int E,
                                            const u8* wq, int rq, const u8* wk, const u8* wv,
                                            int rkv, float* q, const u32* pos,
                                            const double* inv_freq, int head_dim, int n_rot, u8* kc,
                                            u8* vc, const u32* first_slot, int f16, int ns,
                                            int dbg) {
#if __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) u8 sd_smem[];
    SdSmem& S = *(SdSmem*)sd_smem;
    u8* ring = sd_smem + sizeof(SdSmem);
    u32 full = smem_u32(S.full), empty = smem_u32(S.empty);
    int warp = threadIdx.x / 32;
    SdPlan pl;
    pl.w[0] = wq, pl.w[1] = wk, pl.w[2] = wv;
    pl.rows[0] = rq, pl.rows[1] = rkv, pl.rows[2] = rkv;
    pl.nb = E / 32;
    pl.pair = 0;
    sd_split((rq + 2 * rkv) / 2, pl.r0, pl.r1);
    pl.r0 *= 2, pl.r1 *= 2;
    if (threadIdx.x == 0) {
        for (int s = 0; s < ns; s++) {
            mbar_init(full + 8 * s, (dbg & 4) ? 32 : 1);
            mbar_init(empty + 8 * s, SD_GW);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (warp == SD_CW) {
        int k = 0;
        sd_produce(pl, smem_u32(ring), full, empty, ns, k, dbg);
        return;
    }
    float nwr[SD_NPW];
    sd_norm_w(nw, E, nwr);
    pdl_entry<1>();
    sd_norm(x, nwr, eps, E, S);
    int4 xa[4], xb[4];
    float2 sc[4];
    sd_act<false>(S.xq, S.xs, 0, xa, xb, sc);
    int k = 0;
    sd_consume(pl, ring, full, empty, ns, k, xa, xb, sc, S.out, dbg);
    sd_bar();
    // RoPE on q and k (pairs (2p, 2p + 1) of each head, as matvec_qkv_rope),
    // q stored, k and v into the cache slot.
    for (int lo = threadIdx.x; lo < pl.r1 - pl.r0; lo += SD_CT) {
        int r = pl.r0 + lo, which = r < rq ? 0 : r < rq + rkv ? 1 : 2;
        int rr = which == 0 ? r : which == 1 ? r - rq : r - rq - rkv;
        float x0 = S.out[lo & ~1], x1 = S.out[lo | 1];
        float y = (rr & 1) ? x1 : x0;
        int pp = (rr % head_dim) / 2;
        if (which < 2 && pp < n_rot / 2) {
            double theta = (double)pos[0] * inv_freq[pp];
            double sn, cs;
            sincos(theta, &sn, &cs);
            float c = (float)cs, s = (float)sn;
            y = (rr & 1) ? x0 * s + x1 * c : x0 * c - x1 * s;
        }
        if (which == 0) {
            q[rr] = y;
            continue;
        }
        u8* cache = which == 1 ? kc : vc;
        long long dst = (long long)first_slot[0] * rkv + rr;
        if (f16)
            ((u16*)cache)[dst] = f2h(y);
        else
            ((float*)cache)[dst] = y;
    }
#endif
}

// Body of sd_post; everything before the wait reads only weights.
__device__ __forceinline__ void sd_post_body(float* x, const signed char* aq, const float2* as,
                                             const u8* wo, const float* nw, const u8* wg,
                                             const u8* wu, const u8* wd, int E, int F, int A,
                                             float eps, float res, signed char* gq, float2* gs,
                                             unsigned long long* bar, int ns, int dbg) {
#if __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) u8 sd_smem[];
    SdSmem& S = *(SdSmem*)sd_smem;
    u8* ring = sd_smem + sizeof(SdSmem);
    u32 full = smem_u32(S.full), empty = smem_u32(S.empty);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    SdPlan po, pg, pd;
    po.w[0] = wo, po.rows[0] = E, po.rows[1] = po.rows[2] = 0, po.nb = A / 32, po.pair = 0;
    sd_split(E, po.r0, po.r1);
    pg.w[0] = wg, pg.w[1] = wu, pg.rows[0] = pg.rows[1] = F, pg.rows[2] = 0, pg.nb = E / 32;
    pg.pair = 1;
    sd_split(F / 32, pg.r0, pg.r1);
    pg.r0 *= 32, pg.r1 *= 32;
    pd.w[0] = wd, pd.rows[0] = E, pd.rows[1] = pd.rows[2] = 0, pd.nb = F / 32, pd.pair = 0;
    sd_split(E, pd.r0, pd.r1);
    if (threadIdx.x == 0) {
        for (int s = 0; s < ns; s++) {
            mbar_init(full + 8 * s, (dbg & 4) ? 32 : 1);
            mbar_init(empty + 8 * s, SD_GW);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (warp == SD_CW) {
        int k = 0;
        u32 r = smem_u32(ring);
        sd_produce(po, r, full, empty, ns, k, dbg);
        sd_produce(pg, r, full, empty, ns, k, dbg);
        sd_produce(pd, r, full, empty, ns, k, dbg);
        return;
    }
    float nwr[SD_NPW];
    sd_norm_w(nw, E, nwr);
#ifdef TERN_TL
    // A timeline build stamps block 0's stages (A: the output projection's
    // products; B: its residual, the grid barrier and the norm; C: the
    // gate/up products; D: SwiGLU and the barrier; E: the down projection)
    // into its record's free word, as block.cu does; timeline.py prints them.
    const bool tl_me = (blockIdx.x | threadIdx.x) == 0;
    u64 tl_n = pdl_entry<1>(), tl_t0 = tl_now(), tl_t[5] = {0, 0, 0, 0, 0};
#define SD_STAMP(i) \
    if (tl_me) tl_t[i] = tl_now()
#else
    pdl_entry<1>();
#define SD_STAMP(i)
#endif
    int4 xa[4], xb[4];
    float2 sc[4];
    int k = 0;
    // Output projection, the residual added.
    sd_act<true>(aq, as, warp % (po.nb / SD_SEG), xa, xb, sc);
    sd_consume(po, ring, full, empty, ns, k, xa, xb, sc, S.out, dbg);
    sd_bar();
    SD_STAMP(0);
    sd_residual(po, x, res, S.out);
    sd_grid_sync(bar, dbg);
    // RMSNorm of the whole new row, gate/up, SwiGLU quantized per 32 units.
    sd_norm(x, nwr, eps, E, S);
    SD_STAMP(1);
    sd_act<false>(S.xq, S.xs, 0, xa, xb, sc);
    sd_consume(pg, ring, full, empty, ns, k, xa, xb, sc, S.out, dbg);
    sd_bar();
    SD_STAMP(2);
    for (int g = warp; g < (pg.r1 - pg.r0) / 32; g += SD_CW) {
        int lo = g * 32 + lane;
        float gv = S.out[lo];
        float v = gv / (1.f + expf(-gv)) * S.out[SD_OUT / 2 + lo];
        quantize_lane(v, gq, gs, pg.r0 / 32 + g);
    }
    sd_grid_sync(bar, dbg);
    SD_STAMP(3);
    // Down projection, the residual added.
    sd_act<true>(gq, gs, warp % (pd.nb / SD_SEG), xa, xb, sc);
    sd_consume(pd, ring, full, empty, ns, k, xa, xb, sc, S.out, dbg);
    sd_bar();
    sd_residual(pd, x, res, S.out);
    SD_STAMP(4);
#ifdef TERN_TL
    if (tl_me && tl_n < TL_CAP) { // pdl_entry writes records only that far
        u64 packed = 0;
        for (int i = 0; i < 5; i++) {
            u64 dt = (tl_t[i] - (i ? tl_t[i - 1] : tl_t0)) / 8;
            packed |= (dt > 4095 ? 4095 : dt) << (12 * i);
        }
        ((volatile u64*)TERN_TL)[4 * (tl_n + 1) + 3] = packed;
    }
#endif
#undef SD_STAMP
#endif
}

// The two launches. Shapes (rows × columns): x, the residual row, 1 × E;
// nw, a norm's weight; wq, wk, wv: Q4_0, rq or rkv × E; q, the rotated
// query row; kc, vc: this layer's cache, rows of rkv; wo: Q4_0 E × A, A
// the attention's width; aq, as: the attention's output, quantized; wg,
// wu: Q4_0 F × E; wd: Q4_0 E × F; gq, gs: scratch for SwiGLU's output,
// quantized; bar: a 64-bit count, zero at first, for the grid barriers;
// ns: ring slots (the host sized the shared memory for them); dbg: see
// sd_consume.
extern "C" __global__ void __launch_bounds__(SD_THREADS, 1)
    sd_pre(const float* x, const float* nw, float eps, int E, const u8* wq, int rq, const u8* wk,
           const u8* wv, int rkv, float* q, const u32* pos, const double* inv_freq, int head_dim,
           int n_rot, u8* kc, u8* vc, const u32* first_slot, int f16, int ns, int dbg) {
    sd_pre_body(x, nw, eps, E, wq, rq, wk, wv, rkv, q, pos, inv_freq, head_dim, n_rot, kc, vc,
                first_slot, f16, ns, dbg);
}

extern "C" __global__ void __launch_bounds__(SD_THREADS, 1)
    sd_post(float* x, const signed char* aq, const float2* as, const u8* wo, const float* nw,
            const u8* wg, const u8* wu, const u8* wd, int E, int F, int A, float eps, float res,
            signed char* gq, float2* gs, unsigned long long* bar, int ns, int dbg) {
    sd_post_body(x, aq, as, wo, nw, wg, wu, wd, E, F, A, eps, res, gq, gs, bar, ns, dbg);
}
