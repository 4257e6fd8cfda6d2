// elementwise.cu — embedding lookup, RMSNorm, RoPE, SwiGLU, the residual
// update, scaling, row gathering, the KV-cache write and argmax. Every
// value that changes from one decode step to the next (token ids,
// positions, the first KV slot, output rows) is read from device memory,
// so a captured decode graph replays with new inputs.

extern "C" __global__ void embed(const u8* w, int ty, long long rows, long long cols,
                                 const u32* ids, float scale, float* out) {
    pdl_entry();
    long long t = blockIdx.x;
    long long r = ids[t];
    for (long long c = threadIdx.x; c < cols; c += blockDim.x)
        out[t * cols + c] = weight_at(ty, w, rows, cols, r, c) * scale;
}

// One block per row; the sum of squares in f32 per thread, then a tree.
extern "C" __global__ void rms_norm(const float* x, const float* w, float eps, int cols,
                                    float* out, u16* outh) {
    pdl_entry();
    __shared__ float part[32];
    const float* xr = x + (long long)blockIdx.x * cols;
    float* o = out + (long long)blockIdx.x * cols;
    u16* oh = outh ? outh + (long long)blockIdx.x * cols : nullptr;
    // Rows of a multiple of 4 (all real models) move as float4: a quarter
    // of the load instructions in flight per row.
    bool vec = (cols & 3) == 0;
    float ss = 0.f;
    if (vec) {
        for (int c = threadIdx.x; c < cols / 4; c += blockDim.x) {
            float4 v = ((const float4*)xr)[c];
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
    } else {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) ss += xr[c] * xr[c];
    }
    ss = warp_sum(ss);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) part[warp] = ss;
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x / 32;
        ss = lane < nw ? part[lane] : 0.f;
        ss = warp_sum(ss);
        if (lane == 0) part[0] = ss;
    }
    __syncthreads();
    float s = rsqrtf(part[0] / (float)cols + eps);
    if (vec) {
        for (int c = threadIdx.x; c < cols / 4; c += blockDim.x) {
            float4 v = ((const float4*)xr)[c], g = ((const float4*)w)[c];
            float4 y = make_float4(v.x * s * g.x, v.y * s * g.y, v.z * s * g.z, v.w * s * g.w);
            ((float4*)o)[c] = y;
            if (oh)
                ((uint2*)oh)[c] = make_uint2((u32)f2h(y.x) | ((u32)f2h(y.y) << 16),
                                             (u32)f2h(y.z) | ((u32)f2h(y.w) << 16));
        }
        return;
    }
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float y = xr[c] * s * w[c];
        o[c] = y;
        if (oh) oh[c] = f2h(y);
    }
}

// RMSNorm that also leaves its 8-bit quantization for the decode
// mat-vecs (one launch instead of two). cols % 32 == 0. Block (i, row)
// handles 32-blocks [8i, 8i + 8) of the row, one per warp; every block sums
// the whole row's squares itself (a few KB from L2), so a long row is
// spread over many blocks instead of one block looping over it, which was
// latency-bound (17.5 µs for 4096 columns in one block; see
// docs/cuda-kernel-notes.md). Every block reduces in the same order, so all
// agree on the scale.
extern "C" __global__ void rms_norm_q(const float* x, const float* w, float eps, int cols,
                                      float* out, signed char* xq, float2* xs) {
    // The norm's weight is never written by a kernel: its read is issued
    // before the wait for the previous kernel, off the step's critical path
    // (like the mat-vecs' first weights, MV_PREFETCH).
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int nb = cols / 32;
    int b = blockIdx.x * (blockDim.x / 32) + warp;
    float wv = b < nb ? w[b * 32 + lane] : 0.f;
    pdl_entry();
    __shared__ float part[32];
    long long row = blockIdx.y;
    const float* xr = x + row * cols;
    float ss = 0.f;
    for (int c = 4 * threadIdx.x; c < cols; c += 4 * blockDim.x) {
        float4 v = *(const float4*)(xr + c);
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    ss = warp_sum(ss);
    if (lane == 0) part[warp] = ss;
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x / 32;
        ss = lane < nw ? part[lane] : 0.f;
        ss = warp_sum(ss);
        if (lane == 0) part[0] = ss;
    }
    __syncthreads();
    float s = rsqrtf(part[0] / (float)cols + eps);
    if (b >= nb) return;
    int c = b * 32 + lane;
    float v = xr[c] * s * wv;
    out[row * cols + c] = v;
    quantize_lane(v, xq, xs, row * nb + b);
}

// SwiGLU's gate, plus the 8-bit quantization of the result; one warp per
// 32-block. n % 32 == 0.
extern "C" __global__ void silu_mul_q(float* gate, const float* up, long long n, signed char* xq,
                                      float2* xs) {
    pdl_entry();
    long long b = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (b * 32 >= n) return;
    long long i = b * 32 + threadIdx.x % 32;
    float g = gate[i];
    float v = g / (1.f + expf(-g)) * up[i];
    gate[i] = v;
    quantize_lane(v, xq, xs, b);
}

// GGML "normal" RoPE: pair (2i, 2i+1) of every head turns by pos·inv_freq[i].
// Angles in f64 as on the CPU, so long positions lose nothing.
extern "C" __global__ void rope(float* x, const u32* pos, const double* inv_freq, int n_head,
                                int head_dim, int n_rot, int rows) {
    pdl_entry();
    int half = n_rot / 2;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)rows * n_head * half;
    if (i >= total) return;
    int p = (int)(i % half);
    long long th = i / half;
    int h = (int)(th % n_head);
    long long t = th / n_head;
    double theta = (double)pos[t] * inv_freq[p];
    double sn, cs;
    sincos(theta, &sn, &cs);
    float c = (float)cs, s = (float)sn;
    float* v = x + (t * n_head + h) * head_dim + 2 * p;
    float x0 = v[0], x1 = v[1];
    v[0] = x0 * c - x1 * s;
    v[1] = x0 * s + x1 * c;
}

// Decode's RoPE and KV-cache write in one launch. Items [0, nq) turn the
// query pairs, [nq, nq + nk) turn the key pairs and store them in the cache
// (slot first_slot[0] + t), and the rest copy value pairs into the cache.
// Pairs at or past n_rot / 2 are not turned (keys are still stored). The
// arithmetic is rope's and kv_write's exactly.
extern "C" __global__ void rope_kv(float* q, float* k, const float* v, const u32* pos,
                                   const double* inv_freq, int n_head, int n_head_kv,
                                   int head_dim, int n_rot, int rows, u8* kc, u8* vc,
                                   const u32* first_slot, int f16) {
    pdl_entry();
    int hp = head_dim / 2, half = n_rot / 2;
    long long width = (long long)n_head_kv * head_dim;
    long long nq = (long long)rows * n_head * hp;
    long long nk = (long long)rows * n_head_kv * hp;
    long long nv = (long long)rows * width / 2;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long base = (long long)first_slot[0] * width;
    if (i < nq + nk) {
        bool is_k = i >= nq;
        long long j = is_k ? i - nq : i;
        int p = (int)(j % hp);
        long long th = j / hp; // t · heads + h
        int heads = is_k ? n_head_kv : n_head;
        long long t = th / heads;
        float* x = (is_k ? k : q) + th * head_dim + 2 * p;
        float x0 = x[0], x1 = x[1];
        if (p < half) {
            double theta = (double)pos[t] * inv_freq[p];
            double sn, cs;
            sincos(theta, &sn, &cs);
            float c = (float)cs, s = (float)sn;
            float y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
            x[0] = y0;
            x[1] = y1;
            x0 = y0;
            x1 = y1;
        }
        if (is_k) {
            long long dst = base + th * head_dim + 2 * p;
            if (f16) {
                ((u16*)kc)[dst] = f2h(x0);
                ((u16*)kc)[dst + 1] = f2h(x1);
            } else {
                ((float*)kc)[dst] = x0;
                ((float*)kc)[dst + 1] = x1;
            }
        }
    } else if (i < nq + nk + nv) {
        long long j = 2 * (i - nq - nk);
        if (f16) {
            ((u16*)vc)[base + j] = f2h(v[j]);
            ((u16*)vc)[base + j + 1] = f2h(v[j + 1]);
        } else {
            ((float*)vc)[base + j] = v[j];
            ((float*)vc)[base + j + 1] = v[j + 1];
        }
    }
}

extern "C" __global__ void silu_mul(float* gate, const float* up, long long n) {
    pdl_entry();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = gate[i];
        gate[i] = g / (1.f + expf(-g)) * up[i];
    }
}

extern "C" __global__ void add_scaled(float* acc, const float* x, float s, long long n) {
    pdl_entry();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) acc[i] += s * x[i];
}

extern "C" __global__ void scale(float* x, float s, long long n) {
    pdl_entry();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}

extern "C" __global__ void gather_rows(const float* x, const u32* rows, int cols, float* out) {
    pdl_entry();
    long long r = rows[blockIdx.x];
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[(long long)blockIdx.x * cols + c] = x[r * cols + c];
}

// K and V rows of this batch into slots first_slot[0] + t; f16 or f32 cache.
extern "C" __global__ void kv_write(const float* k, const float* v, u8* kc, u8* vc,
                                    const u32* first_slot, int width, int rows, int f16) {
    pdl_entry();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * width) return;
    long long dst = (long long)first_slot[0] * width + i;
    if (f16) {
        ((u16*)kc)[dst] = f2h(k[i]);
        ((u16*)vc)[dst] = f2h(v[i]);
    } else {
        ((float*)kc)[dst] = k[i];
        ((float*)vc)[dst] = v[i];
    }
}

// Index of the largest value of each row (the first on ties), for greedy decoding.
extern "C" __global__ void argmax_rows(const float* x, int cols, u32* out) {
    pdl_entry();
    __shared__ float bv[32];
    __shared__ int bi[32];
    const float* r = x + (long long)blockIdx.x * cols;
    float best = NEG_INF;
    int idx = 0x7fffffff;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = r[c];
        if (v > best || (v == best && c < idx)) { best = v; idx = c; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ov > best || (ov == best && oi < idx)) { best = ov; idx = oi; }
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) { bv[warp] = best; bi[warp] = idx; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x / 32); w++)
            if (bv[w] > best || (bv[w] == best && bi[w] < idx)) { best = bv[w]; idx = bi[w]; }
        out[blockIdx.x] = (u32)idx;
    }
}

// Ask L2 for up to four byte ranges (a weight's quants, scales and minima
// ahead of the mat-vec that reads them), launched on a side stream while
// the decode chain runs latency-bound kernels. It reads and writes nothing,
// so it needs no wait and stamps no timeline record. chunk > 0 (sm_90):
// bulk prefetches of `chunk` bytes per thread per pass, issued by the
// copy engine inside the SM; otherwise one 128-byte line per instruction.
extern "C" __global__ void l2_prefetch(const u8* p0, long long n0, const u8* p1, long long n1,
                                       const u8* p2, long long n2, const u8* p3, long long n3,
                                       int chunk) {
    const u8* ps[4] = {p0, p1, p2, p3};
    long long ns[4] = {n0, n1, n2, n3};
    long long me = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long all = (long long)gridDim.x * blockDim.x;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const u8* p = ps[k];
        long long n = ns[k];
#if __CUDA_ARCH__ >= 900
        if (chunk > 0) {
            // Sizes and addresses multiples of 16 (the range's start is
            // rounded down, its end down: at most 15 bytes are left out).
            unsigned long long a = (unsigned long long)p & ~15ull;
            long long len = ((unsigned long long)p + n - a) & ~15ll;
            long long c = max(chunk & ~15, 16); // the host passes a multiple of 16
            for (long long off = me * c; off < len; off += all * c) {
                unsigned sz = (unsigned)min(c, len - off);
                asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(a + off), "r"(sz)
                             : "memory");
            }
            continue;
        }
#endif
        unsigned long long a = (unsigned long long)p & ~127ull, e = (unsigned long long)p + n;
        for (unsigned long long x = a + me * 128ull; x < e; x += all * 128ull)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(x));
    }
}
