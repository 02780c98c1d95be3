// Learned branch weights per query head (CPU twins: liger::head_mix): the two branches of a
// Liger layer mixed with one (alpha, beta) per head, the gradient split between them, and the
// weights' own gradients. Tensors are rows of [rows, heads, d]: element i is in head
// (i / d) % heads. The window branch `a` (stored as T) may be null: the recurrent branch alone,
// scaled by alpha.

// o = alpha[h] * g + beta[h] * a, and o's copy in T when o_t is not null.
template <typename T>
__device__ void head_mix_to(const float* g, const T* a, const float* alpha, const float* beta, int heads, int d, float* o,
                            T* o_t, size_t n) {
    for (size_t i = global_index(); i < n; i += grid_stride()) {
        const int h = (int)((i / d) % heads);
        float v = alpha[h] * g[i];
        if (a) v += beta[h] * to_f32(a[i]);
        o[i] = v;
        if (o_t) o_t[i] = from_f32<T>(v);
    }
}

// d_g = alpha[h] * d_o, and d_a = beta[h] * d_o (stored as T) when d_a is not null.
template <typename T>
__device__ void head_mix_split(const float* d_o, const float* alpha, const float* beta, int heads, int d, float* d_g, T* d_a,
                               size_t n) {
    for (size_t i = global_index(); i < n; i += grid_stride()) {
        const int h = (int)((i / d) % heads);
        d_g[i] = alpha[h] * d_o[i];
        if (d_a) d_a[i] = from_f32<T>(beta[h] * d_o[i]);
    }
}

// d_alpha[h] += sum d_o * g and d_beta[h] += sum d_o * a over head h's elements. Block
// (h, slice): the block strides over the head's rows * d elements from its slice, sums, and
// adds its share with one atomic per weight.
template <typename T>
__device__ void head_mix_grads(const float* d_o, const float* g, const T* a, long long rows, int heads, int d, float* d_alpha,
                               float* d_beta) {
    const int h = blockIdx.x;
    const long long count = rows * d;
    float sa = 0.0f, sb = 0.0f;
    for (long long e = (long long)blockIdx.y * blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.y * blockDim.x) {
        const long long i = (e / d * heads + h) * d + e % d;
        sa += d_o[i] * g[i];
        if (a) sb += d_o[i] * to_f32(a[i]);
    }
    sa = block_sum(sa);
    sb = block_sum(sb);
    if (threadIdx.x == 0) {
        atomicAdd(d_alpha + h, sa);
        if (a) atomicAdd(d_beta + h, sb);
    }
}

#define HEAD_MIX_KERNELS(T, SUFFIX)                                                                                         \
    extern "C" __global__ void head_mix_to_##SUFFIX(const float* g, const T* a, const float* alpha, const float* beta,       \
                                                    int heads, int d, float* o, T* o_t, unsigned long long n) {            \
        head_mix_to<T>(g, a, alpha, beta, heads, d, o, o_t, n);                                                             \
    }                                                                                                                      \
    extern "C" __global__ void head_mix_split_##SUFFIX(const float* d_o, const float* alpha, const float* beta, int heads,  \
                                                       int d, float* d_g, T* d_a, unsigned long long n) {                  \
        head_mix_split<T>(d_o, alpha, beta, heads, d, d_g, d_a, n);                                                         \
    }                                                                                                                      \
    extern "C" __global__ void head_mix_grads_##SUFFIX(const float* d_o, const float* g, const T* a, long long rows,       \
                                                       int heads, int d, float* d_alpha, float* d_beta) {                  \
        head_mix_grads<T>(d_o, g, a, rows, heads, d, d_alpha, d_beta);                                                      \
    }

HEAD_MIX_KERNELS(float, f32)
HEAD_MIX_KERNELS(bf16, bf16)
