// Fused glue of a decoding step (one token per sequence): each kernel does in one launch what
// the whole-sequence path does in two or three (an op, then a cast to the storage type T).
// CPU twins: the elementwise steps of `liger_core::convert` (model.rs) and `liger::swa`.

// RMSNorm of rows of `cols` values, written both as float (`y_f`, read by LoRA adapters) and as
// T (`y_t`, read by products with frozen weights). One block per row.
template <typename T>
__device__ void decode_rms_norm(const float* x, const float* w, float* y_f, T* y_t, int cols, float eps) {
    const size_t row = blockIdx.x;
    const float* xr = x + row * cols;
    float sum_sq = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) sum_sq += xr[i] * xr[i];
    sum_sq = block_sum(sum_sq);
    const float rstd = 1.0f / sqrtf(sum_sq / cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float y = xr[i] * rstd * w[i];
        y_f[row * cols + i] = y;
        y_t[row * cols + i] = from_f32<T>(y);
    }
}

// RoPE ("rotate_half") of one token per sequence at position positions[b], for q (`hq` heads)
// and k (`hkv` heads): q goes to `q_roped`; the roped k and the unchanged v go into slot
// `positions[b] % capacity` of each sequence's cache `[B, hkv, capacity, d]`. One thread per
// rotated pair (of q or k); the k threads also copy the two matching values of v.
template <typename T>
__device__ void decode_rope_append(const float* q, const float* k, const float* v, const float* inv_freq, const u32* positions,
                                   T* q_roped, T* k_cache, T* v_cache, int batch, int hq, int hkv, int d, int capacity) {
    const int half = d / 2, heads = hq + hkv;
    const size_t pairs = (size_t)batch * heads * half;
    for (size_t idx = global_index(); idx < pairs; idx += grid_stride()) {
        const int j = (int)(idx % half), head = (int)((idx / half) % heads), b = (int)(idx / ((size_t)half * heads));
        // In double precision, as the CPU and the whole-sequence kernel compute the angle.
        const double angle = (double)positions[b] * (double)inv_freq[j];
        const float c = (float)cos(angle), s = (float)sin(angle);
        if (head < hq) {
            const size_t base = ((size_t)b * hq + head) * d;
            const float x0 = q[base + j], x1 = q[base + j + half];
            q_roped[base + j] = from_f32<T>(x0 * c - x1 * s);
            q_roped[base + j + half] = from_f32<T>(x1 * c + x0 * s);
        } else {
            const int kvh = head - hq;
            const size_t src = ((size_t)b * hkv + kvh) * d;
            const size_t dst = (((size_t)b * hkv + kvh) * capacity + positions[b] % (u32)capacity) * d;
            const float x0 = k[src + j], x1 = k[src + j + half];
            k_cache[dst + j] = from_f32<T>(x0 * c - x1 * s);
            k_cache[dst + j + half] = from_f32<T>(x1 * c + x0 * s);
            v_cache[dst + j] = from_f32<T>(v[src + j]);
            v_cache[dst + j + half] = from_f32<T>(v[src + j + half]);
        }
    }
}

// The attention output of a layer: o = alpha * a + beta * b (a term is left out when its flag
// is 0: no mixer in a softmax layer, no window without SWA), as float (`o_f`, for the o
// adapter) and as T (`o_t`, for o_proj).
template <typename T>
__device__ void decode_mix(const float* a, float alpha, int use_a, const T* b, float beta, int use_b, float* o_f, T* o_t, size_t n) {
    for (size_t i = global_index(); i < n; i += grid_stride()) {
        float o = 0.0f;
        if (use_a) o += alpha * a[i];
        if (use_b) o += beta * to_f32(b[i]);
        o_f[i] = o;
        o_t[i] = from_f32<T>(o);
    }
}

// SwiGLU on the float products, stored as T for the down projection: out = silu(g) * u.
template <typename T>
__device__ void decode_swiglu(const float* gate, const float* up, T* out, size_t n) {
    for (size_t i = global_index(); i < n; i += grid_stride()) {
        const float g = gate[i];
        out[i] = from_f32<T>(g * (1.0f / (1.0f + expf(-g))) * up[i]);  // as swiglu.cu
    }
}

#define DECODE_ENTRY_POINTS(T, SUFFIX)                                                                                    \
    extern "C" __global__ void decode_rms_norm_##SUFFIX(const float* x, const float* w, float* y_f, T* y_t, int cols,     \
                                                        float eps) {                                                      \
        decode_rms_norm<T>(x, w, y_f, y_t, cols, eps);                                                                    \
    }                                                                                                                     \
    extern "C" __global__ void decode_rope_append_##SUFFIX(const float* q, const float* k, const float* v,                \
                                                           const float* inv_freq, const u32* positions, T* q_roped,       \
                                                           T* k_cache, T* v_cache, int batch, int hq, int hkv, int d,     \
                                                           int capacity) {                                                \
        decode_rope_append<T>(q, k, v, inv_freq, positions, q_roped, k_cache, v_cache, batch, hq, hkv, d, capacity);      \
    }                                                                                                                     \
    extern "C" __global__ void decode_mix_##SUFFIX(const float* a, float alpha, int use_a, const T* b, float beta,        \
                                                   int use_b, float* o_f, T* o_t, unsigned long long n) {                 \
        decode_mix<T>(a, alpha, use_a, b, beta, use_b, o_f, o_t, n);                                                      \
    }                                                                                                                     \
    extern "C" __global__ void decode_swiglu_##SUFFIX(const float* gate, const float* up, T* out, unsigned long long n) { \
        decode_swiglu<T>(gate, up, out, n);                                                                               \
    }

DECODE_ENTRY_POINTS(float, f32)
DECODE_ENTRY_POINTS(bf16, bf16)
