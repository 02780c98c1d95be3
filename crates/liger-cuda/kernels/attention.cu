// Causal softmax attention with an optional sliding window, grouped-query heads, scale 1/sqrt(d).
// Layouts: q, o, dq [B, T, hq, d]; k, v, dk, dv [B, T, hkv, d]; lse [B, hq, T] (fp32).
// Query i sees keys lo(i)..=i with lo(i) = max(0, i + 1 - window) (window = T for full attention).
//
// These are the warp-per-row forms: one warp owns one query (or one key) row, each lane holds
// d / 32 of its values, and a warp sum gives each dot product. They serve every head size that
// is a multiple of 32 up to 256.

#define MAX_PER_LANE 8  // head_dim <= 256

struct AttnDims {
    int batch, tokens, hq, hkv, d, window;
};

__device__ __forceinline__ int first_visible(int i, int window) { return max(0, i + 1 - window); }

// Loads the d values of one row into per-lane registers: lane l holds elements l, l + 32, ...
template <typename T> __device__ __forceinline__ void load_row(const T* row, int d, float* r) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int c = 0; c < MAX_PER_LANE; c++) r[c] = (c * 32 < d) ? to_f32(row[c * 32 + lane]) : 0.0f;
}

template <typename T> __device__ __forceinline__ void store_row(T* row, int d, const float* r) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int c = 0; c < MAX_PER_LANE; c++)
        if (c * 32 < d) row[c * 32 + lane] = from_f32<T>(r[c]);
}

template <typename T> __device__ __forceinline__ float dot_row(const float* r, const T* row, int d) {
    const int lane = threadIdx.x & 31;
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < MAX_PER_LANE; c++)
        if (c * 32 < d) s += r[c] * to_f32(row[c * 32 + lane]);
    return warp_sum(s);
}

// Global warp index over `rows` rows, or -1 for a spare warp.
__device__ __forceinline__ long long warp_row(long long rows) {
    const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    return w < rows ? w : -1;
}

// Forward: one warp per (b, i, h), online softmax over the visible keys.
template <typename T>
__device__ void attention_forward_rows(AttnDims p, const T* q, const T* k, const T* v, T* o, float* lse) {
    const long long row = warp_row((long long)p.batch * p.tokens * p.hq);
    if (row < 0) return;
    const int h = (int)(row % p.hq), i = (int)((row / p.hq) % p.tokens), b = (int)(row / ((long long)p.hq * p.tokens));
    const int kvh = h / (p.hq / p.hkv);
    const float scale = rsqrtf((float)p.d);
    float qr[MAX_PER_LANE], acc[MAX_PER_LANE];
    load_row(q + row * p.d, p.d, qr);
#pragma unroll
    for (int c = 0; c < MAX_PER_LANE; c++) acc[c] = 0.0f;
    float m = -POS_INFINITY, l = 0.0f;
    const long long kv_stride = (long long)p.hkv * p.d;
    const T* kb = k + (long long)b * p.tokens * kv_stride + (long long)kvh * p.d;
    const T* vb = v + (long long)b * p.tokens * kv_stride + (long long)kvh * p.d;
    for (int j = first_visible(i, p.window); j <= i; j++) {
        const float s = dot_row(qr, kb + j * kv_stride, p.d) * scale;
        const float m_new = fmaxf(m, s);
        const float correction = __expf(m - m_new), e = __expf(s - m_new);
        l = l * correction + e;
        const int lane = threadIdx.x & 31;
#pragma unroll
        for (int c = 0; c < MAX_PER_LANE; c++)
            if (c * 32 < p.d) acc[c] = acc[c] * correction + e * to_f32(vb[j * kv_stride + c * 32 + lane]);
        m = m_new;
    }
    const float inv = 1.0f / l;
#pragma unroll
    for (int c = 0; c < MAX_PER_LANE; c++) acc[c] *= inv;
    store_row(o + row * p.d, p.d, acc);
    if ((threadIdx.x & 31) == 0) lse[((long long)b * p.hq + h) * p.tokens + i] = m + __logf(l);
}

// Backward, first pass: delta[b, h, i] = sum over d of dO * O (the softmax backward's row term).
template <typename T> __device__ void attention_delta_rows(AttnDims p, const T* o, const T* d_o, float* delta) {
    const long long row = warp_row((long long)p.batch * p.tokens * p.hq);
    if (row < 0) return;
    const int h = (int)(row % p.hq), i = (int)((row / p.hq) % p.tokens), b = (int)(row / ((long long)p.hq * p.tokens));
    float r[MAX_PER_LANE];
    load_row(o + row * p.d, p.d, r);
    const float s = dot_row(r, d_o + row * p.d, p.d);
    if ((threadIdx.x & 31) == 0) delta[((long long)b * p.hq + h) * p.tokens + i] = s;
}

// Backward for dq: one warp per query row, over the keys it sees.
template <typename T>
__device__ void attention_dq_rows(AttnDims p, const T* q, const T* k, const T* v, const float* lse, const float* delta,
                                  const T* d_o, T* dq) {
    const long long row = warp_row((long long)p.batch * p.tokens * p.hq);
    if (row < 0) return;
    const int h = (int)(row % p.hq), i = (int)((row / p.hq) % p.tokens), b = (int)(row / ((long long)p.hq * p.tokens));
    const int kvh = h / (p.hq / p.hkv);
    const float scale = rsqrtf((float)p.d);
    const long long stat = ((long long)b * p.hq + h) * p.tokens + i;
    const float row_lse = lse[stat], row_delta = delta[stat];
    float qr[MAX_PER_LANE], dor[MAX_PER_LANE], acc[MAX_PER_LANE];
    load_row(q + row * p.d, p.d, qr);
    load_row(d_o + row * p.d, p.d, dor);
#pragma unroll
    for (int c = 0; c < MAX_PER_LANE; c++) acc[c] = 0.0f;
    const long long kv_stride = (long long)p.hkv * p.d;
    const T* kb = k + (long long)b * p.tokens * kv_stride + (long long)kvh * p.d;
    const T* vb = v + (long long)b * p.tokens * kv_stride + (long long)kvh * p.d;
    const int lane = threadIdx.x & 31;
    for (int j = first_visible(i, p.window); j <= i; j++) {
        const float prob = __expf(dot_row(qr, kb + j * kv_stride, p.d) * scale - row_lse);
        const float ds = prob * (dot_row(dor, vb + j * kv_stride, p.d) - row_delta) * scale;
#pragma unroll
        for (int c = 0; c < MAX_PER_LANE; c++)
            if (c * 32 < p.d) acc[c] += ds * to_f32(kb[j * kv_stride + c * 32 + lane]);
    }
    store_row(dq + row * p.d, p.d, acc);
}

// Backward for dk and dv: one warp per key row (b, j, kv head), over the queries of its group
// that see it (i in j ..= j + window - 1).
template <typename T>
__device__ void attention_dkv_rows(AttnDims p, const T* q, const T* k, const T* v, const float* lse, const float* delta,
                                   const T* d_o, T* dk, T* dv) {
    const long long row = warp_row((long long)p.batch * p.tokens * p.hkv);
    if (row < 0) return;
    const int kvh = (int)(row % p.hkv), j = (int)((row / p.hkv) % p.tokens), b = (int)(row / ((long long)p.hkv * p.tokens));
    const int group = p.hq / p.hkv;
    const float scale = rsqrtf((float)p.d);
    float kr[MAX_PER_LANE], vr[MAX_PER_LANE], dk_acc[MAX_PER_LANE], dv_acc[MAX_PER_LANE];
    load_row(k + row * p.d, p.d, kr);
    load_row(v + row * p.d, p.d, vr);
#pragma unroll
    for (int c = 0; c < MAX_PER_LANE; c++) dk_acc[c] = dv_acc[c] = 0.0f;
    const long long q_stride = (long long)p.hq * p.d;
    const int last = min(p.tokens - 1, j + p.window - 1);  // window <= tokens, so no overflow
    const int lane = threadIdx.x & 31;
    for (int g = 0; g < group; g++) {
        const int h = kvh * group + g;
        const T* qb = q + (long long)b * p.tokens * q_stride + (long long)h * p.d;
        const T* dob = d_o + (long long)b * p.tokens * q_stride + (long long)h * p.d;
        const long long stat0 = ((long long)b * p.hq + h) * p.tokens;
        for (int i = j; i <= last; i++) {
            const float prob = __expf(dot_row(kr, qb + i * q_stride, p.d) * scale - lse[stat0 + i]);
            const float ds = prob * (dot_row(vr, dob + i * q_stride, p.d) - delta[stat0 + i]) * scale;
#pragma unroll
            for (int c = 0; c < MAX_PER_LANE; c++) {
                if (c * 32 < p.d) {
                    dv_acc[c] += prob * to_f32(dob[i * q_stride + c * 32 + lane]);
                    dk_acc[c] += ds * to_f32(qb[i * q_stride + c * 32 + lane]);
                }
            }
        }
    }
    store_row(dk + row * p.d, p.d, dk_acc);
    store_row(dv + row * p.d, p.d, dv_acc);
}

// Decoding: one warp per (b, h); the first lengths[b] slots of the sequence's cache
// [B, hkv, capacity, d] are its keys, in any order. An empty cache gives zeros.
template <typename T>
__device__ void attention_decode_rows(int batch, int hq, int hkv, int d, int capacity, const T* q_t, const T* k_cache,
                                      const T* v_cache, const u32* lengths, T* o_t) {
    const long long row = warp_row((long long)batch * hq);
    if (row < 0) return;
    const int h = (int)(row % hq), b = (int)(row / hq), kvh = h / (hq / hkv);
    const int n = (int)min(lengths[b], (u32)capacity);
    const float scale = rsqrtf((float)d);
    float qr[MAX_PER_LANE], acc[MAX_PER_LANE];
    load_row(q_t + row * d, d, qr);
#pragma unroll
    for (int c = 0; c < MAX_PER_LANE; c++) acc[c] = 0.0f;
    const long long base = ((long long)b * hkv + kvh) * capacity * d;
    float m = -POS_INFINITY, l = 0.0f;
    const int lane = threadIdx.x & 31;
    for (int j = 0; j < n; j++) {
        const float s = dot_row(qr, k_cache + base + (long long)j * d, d) * scale;
        const float m_new = fmaxf(m, s);
        const float correction = __expf(m - m_new), e = __expf(s - m_new);
        l = l * correction + e;
#pragma unroll
        for (int c = 0; c < MAX_PER_LANE; c++)
            if (c * 32 < d) acc[c] = acc[c] * correction + e * to_f32(v_cache[base + (long long)j * d + c * 32 + lane]);
        m = m_new;
    }
    const float inv = n > 0 ? 1.0f / l : 0.0f;
#pragma unroll
    for (int c = 0; c < MAX_PER_LANE; c++) acc[c] *= inv;
    store_row(o_t + row * d, d, acc);
}

// Writes token t of sequence b (k_new/v_new [B, tokens, hkv, d], at position positions[b] + t)
// into slot position % capacity of the caches; only the last `capacity` tokens are written, so
// that no slot is written twice. tokens = 1 is the per-step append.
template <typename T>
__device__ void cache_write(int batch, int tokens, int hkv, int d, int capacity, const T* k_new, const T* v_new,
                            const u32* positions, T* k_cache, T* v_cache) {
    const int first = max(0, tokens - capacity);
    const size_t row = (size_t)hkv * d, n = (size_t)batch * (tokens - first) * row;
    for (size_t idx = global_index(); idx < n; idx += grid_stride()) {
        const int e = (int)(idx % d), kvh = (int)((idx / d) % hkv);
        const size_t bt = idx / row;
        const int t = first + (int)(bt % (tokens - first)), b = (int)(bt / (tokens - first));
        const u32 slot = (positions[b] + (u32)t) % (u32)capacity;
        const size_t src = ((size_t)b * tokens + t) * row + (size_t)kvh * d + e;
        const size_t dst = (((size_t)b * hkv + kvh) * capacity + slot) * d + e;
        k_cache[dst] = k_new[src];
        v_cache[dst] = v_new[src];
    }
}

#define ATTENTION_ENTRY_POINTS(T, SUFFIX)                                                                                  \
    extern "C" __global__ void attention_forward_##SUFFIX(AttnDims p, const T* q, const T* k, const T* v, T* o,         \
                                                          float* lse) {                                                 \
        attention_forward_rows<T>(p, q, k, v, o, lse);                                                                  \
    }                                                                                                                   \
    extern "C" __global__ void attention_delta_##SUFFIX(AttnDims p, const T* o, const T* d_o, float* delta) {           \
        attention_delta_rows<T>(p, o, d_o, delta);                                                                      \
    }                                                                                                                   \
    extern "C" __global__ void attention_dq_##SUFFIX(AttnDims p, const T* q, const T* k, const T* v, const float* lse,  \
                                                     const float* delta, const T* d_o, T* dq) {                         \
        attention_dq_rows<T>(p, q, k, v, lse, delta, d_o, dq);                                                          \
    }                                                                                                                   \
    extern "C" __global__ void attention_dkv_##SUFFIX(AttnDims p, const T* q, const T* k, const T* v, const float* lse, \
                                                      const float* delta, const T* d_o, T* dk, T* dv) {                 \
        attention_dkv_rows<T>(p, q, k, v, lse, delta, d_o, dk, dv);                                                     \
    }                                                                                                                   \
    extern "C" __global__ void attention_decode_##SUFFIX(int batch, int hq, int hkv, int d, int capacity, const T* q_t, \
                                                         const T* k_cache, const T* v_cache, const u32* lengths,        \
                                                         T* o_t) {                                                      \
        attention_decode_rows<T>(batch, hq, hkv, d, capacity, q_t, k_cache, v_cache, lengths, o_t);                     \
    }                                                                                                                   \
    extern "C" __global__ void cache_write_##SUFFIX(int batch, int tokens, int hkv, int d, int capacity,                \
                                                    const T* k_new, const T* v_new, const u32* positions, T* k_cache,   \
                                                    T* v_cache) {                                                       \
        cache_write<T>(batch, tokens, hkv, d, capacity, k_new, v_new, positions, k_cache, v_cache);                     \
    }

ATTENTION_ENTRY_POINTS(float, f32)
ATTENTION_ENTRY_POINTS(bf16, bf16)
