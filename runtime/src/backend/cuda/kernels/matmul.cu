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
