// common.cuh — shared helpers for every tern CUDA kernel: f16 conversion
// through PTX (so no toolkit header is needed under NVRTC), warp
// reductions, and the weight layout every matmul and embedding reads.
//
// Programmatic dependent launch (sm_90+): the host launches every kernel
// allowed to start before the previous one has finished, so its launch and
// block scheduling overlap the previous kernel's work. Each kernel's first
// statement is pdl_entry(): it waits until the previous kernel has finished
// and its writes are visible (so no read or write in this kernel can race
// one in the previous kernel), and lets the next kernel begin launching
// (after the wait, or before it: PDL_EARLY below). Because every kernel
// waits on its predecessor, the order is transitive.
// On older GPUs, and when launched without the attribute, it does nothing.
// A test (runtime/tests/cuda_nvrtc.rs) checks that every kernel begins with it,
// except for reads of memory no kernel writes (weights, tables uploaded at
// load, step inputs copied before the step's first kernel, cache rows below
// the step's first slot), which a few
// kernels issue before the wait to take them off the step's critical path;
// the test lists each such kernel and what it may read.
//
// Weight layout (packed on the host at load, see backend/cuda/mod.rs):
//   F32 / F16  : rows × cols values, row-major.
//   Q8_0       : qs  = rows × (cols/32) × 32 int8,  then d = rows × (cols/32) f16.
//   Q4_0/Q4_1  : qs  = rows × (cols/32) × 16 bytes (GGML nibble order: byte j
//                holds element j in its low and element j+16 in its high
//                nibble), then d (f16), then for Q4_1 m (f16), each
//                rows × (cols/32).
// Splitting the 18/20/34-byte GGML blocks into a quant array and scale
// arrays lets every thread read its 16 or 32 quant bytes with aligned
// 16-byte loads.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define NEG_INF __int_as_float(0xff800000)

#define TY_F32 0
#define TY_F16 1
#define TY_Q4_0 2
#define TY_Q4_1 3
#define TY_Q8_0 8

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// One weight element, for the slow paths (embedding rows, small tails).
__device__ __forceinline__ float weight_at(int ty, const u8* w, long long rows, long long cols,
                                           long long r, long long c) {
    if (ty == TY_F32) return ((const float*)w)[r * cols + c];
    if (ty == TY_F16) return h2f(((const u16*)w)[r * cols + c]);
    long long nb = cols / 32, b = r * nb + c / 32;
    int j = (int)(c % 32);
    if (ty == TY_Q8_0) {
        const u16* d = (const u16*)(w + rows * cols);
        return h2f(d[b]) * (float)((const signed char*)w)[b * 32 + j];
    }
    const u16* d = (const u16*)(w + rows * nb * 16);
    u8 byte = w[b * 16 + (j & 15)];
    int q = j < 16 ? (byte & 15) : (byte >> 4);
    if (ty == TY_Q4_0) return h2f(d[b]) * (float)(q - 8);
    const u16* m = d + rows * nb;
    return h2f(d[b]) * (float)q + h2f(m[b]);
}

// Timeline (TERN_CUDA_TIMELINE=path, a diagnostic; TERN_TL is then the
// device address of the record buffer, see device.rs's Timeline). Word 0
// counts launches; record n (4 words from word 4) holds launch n's block-0
// arrival at pdl_entry, the return of its wait, and its grid. Only block 0's
// thread 0 touches the buffer, and only it lets the next launch start in
// block 0. With every trigger after the wait it reads the count before the
// wait (the previous launch's block 0 raised it before letting this one
// launch) and stores after it; where launches may run ahead (PDL_EARLY) it
// takes its number with an atomic before its trigger. No thread stalls on a
// read and no exit is instrumented. Off, none of this is compiled.
#ifdef TERN_TL
#define TL_CAP 1048576ull
__device__ __forceinline__ u64 tl_now() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
#endif

#ifndef PDL_EARLY
#define PDL_EARLY 0
#endif
// PDL_EARLY (KernelConfig::pdl_early), a bit per KIND of kernel (0 the
// small ones, 1 the decode mat-vecs): set, the next kernel may begin
// launching before this one's wait returns, so launches run ahead as far as
// the GPU has room; clear, only after it (at most one kernel ahead). Still
// every kernel waits for its predecessor to finish, and a kernel launches
// only once every block of the one before it has started, so no launch can
// take the room a running kernel's blocks need. Returns the timeline
// record's number to block 0's thread 0 in a timeline build, else 0.
template <int KIND = 0>
__device__ __forceinline__ u64 pdl_entry() {
    constexpr bool early = (PDL_EARLY >> KIND) & 1;
    u64 n = 0;
#ifdef TERN_TL
    bool tl = (blockIdx.x | blockIdx.y | blockIdx.z | threadIdx.x) == 0;
    // A block's first trigger is the one that counts: block 0 leaves it to
    // thread 0, after the record's number is taken, so the next launch
    // cannot take it first.
    bool trigger = (blockIdx.x | blockIdx.y | blockIdx.z) != 0 || threadIdx.x == 0;
    u64 t0 = 0;
    if (tl) {
#if PDL_EARLY
        // Launches may overlap: each takes its record's number before it
        // lets the next one launch, so numbers stay in launch order.
        n = atomicAdd((unsigned long long*)TERN_TL, 1ull);
        __threadfence();
#else
        n = *(volatile u64*)TERN_TL;
#endif
        t0 = tl_now();
    }
#else
    constexpr bool trigger = true;
#endif
#if __CUDA_ARCH__ >= 900
    if (early && trigger) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
#ifdef TERN_TL
    if (tl) {
        volatile u64* b = (volatile u64*)TERN_TL;
        if (n < TL_CAP) {
            volatile u64* r = b + 4 * (n + 1);
            r[0] = t0;
            r[1] = tl_now();
            r[2] = (u64)gridDim.x | (u64)(gridDim.y & 4095) << 32 | (u64)(gridDim.z & 255) << 44 |
                   (u64)(blockDim.x & 2047) << 52;
        }
#if !PDL_EARLY
        b[0] = n + 1;
        __threadfence(); // the count is out before the next launch may read it
#endif
    }
#endif
#if __CUDA_ARCH__ >= 900
    if (!early && trigger) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    return n;
}

// Quantize 32 values held one per lane into an 8-bit block (the decode
// mat-vecs' activation format, as quantize_act in matvec.cu writes it),
// lane 0 writing the scales. The whole warp must call it.
__device__ __forceinline__ void quantize_lane(float v, signed char* xq, float2* xs, long long b) {
    int lane = threadIdx.x % 32;
    float amax = warp_max(fabsf(v));
    float d = amax / 127.f;
    int q = d == 0.f ? 0 : __float2int_rn(v / d);
    xq[b * 32 + lane] = (signed char)q;
    float s = warp_sum((float)q);
    if (lane == 0) xs[b] = make_float2(d, d * s);
}
