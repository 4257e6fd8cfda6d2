// matmul.cu — prefill matrix-matrix products on the tensor cores:
// out[t, r] = Σ_c W[r, c]·x[t, c] for many tokens.
//
// Each block computes a 64 × 64 (weight rows × tokens) tile with 4 warps
// (2 × 2, 32 × 32 each), or for large problems 128 × 128 with 8 warps
// (2 × 4, 64 × 32 each). Per 32-column step it dequantizes the weight tile
// to f16 in shared memory, converts the activation tile to f16 beside it,
// and each warp runs mma.sync m16n8k16 (f16 inputs, f32 accumulators) over
// it. Rows are padded to 40 halves so the fragment loads of a warp hit 32
// different banks. PTX is written inline, so no toolkit header is needed.

#define MM_BK 32
#define MM_LD 40

__device__ __forceinline__ void mma_16816(float* c, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Raw bytes of one loader's share of a tile (16 weights or activations).
struct MmRaw {
    uint4 a, b, c, e;
    float d, m;
    bool ok;
};

__device__ __forceinline__ MmRaw mm_fetch_w(const u8* w, int ty, int rows, int cols, int nb,
                                            const u16* dq, const u16* mq, int r, int b, int lh) {
    MmRaw v;
    v.ok = r < rows;
    if (!v.ok) return v;
    long long blk = (long long)r * nb + b;
    if (ty == TY_Q4_0 || ty == TY_Q4_1) {
        v.a = *(const uint4*)(w + blk * 16);
        v.d = h2f(dq[blk]);
        v.m = ty == TY_Q4_1 ? h2f(mq[blk]) : -8.f * v.d;
    } else if (ty == TY_Q8_0) {
        v.a = *(const uint4*)(w + blk * 32 + lh * 16);
        v.d = h2f(dq[blk]);
    } else if (ty == TY_F16) {
        const uint4* p = (const uint4*)((const u16*)w + (long long)r * cols + b * 32 + lh * 16);
        v.a = p[0];
        v.b = p[1];
    } else {
        const uint4* p = (const uint4*)((const float*)w + (long long)r * cols + b * 32 + lh * 16);
        v.a = p[0];
        v.b = p[1];
        v.c = p[2];
        v.e = p[3];
    }
    return v;
}

__device__ __forceinline__ MmRaw mm_fetch_x(const float* x, int ntok, int cols, int t, int b,
                                            int lh) {
    MmRaw v;
    v.ok = t < ntok;
    if (!v.ok) return v;
    const uint4* p = (const uint4*)(x + (long long)t * cols + b * 32 + lh * 16);
    v.a = p[0];
    v.b = p[1];
    v.c = p[2];
    v.e = p[3];
    return v;
}

__device__ __forceinline__ void mm_store_f32x16(const MmRaw& v, u16* dst) {
    u32 f[16] = {v.a.x, v.a.y, v.a.z, v.a.w, v.b.x, v.b.y, v.b.z, v.b.w,
                 v.c.x, v.c.y, v.c.z, v.c.w, v.e.x, v.e.y, v.e.z, v.e.w};
    u32 h[8];
#pragma unroll
    for (int k = 0; k < 8; k++)
        h[k] = (u32)f2h(__uint_as_float(f[2 * k])) | ((u32)f2h(__uint_as_float(f[2 * k + 1])) << 16);
    ((uint4*)dst)[0] = make_uint4(h[0], h[1], h[2], h[3]);
    ((uint4*)dst)[1] = make_uint4(h[4], h[5], h[6], h[7]);
}

__device__ __forceinline__ void mm_store_w(const MmRaw& v, int ty, int lh, u16* dst) {
    if (!v.ok) {
        ((uint4*)dst)[0] = make_uint4(0, 0, 0, 0);
        ((uint4*)dst)[1] = make_uint4(0, 0, 0, 0);
        return;
    }
    u32 h[8];
    if (ty == TY_Q4_0 || ty == TY_Q4_1) {
        u32 qw[4] = {v.a.x, v.a.y, v.a.z, v.a.w};
#pragma unroll
        for (int k = 0; k < 8; k++) {
            u32 b0 = (qw[(2 * k) / 4] >> (8 * ((2 * k) % 4))) & 0xff;
            u32 b1 = (qw[(2 * k + 1) / 4] >> (8 * ((2 * k + 1) % 4))) & 0xff;
            u32 n0 = lh == 0 ? (b0 & 15) : (b0 >> 4);
            u32 n1 = lh == 0 ? (b1 & 15) : (b1 >> 4);
            h[k] = (u32)f2h(v.d * (float)n0 + v.m) | ((u32)f2h(v.d * (float)n1 + v.m) << 16);
        }
    } else if (ty == TY_Q8_0) {
        u32 qw[4] = {v.a.x, v.a.y, v.a.z, v.a.w};
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int q0 = (int)(signed char)((qw[(2 * k) / 4] >> (8 * ((2 * k) % 4))) & 0xff);
            int q1 = (int)(signed char)((qw[(2 * k + 1) / 4] >> (8 * ((2 * k + 1) % 4))) & 0xff);
            h[k] = (u32)f2h(v.d * (float)q0) | ((u32)f2h(v.d * (float)q1) << 16);
        }
    } else if (ty == TY_F16) {
        ((uint4*)dst)[0] = v.a;
        ((uint4*)dst)[1] = v.b;
        return;
    } else {
        mm_store_f32x16(v, dst);
        return;
    }
    ((uint4*)dst)[0] = make_uint4(h[0], h[1], h[2], h[3]);
    ((uint4*)dst)[1] = make_uint4(h[4], h[5], h[6], h[7]);
}

__device__ __forceinline__ void mm_store_x(const MmRaw& v, u16* dst) {
    if (!v.ok) {
        ((uint4*)dst)[0] = make_uint4(0, 0, 0, 0);
        ((uint4*)dst)[1] = make_uint4(0, 0, 0, 0);
        return;
    }
    mm_store_f32x16(v, dst);
}

// BM × BN tile per block; warps arranged WM × WN, each owning a
// (BM/WM) × (BN/WN) sub-tile: MI m16 tiles by NJ n8 tiles.
template <int BM, int BN, int WM, int WN>
__device__ __forceinline__ void matmul_mma_impl(const u8* w, int ty, int rows, int cols,
                                                const float* x, int ntok, float* out, u16* sw,
                                                u16* sx) {
    constexpr int MI = BM / WM / 16, NJ = BN / WN / 8;
    int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    int wm = warp / WN, wn = warp % WN;
    int r0 = blockIdx.x * BM, t0 = blockIdx.y * BN;
    int nb = cols / 32;
    long long nrow_blocks = (long long)rows * nb;
    const u16* dq = (const u16*)(w + nrow_blocks * (ty == TY_Q8_0 ? 32 : 16));
    const u16* mq = dq + nrow_blocks;

    float acc[MI][NJ][4];
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NJ; j++)
#pragma unroll
            for (int k = 0; k < 4; k++) acc[i][j][k] = 0.f;

    // Loader roles: thread → (tile row, half of the 32 columns); the block
    // has 2·BM = 2·BN threads.
    int lr = tid / 2, lh = tid % 2;
    // Software pipelining: the global loads of step b+1 are issued into
    // registers before the tensor-core work of step b, so their latency
    // hides behind it; dequantization happens on the store to shared memory.
    MmRaw rw = mm_fetch_w(w, ty, rows, cols, nb, dq, mq, r0 + lr, 0, lh);
    MmRaw rx = mm_fetch_x(x, ntok, cols, t0 + lr, 0, lh);
    for (int b = 0; b < nb; b++) {
        mm_store_w(rw, ty, lh, sw + lr * MM_LD + lh * 16);
        mm_store_x(rx, sx + lr * MM_LD + lh * 16);
        __syncthreads();
        if (b + 1 < nb) {
            rw = mm_fetch_w(w, ty, rows, cols, nb, dq, mq, r0 + lr, b + 1, lh);
            rx = mm_fetch_x(x, ntok, cols, t0 + lr, b + 1, lh);
        }
        int g = lane / 4, q4 = lane % 4;
#pragma unroll
        for (int kk = 0; kk < MM_BK; kk += 16) {
            u32 af[MI][4], bf[NJ][2];
#pragma unroll
            for (int i = 0; i < MI; i++) {
                const u16* base = sw + (wm * (BM / WM) + i * 16) * MM_LD + kk + q4 * 2;
                af[i][0] = *(const u32*)(base + g * MM_LD);
                af[i][1] = *(const u32*)(base + (g + 8) * MM_LD);
                af[i][2] = *(const u32*)(base + g * MM_LD + 8);
                af[i][3] = *(const u32*)(base + (g + 8) * MM_LD + 8);
            }
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                const u16* base = sx + (wn * (BN / WN) + j * 8 + g) * MM_LD + kk + q4 * 2;
                bf[j][0] = *(const u32*)(base);
                bf[j][1] = *(const u32*)(base + 8);
            }
#pragma unroll
            for (int i = 0; i < MI; i++)
#pragma unroll
                for (int j = 0; j < NJ; j++) mma_16816(acc[i][j], af[i], bf[j]);
        }
        __syncthreads();
    }
    // C fragment: (row g, cols 2·q4, 2·q4+1) and (row g+8, same cols);
    // rows are weight rows, columns tokens.
    int g = lane / 4, q4 = lane % 4;
#pragma unroll
    for (int i = 0; i < MI; i++) {
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            int r = r0 + wm * (BM / WM) + i * 16 + g;
            int t = t0 + wn * (BN / WN) + j * 8 + q4 * 2;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                int rr = r + (k >= 2 ? 8 : 0);
                int tt = t + (k % 2);
                if (rr < rows && tt < ntok) out[(long long)tt * rows + rr] = acc[i][j][k];
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(128) matmul_mma(const u8* w, int ty, int rows,
                                                             int cols, const float* x, int ntok,
                                                             float* out) {
    pdl_entry();
    __shared__ __align__(16) u16 sw[64 * MM_LD];
    __shared__ __align__(16) u16 sx[64 * MM_LD];
    matmul_mma_impl<64, 64, 2, 2>(w, ty, rows, cols, x, ntok, out, sw, sx);
}

// Large matrices and batches: 128 × 128 tiles, 8 warps of 64 × 32.
extern "C" __global__ void __launch_bounds__(256) matmul_mma_big(const u8* w, int ty, int rows,
                                                                 int cols, const float* x,
                                                                 int ntok, float* out) {
    pdl_entry();
    __shared__ __align__(16) u16 sw[128 * MM_LD];
    __shared__ __align__(16) u16 sx[128 * MM_LD];
    matmul_mma_impl<128, 128, 2, 4>(w, ty, rows, cols, x, ntok, out, sw, sx);
}

// ---- Prefill v4 for 4-bit weights (`matmul_q4_128`, `matmul_q4_64`) ----
//
// The weights stay 4-bit in shared memory and become f16 mma fragments in
// registers, so a stage moves a quarter of the bytes the f16 tile above
// did. A block computes BM weight rows × BN tokens (128 × 128 with 8 warps,
// or 128 × 64 with 4 warps for matrices that would not fill the GPU), each
// warp 32 rows × 64 tokens (256 × 64 tiles, half the activation traffic per
// weight row, measured slower: docs/cuda-kernel-notes.md). Activations
// arrive as f16 (`to_f16`) and are read into B fragments with ldmatrix. A
// stage covers 64 columns (two 32-weight blocks) and MQ_STAGES stages are
// in flight through cp.async, so global latency hides behind the
// tensor-core work of the stages before.
//
// Shared memory of one stage (dynamic, set on the host):
//   x : BN rows × MQ_XLD halves (64 + 8 pad: ldmatrix rows hit 8 different
//       16-byte bank groups)
//   qs: BM rows × MQ_WLD bytes (32 + 16 pad: the 8 rows a fragment load
//       touches land in different banks)
//   d : BM rows × 2 f16; m (Q4_1 only): BM rows × 2 f16.
//
// Up to three matrices that share the input (q/k/v, gate/up) run in one
// grid: blockIdx.x counts row tiles of matrix 0, then 1, then 2.

#define MQ_XLD 72
#define MQ_WLD 48
// MQ_STAGES (pipeline depth), MQ_NARROW_MINB and MQ_WIDE_MINB (blocks per
// SM the narrow and wide kernels' registers are bounded for) and MQ_WIDE_MI (m16 tiles per warp in
// the 128-token kernel, see matmul_q4_body) are defined by the host
// (kernels.rs, KernelConfig), which also sizes the dynamic shared memory.
//
// With `add` set the epilogue accumulates, out += scale · product (the
// residual update of the output and down projections); with `glu` set it
// computes SwiGLU's silu(gate) · up (see matmul_q4_body).

__device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// Copy 16 (or 4) bytes global → shared without registers; `ok == false`
// writes zeros instead (the source address must still be a valid one).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool ok) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(ok ? 16 : 0)
                 : "memory");
}

__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool ok) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(ok ? 4 : 0)
                 : "memory");
}

// The same with the destination as a shared-space address (`smem_u32`), for
// loops that compute it once and add constants.
__device__ __forceinline__ void cp_async16_s(u32 dst, const void* src, bool ok) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
                 "r"(ok ? 16 : 0)
                 : "memory");
}

__device__ __forceinline__ void cp_async4_s(u32 dst, const void* src, bool ok) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(src),
                 "r"(ok ? 4 : 0)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldsm_x4(u32* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

__device__ __forceinline__ void ldsm_x4_s(u32* r, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// The transposed form: thread t gets elements (rows 2·(t%4), +1; column t/4)
// of each 8×8 matrix, i.e. a B fragment from a row-major [k][n] tile.
__device__ __forceinline__ void ldsm_x4_t(u32* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

__device__ __forceinline__ u32 hsub2(u32 a, u32 b) {
    u32 r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

__device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
    u32 r;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
    u32 r;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

// (a & b) | c in one instruction (the compiler emits an AND and an OR).
__device__ __forceinline__ u32 and_or(u32 a, u32 b, u32 c) {
    u32 r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

// Two 4-bit weights → an f16 pair. `raw` holds two quant bytes (low byte
// first); HI picks their high nibbles. OR-ing a low nibble into the
// mantissa of 1024.0 (0x6400) gives 1024 + n exactly, and subtracting 1032
// (Q4_0) or 1024 (Q4_1) is exact; a high nibble left in place gives
// 1024 + 16·n, and one fused multiply-add by 1/16 with -72 (or -64) is
// exact too, which saves the shift. So the only rounding is the final
// multiply (or fused multiply-add with the Q4_1 minimum), as in the f32
// path.
template <bool Q41, bool HI>
__device__ __forceinline__ u32 dq4x2(u32 raw, u32 d2, u32 m2) {
    u32 p = __byte_perm(raw, 0, 0x4140);
    u32 n = and_or(p, HI ? 0x00F000F0u : 0x000F000Fu, 0x64006400u);
    // f16 pairs: 1/16 = 0x2C00, -72 = 0xD480, -64 = 0xD400.
    u32 v = HI ? hfma2(n, 0x2C002C00u, Q41 ? 0xD400D400u : 0xD480D480u)
               : hsub2(n, Q41 ? 0x64006400u : 0x64086408u);
    return Q41 ? hfma2(v, d2, m2) : hmul2(v, d2);
}

struct MqMat {
    const u8* w;
    int rows;
    float* out;
};

// GLU (SwiGLU's input side): the block's BM rows are rows (BM/2)·tile..
// of the gate matrix (`mat`) and the same BM/2 rows of the up matrix
// (`up_w`); the epilogue stages both products in shared memory and writes
// silu(gate) · up into `mat.out`.
// MI: m16 tiles per warp (warp tile 16·MI rows × 8·NJ tokens, NJ = 16 / MI
// n8 tiles): MI = 2 dequantizes two row tiles per warp and reuses each over
// 8 token tiles; MI = 1 dequantizes one and reuses it over 16, half the
// dequantization instructions per mma for twice the activation reads from
// shared memory (MQ_WIDE_MI picks it for the 128-token kernel; 2 by default:
// 1 was faster on plain products but slower in the whole model, see
// docs/cuda-kernel-notes.md).
template <int BM, int BN, int MI, bool Q41, bool GLU>
__device__ __forceinline__ void matmul_q4_body(MqMat mat, const u8* up_w, int tile, int cols,
                                               const u16* xh, int ntok, int add, float scale,
                                               u8* smem, u16* outh) {
    constexpr int NJ = 16 / MI;               // n8 tiles per warp
    constexpr int WR = 16 * MI, WT = 8 * NJ;  // rows, tokens per warp
    constexpr int WM = BM / WR;               // warps along the rows
    constexpr int NT = WM * (BN / WT) * 32;   // threads
    constexpr int HALF = BM / 2;              // GLU: gate rows per block
    constexpr int X_BYTES = BN * MQ_XLD * 2;
    constexpr int W_BYTES = BM * MQ_WLD;
    constexpr int STAGE = X_BYTES + W_BYTES + BM * 4 * 2;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int wm = warp % WM, wn = warp / WM;
    const int g = lane / 4, q4 = lane % 4;
    const int r0 = tile * (GLU ? HALF : BM), t0 = blockIdx.y * BN;
    const int rows = mat.rows, nb = cols / 32, nkb = cols / 64;
    const long long nrb = (long long)rows * nb;
    // Block row r → (matrix base, its row).
    auto wsrc = [&](int r, long long& row) -> const u8* {
        row = GLU ? r0 + r % HALF : r0 + r;
        return GLU && r >= HALF ? up_w : mat.w;
    };

    // Copy roles, fixed for the whole loop: a thread's sources advance by a
    // constant per 64-column stage and its destinations differ only by the
    // stage's slot, so a stage's copies cost a few adds each. (Loops over
    // c = tid, tid + NT, ... recomputed 64-bit row products every stage:
    // about 500 of the ~970 instructions per warp per stage.)
    constexpr int XC = BN * 8 / NT;        // 16-byte activation chunks per thread
    constexpr int WC = 2 * BM / NT;        // 16-byte weight chunks per thread
    constexpr int DN = Q41 ? 2 * BM : BM;  // 4-byte scale chunks in the block
    constexpr int DC = (DN + NT - 1) / NT; // ... per thread
    static_assert(BN * 8 % NT == 0 && 2 * BM % NT == 0, "copy roles");
    const u32 sbase = smem_u32(smem);
    u32 xoff[XC];  // activation element offsets (token clamped when out of range)
    bool xok[XC];
#pragma unroll
    for (int i = 0; i < XC; i++) {
        int t = tid / 8 + i * (NT / 8);
        xok[i] = t0 + t < ntok;
        xoff[i] = (u32)(xok[i] ? t0 + t : t0) * (u32)cols + (u32)(tid % 8) * 8;
    }
    const u32 xdst = sbase + ((tid / 8) * MQ_XLD + (tid % 8) * 8) * 2;
    const u8* wptr[WC];
    bool wok[WC];
#pragma unroll
    for (int i = 0; i < WC; i++) {
        int r = tid / 2 + i * (NT / 2);
        long long row;
        const u8* w = wsrc(r, row);
        wok[i] = row < rows;
        wptr[i] = w + (wok[i] ? row * nb * 16 : 0) + (tid % 2) * 16;
    }
    const u32 wdst = sbase + X_BYTES + (tid / 2) * MQ_WLD + (tid % 2) * 16;
    const u16* dptr[DC];
    bool dok[DC];
#pragma unroll
    for (int i = 0; i < DC; i++) {
        int c = tid + i * NT;
        int r = c % BM;
        long long row;
        const u8* w = wsrc(r, row);
        const u16* dq = (const u16*)(w + nrb * 16);
        dok[i] = c < DN && row < rows;
        dptr[i] = dok[i] ? (c < BM ? dq : dq + nrb) + row * nb : dq;
    }
    const u32 ddst = sbase + X_BYTES + W_BYTES + tid * 4;

    auto load = [&](int kb, int slot) {
        const u32 so = slot * STAGE;
#pragma unroll
        for (int i = 0; i < XC; i++)
            cp_async16_s(xdst + so + i * (NT / 8) * MQ_XLD * 2, xh + xoff[i] + kb * 64, xok[i]);
#pragma unroll
        for (int i = 0; i < WC; i++)
            cp_async16_s(wdst + so + i * (NT / 2) * MQ_WLD, wptr[i] + kb * 32, wok[i]);
#pragma unroll
        for (int i = 0; i < DC; i++)
            if (tid + i * NT < DN) cp_async4_s(ddst + so + i * NT * 4, dptr[i] + 2 * kb, dok[i]);
    };

    float acc[MI][NJ][4];
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NJ; j++)
#pragma unroll
            for (int k = 0; k < 4; k++) acc[i][j][k] = 0.f;

#pragma unroll
    for (int s = 0; s < MQ_STAGES - 1; s++) {
        if (s < nkb) load(s, s);
        cp_async_commit();
    }
    // Per-lane fragment addresses in slot 0; everything else is a constant
    // offset, plus the slot's.
    const u8* wfrag = smem + X_BYTES + (wm * WR + g) * MQ_WLD + 2 * q4;
    const u16* dfrag = (const u16*)(smem + X_BYTES + W_BYTES) + (wm * WR + g) * 2;
    const u32 xfrag =
        sbase + ((wn * WT + (lane / 16) * 8 + lane % 8) * MQ_XLD + ((lane / 8) % 2) * 8) * 2;
    int rslot = 0, wslot = MQ_STAGES - 1;
    for (int kb = 0; kb < nkb; kb++) {
        cp_async_wait<MQ_STAGES - 2>();
        __syncthreads();
        if (kb + MQ_STAGES - 1 < nkb) load(kb + MQ_STAGES - 1, wslot);
        cp_async_commit();

        const int so = rslot * STAGE;
        const u8* sw = wfrag + so;
        const u16* sd = dfrag + so / 2;
#pragma unroll
        for (int qb = 0; qb < 2; qb++) {
            // This lane's quant bytes for rows g and g + 8 of each m16
            // tile: columns 2·q4, 2·q4+1 (fragment regs 0, 1) and +8 (2, 3).
            u32 raw[MI][4], d2[MI][2], m2[MI][2];
#pragma unroll
            for (int i = 0; i < MI; i++) {
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    int r = i * 16 + h * 8;
                    const u8* p = sw + r * MQ_WLD + qb * 16;
                    raw[i][h] = *(const u16*)p;
                    raw[i][h + 2] = *(const u16*)(p + 8);
                    u32 d = sd[r * 2 + qb];
                    d2[i][h] = d | (d << 16);
                    u32 m = Q41 ? sd[2 * BM + r * 2 + qb] : 0u;
                    m2[i][h] = m | (m << 16);
                }
            }
#pragma unroll
            for (int hi = 0; hi < 2; hi++) {
                u32 a[MI][4];
#pragma unroll
                for (int i = 0; i < MI; i++) {
#pragma unroll
                    for (int k = 0; k < 4; k++)
                        a[i][k] = hi ? dq4x2<Q41, true>(raw[i][k], d2[i][k % 2], m2[i][k % 2])
                                     : dq4x2<Q41, false>(raw[i][k], d2[i][k % 2], m2[i][k % 2]);
                }
                const int kofs = qb * 32 + hi * 16;
#pragma unroll
                for (int jp = 0; jp < NJ / 2; jp++) {
                    u32 b[4];
                    ldsm_x4_s(b, xfrag + so + (jp * 16 * MQ_XLD + kofs) * 2);
#pragma unroll
                    for (int i = 0; i < MI; i++) {
                        mma_16816(acc[i][2 * jp], a[i], b);
                        mma_16816(acc[i][2 * jp + 1], a[i], b + 2);
                    }
                }
            }
        }
        rslot = rslot + 1 == MQ_STAGES ? 0 : rslot + 1;
        wslot = wslot + 1 == MQ_STAGES ? 0 : wslot + 1;
    }
    cp_async_wait<0>();

    if (GLU) {
        // Stage the BM × BN products as [token][row] f32 (row stride BM + 4:
        // the fragment stores of a warp hit 32 different banks), then each
        // thread forms silu(gate) · up for rows of consecutive addresses.
        constexpr int LDA = BM + 4;
        float* sa = (float*)smem;
        __syncthreads();
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int j = 0; j < NJ; j++)
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    int r = wm * WR + i * 16 + g + (k >= 2 ? 8 : 0);
                    int t = wn * WT + j * 8 + q4 * 2 + (k % 2);
                    sa[t * LDA + r] = acc[i][j][k];
                }
        __syncthreads();
        for (int c = tid; c < HALF * BN; c += NT) {
            int r = c % HALF, t = c / HALF;
            int row = r0 + r, tok = t0 + t;
            if (row < rows && tok < ntok) {
                float gv = sa[t * LDA + r], uv = sa[t * LDA + HALF + r];
                float hv = gv / (1.f + expf(-gv)) * uv;
                mat.out[(long long)tok * rows + row] = hv;
                if (outh) outh[(long long)tok * rows + row] = f2h(hv);
            }
        }
    } else {
        // Store or add: C fragment (row g, tokens 2·q4, 2·q4 + 1) and row g + 8.
        // Adding reads every old value first: loads interleaved with the
        // stores would wait one memory latency each (the compiler cannot
        // prove the addresses distinct), measured +30 µs per 8B layer.
        if (add) {
#pragma unroll
            for (int i = 0; i < MI; i++)
#pragma unroll
                for (int j = 0; j < NJ; j++)
#pragma unroll
                    for (int k = 0; k < 4; k++) {
                        int rr = r0 + wm * WR + i * 16 + g + (k >= 2 ? 8 : 0);
                        int tt = t0 + wn * WT + j * 8 + q4 * 2 + (k % 2);
                        float old = rr < rows && tt < ntok ? mat.out[(long long)tt * rows + rr] : 0.f;
                        acc[i][j][k] = old + scale * acc[i][j][k];
                    }
        }
#pragma unroll
        for (int i = 0; i < MI; i++) {
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                int r = r0 + wm * WR + i * 16 + g;
                int t = t0 + wn * WT + j * 8 + q4 * 2;
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    int rr = r + (k >= 2 ? 8 : 0), tt = t + (k % 2);
                    if (rr < rows && tt < ntok) mat.out[(long long)tt * rows + rr] = acc[i][j][k];
                }
            }
        }
    }
}

template <int BM, int BN, int MI>
__device__ __forceinline__ void matmul_q4_entry(const u8* w0, int rows0, float* out0,
                                                const u8* w1, int rows1, float* out1,
                                                const u8* w2, int rows2, float* out2,
                                                int tiles0, int tiles1, int ty, int cols,
                                                const u16* xh, int ntok, int add, float scale,
                                                int glu, u16* outh) {
    extern __shared__ __align__(16) u8 mq_smem[];
    int tile = blockIdx.x;
    MqMat m = {w0, rows0, out0};
    if (glu) {
        // w0 = gate, w1 = up (same shape); tiles0 tiles of BM/2 rows.
        if (ty == TY_Q4_1)
            matmul_q4_body<BM, BN, MI, true, true>(m, w1, tile, cols, xh, ntok, 0, 1.f, mq_smem, outh);
        else
            matmul_q4_body<BM, BN, MI, false, true>(m, w1, tile, cols, xh, ntok, 0, 1.f, mq_smem, outh);
        return;
    }
    if (tile >= tiles0 + tiles1) {
        m = MqMat{w2, rows2, out2};
        tile -= tiles0 + tiles1;
    } else if (tile >= tiles0) {
        m = MqMat{w1, rows1, out1};
        tile -= tiles0;
    }
    if (ty == TY_Q4_1)
        matmul_q4_body<BM, BN, MI, true, false>(m, w0, tile, cols, xh, ntok, add, scale, mq_smem,
                                            nullptr);
    else
        matmul_q4_body<BM, BN, MI, false, false>(m, w0, tile, cols, xh, ntok, add, scale, mq_smem,
                                             nullptr);
}

extern "C" __global__ void __launch_bounds__(256, MQ_WIDE_MINB)
    matmul_q4_128(const u8* w0, int rows0, float* out0, const u8* w1, int rows1, float* out1,
                  const u8* w2, int rows2, float* out2, int tiles0, int tiles1, int ty, int cols,
                  const u16* xh, int ntok, int add, float scale, int glu, u16* outh) {
    pdl_entry();
    matmul_q4_entry<128, 128, MQ_WIDE_MI>(w0, rows0, out0, w1, rows1, out1, w2, rows2, out2, tiles0, tiles1, ty,
                         cols, xh, ntok, add, scale, glu, outh);
}

extern "C" __global__ void __launch_bounds__(128, MQ_NARROW_MINB)
    matmul_q4_64(const u8* w0, int rows0, float* out0, const u8* w1, int rows1, float* out1,
                 const u8* w2, int rows2, float* out2, int tiles0, int tiles1, int ty, int cols,
                 const u16* xh, int ntok, int add, float scale, int glu, u16* outh) {
    pdl_entry();
    matmul_q4_entry<128, 64, 2>(w0, rows0, out0, w1, rows1, out1, w2, rows2, out2, tiles0, tiles1, ty,
                        cols, xh, ntok, add, scale, glu, outh);
}

// The narrow kernel bounded to 3 blocks per SM (≤ 168 registers, some
// spilled). The host takes it only where 3 slots per SM save a whole wave
// over 2 (the 8B's 288-block q/k/v grid on 132 SMs) and the rows are short.
extern "C" __global__ void __launch_bounds__(128, 3)
    matmul_q4_64_3(const u8* w0, int rows0, float* out0, const u8* w1, int rows1, float* out1,
                   const u8* w2, int rows2, float* out2, int tiles0, int tiles1, int ty, int cols,
                   const u16* xh, int ntok, int add, float scale, int glu, u16* outh) {
    pdl_entry();
    matmul_q4_entry<128, 64, 2>(w0, rows0, out0, w1, rows1, out1, w2, rows2, out2, tiles0, tiles1, ty,
                        cols, xh, ntok, add, scale, glu, outh);
}

// f32 → f16 (round to nearest), eight values per thread; n % 8 == 0.
extern "C" __global__ void to_f16(const float* x, long long n, u16* out) {
    pdl_entry();
    long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    float4 a = *(const float4*)(x + i), b = *(const float4*)(x + i + 4);
    uint4 h;
    h.x = (u32)f2h(a.x) | ((u32)f2h(a.y) << 16);
    h.y = (u32)f2h(a.z) | ((u32)f2h(a.w) << 16);
    h.z = (u32)f2h(b.x) | ((u32)f2h(b.y) << 16);
    h.w = (u32)f2h(b.z) | ((u32)f2h(b.w) << 16);
    *(uint4*)(out + i) = h;
}
