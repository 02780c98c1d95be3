// Shared helpers, prepended to every kernel file before it is compiled.
// Storage may be float or bf16; arithmetic is always float.
// The kernels include no headers: NVRTC alone (no CUDA toolkit headers) compiles them.

typedef unsigned int u32;

// +infinity (math.h is not available without the toolkit's headers).
#define POS_INFINITY __int_as_float(0x7f800000)

// bfloat16 as its raw bits (the upper half of a float), the layout of Rust's half::bf16.
struct bf16 {
    unsigned short bits;
};

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __uint_as_float((u32)x.bits << 16); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
// Round to nearest, ties to even; NaN stays a (quiet) NaN.
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) {
    u32 bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return bf16{(unsigned short)((bits >> 16) | 0x40u)};
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return bf16{(unsigned short)(bits >> 16)};
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Global warp index over `rows` rows, or -1 for a spare warp (blockDim.x a multiple of 32).
__device__ __forceinline__ long long warp_row(long long rows) {
    const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    return w < rows ? w : -1;
}

// y = softmax(x) over one row of d values, max-subtracted. Called by a whole warp.
__device__ __forceinline__ void warp_softmax(const float* x, float* y, int d) {
    const int lane = threadIdx.x & 31;
    float max = -POS_INFINITY;
    for (int i = lane; i < d; i += 32) max = fmaxf(max, x[i]);
    max = warp_max(max);
    float sum = 0.0f;
    for (int i = lane; i < d; i += 32) sum += expf(x[i] - max);
    const float inv = 1.0f / warp_sum(sum);
    for (int i = lane; i < d; i += 32) y[i] = expf(x[i] - max) * inv;
}

// The gates' functions, without overflow for large |x|.
__device__ __forceinline__ float softplus_f(float x) { return x > 0.0f ? x + log1pf(expf(-x)) : log1pf(expf(x)); }
__device__ __forceinline__ float log_sigmoid_f(float x) { return -softplus_f(-x); }
__device__ __forceinline__ float sigmoid_f(float x) {
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    const float e = expf(x);
    return e / (1.0f + e);
}

// Sum over the whole block; every thread gets the result.
// blockDim.x must be a multiple of 32 (at most 1024); every thread of the block must call it.
__device__ float block_sum(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // an earlier call may still be reading `partial`
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.0f;
    return warp_sum(v);
}

// Maximum over the whole block; same rules as block_sum.
__device__ float block_max(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? partial[lane] : -POS_INFINITY;
    return warp_max(v);
}

// Index of this thread in a 1-D grid, and the grid's stride, as 64-bit values.
__device__ __forceinline__ size_t global_index() { return (size_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ size_t grid_stride() { return (size_t)gridDim.x * blockDim.x; }

// The slot of a decoding cache of `capacity` slots that keeps the token at `pos`: the first
// `sinks` tokens for good, the others in a ring after them (CPU twin: liger::Window::slot).
__device__ __forceinline__ u32 cache_slot(u32 pos, int sinks, int capacity) {
    return pos < (u32)sinks ? pos : (u32)sinks + (pos - (u32)sinks) % (u32)(capacity - sinks);
}

// Four consecutive values at x[i..i+4] (i a multiple of 4, x aligned as `quad_aligned` checks):
// one 16-byte (f32) or 8-byte (bf16) memory access instead of four, for the bandwidth-bound
// elementwise kernels.
__device__ __forceinline__ float4 load_quad(const float* x, size_t i) { return *(const float4*)(x + i); }
__device__ __forceinline__ float4 load_quad(const bf16* x, size_t i) {
    const uint2 p = *(const uint2*)(x + i);
    return make_float4(__uint_as_float(p.x << 16), __uint_as_float(p.x & 0xffff0000u), __uint_as_float(p.y << 16),
                       __uint_as_float(p.y & 0xffff0000u));
}
__device__ __forceinline__ void store_quad(float* y, size_t i, float4 v) { *(float4*)(y + i) = v; }
__device__ __forceinline__ void store_quad(bf16* y, size_t i, float4 v) {
    const u32 lo = (u32)from_f32<bf16>(v.x).bits | ((u32)from_f32<bf16>(v.y).bits << 16);
    const u32 hi = (u32)from_f32<bf16>(v.z).bits | ((u32)from_f32<bf16>(v.w).bits << 16);
    *(uint2*)(y + i) = make_uint2(lo, hi);
}
// Whether `p` may be read or written four values at a time.
template <typename T> __device__ __forceinline__ bool quad_aligned(const T* p) { return ((size_t)p % (4 * sizeof(T))) == 0; }

// Tensor cores (sm_80+): c (16x8 f32) += a (16x16 bf16, row major) * b (16x8 bf16, column major),
// mma.sync m16n8k16. Fragments (g = lane / 4, t = lane % 4): a holds rows g and g + 8, columns
// 2t, 2t + 1 (+ 8); b holds column g, rows 2t, 2t + 1 (+ 8); c rows g, g + 8, columns 2t, 2t + 1.
__device__ __forceinline__ void mma_bf16(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as bf16x2, `lo` in the lower half (the lower column).
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Whether `value` [d] repeats the held value `h` [d] within the repeat rule's tolerance,
// |value - h|^2 <= tolerance |h|^2 (CPU twin: liger::surprise::repeats).
template <typename T>
__device__ __forceinline__ bool repeats_one(const T* value, const T* h, int d, double tolerance) {
    float dist = 0.0f, norm = 0.0f;
    for (int e = 0; e < d; e++) {
        const float a = to_f32(value[e]), b = to_f32(h[e]);
        dist += (a - b) * (a - b);
        norm += b * b;
    }
    return (double)dist <= tolerance * (double)norm;
}

// Whether `value` [d] repeats one of the `count` values the cache holds (held(c) [d])
// (`repeats_one`; tolerance 0: the rule is off). Warp-wide: each lane compares its share of the
// held values.
template <typename T, typename Held>
__device__ bool repeats_held(const T* value, Held held, int count, int d, double tolerance) {
    bool hit = false;
    for (int c = threadIdx.x & 31; tolerance > 0.0 && c < count && !hit; c += 32) hit = repeats_one(value, held(c), d, tolerance);
    return __any_sync(0xffffffffu, hit);
}
