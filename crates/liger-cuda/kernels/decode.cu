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

// ---- products of a few rows with a frozen weight (batch <= NB sequences) --------------------
// y[b, r] (+)= sum_k x[b, k] * w[r, k]: one warp per weight row, read once with 16-byte loads
// and dotted with every row of x (NB accumulators per lane), then summed across the warp. At
// batch 1 a step reads each weight once at close to the memory's bandwidth, in one launch.
// k must be a multiple of 8 (bf16) or 4 (float) and the buffers 16-byte aligned.

// 16 bytes of T as floats: 8 bf16 or 4 float.
__device__ __forceinline__ void load16(const bf16* p, float* out) {
    const uint4 raw = *(const uint4*)p;
    const u32 words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        out[2 * i] = __uint_as_float(words[i] << 16);
        out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
}
__device__ __forceinline__ void load16(const float* p, float* out) {
    const float4 raw = *(const float4*)p;
    out[0] = raw.x, out[1] = raw.y, out[2] = raw.z, out[3] = raw.w;
}

// acc[b] = this lane's part of x[b] . w_row, for b < batch.
template <typename T, int NB>
__device__ __forceinline__ void row_dots(const T* x, const T* w_row, int batch, int k, float* acc) {
    const int VEC = 16 / sizeof(T), lane = threadIdx.x & 31;
#pragma unroll
    for (int b = 0; b < NB; b++) acc[b] = 0.0f;
    for (int k0 = lane * VEC; k0 < k; k0 += 32 * VEC) {
        float wv[VEC], xv[VEC];
        load16(w_row + k0, wv);
#pragma unroll
        for (int b = 0; b < NB; b++) {
            if (b < batch) {
                load16(x + (size_t)b * k + k0, xv);
#pragma unroll
                for (int i = 0; i < VEC; i++) acc[b] += wv[i] * xv[i];
            }
        }
    }
#pragma unroll
    for (int b = 0; b < NB; b++) acc[b] = warp_sum(acc[b]);
}

// The adapter's up projection of output row r: sum_j B[r, j] * u[b, j] for every sequence b
// (u = scale * x Aᵀ, the scale already in it), added to acc[b] in lane 0's copy. Rank <= any.
template <int NB>
__device__ __forceinline__ void add_lora_up(const float* lora_b, const float* u, int rank, int r, int batch, float* acc) {
    if (lora_b == nullptr) return;
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int b = 0; b < NB; b++) {
        if (b < batch) {
            float part = 0.0f;
            for (int j = lane; j < rank; j += 32) part += lora_b[(size_t)r * rank + j] * u[(size_t)b * rank + j];
            acc[b] += warp_sum(part);
        }
    }
}

// Up to three products of the same x (q, k and v): rows [0, n0) of w0 into y0, then n1 rows of
// w1 into y1, n2 rows of w2 into y2; each with an optional adapter whose up projection
// (B_i [n_i, rank_i], u_i [batch, rank_i]) is added to the row (lora_b_i null: none).
template <typename T, int NB>
__device__ void decode_gemv(const T* x, const T* w0, float* y0, int n0, const T* w1, float* y1, int n1, const T* w2, float* y2,
                            int n2, int batch, int k, int accumulate, const float* lb0, const float* u0, int rank0,
                            const float* lb1, const float* u1, int rank1, const float* lb2, const float* u2, int rank2) {
    int r = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    const T* w = w0;
    float* y = y0;
    int n = n0;
    const float *lb = lb0, *u = u0;
    int rank = rank0;
    if (r >= n0) {
        r -= n0, w = w1, y = y1, n = n1, lb = lb1, u = u1, rank = rank1;
        if (r >= n1) {
            r -= n1, w = w2, y = y2, n = n2, lb = lb2, u = u2, rank = rank2;
            if (r >= n2) return;  // past the last row: whole warps leave together
        }
    }
    float acc[NB];
    row_dots<T, NB>(x, w + (size_t)r * k, batch, k, acc);
    add_lora_up<NB>(lb, u, rank, r, batch, acc);
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
        for (int b = 0; b < NB; b++)
            if (b < batch) y[(size_t)b * n + r] = accumulate ? y[(size_t)b * n + r] + acc[b] : acc[b];
    }
}

// The MLP's first half: act[b, r] = silu(x . gate_r) * (x . up_r), stored as T.
template <typename T, int NB>
__device__ void decode_gemv_swiglu(const T* x, const T* w_gate, const T* w_up, T* act, int n, int batch, int k) {
    const int r = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    if (r >= n) return;
    float g[NB], u[NB];
    row_dots<T, NB>(x, w_gate + (size_t)r * k, batch, k, g);
    row_dots<T, NB>(x, w_up + (size_t)r * k, batch, k, u);
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
        for (int b = 0; b < NB; b++)
            if (b < batch) act[(size_t)b * n + r] = from_f32<T>(g[b] * (1.0f / (1.0f + expf(-g[b]))) * u[b]);
    }
}

#define GEMV_ENTRY_POINTS(T, SUFFIX, NB)                                                                                  \
    extern "C" __global__ void decode_gemv_##SUFFIX##_b##NB(                                                             \
        const T* x, const T* w0, float* y0, int n0, const T* w1, float* y1, int n1, const T* w2, float* y2, int n2,        \
        int batch, int k, int accumulate, const float* lb0, const float* u0, int rank0, const float* lb1, const float* u1, \
        int rank1, const float* lb2, const float* u2, int rank2) {                                                        \
        decode_gemv<T, NB>(x, w0, y0, n0, w1, y1, n1, w2, y2, n2, batch, k, accumulate, lb0, u0, rank0, lb1, u1, rank1,   \
                           lb2, u2, rank2);                                                                               \
    }                                                                                                                     \
    extern "C" __global__ void decode_gemv_swiglu_##SUFFIX##_b##NB(const T* x, const T* w_gate, const T* w_up, T* act,   \
                                                                   int n, int batch, int k) {                             \
        decode_gemv_swiglu<T, NB>(x, w_gate, w_up, act, n, batch, k);                                                     \
    }

GEMV_ENTRY_POINTS(float, f32, 1)
GEMV_ENTRY_POINTS(float, f32, 4)
GEMV_ENTRY_POINTS(bf16, bf16, 1)
GEMV_ENTRY_POINTS(bf16, bf16, 4)

// ---- LoRA adapters in a decoding step (f32) ----------------------------------------------------
// The down projections of up to three adapters of the same input x [batch, k] (q, k and v):
// u_i[b, j] = scale_i * x[b] . A_i[j] for the rank_i rows of A_i [rank_i, k]; one warp per row
// of the A matrices together, each read once. The up projections are added inside the frozen
// weights' products (decode_gemv) or by decode_lora_up. k must be a multiple of 4.
template <int NB>
__device__ void decode_lora_down(const float* x, int batch, int k, const float* a0, float s0, float* u0, int r0, const float* a1,
                                 float s1, float* u1, int r1, const float* a2, float s2, float* u2, int r2) {
    int r = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    const float* a = a0;
    float* u = u0;
    float scale = s0;
    int rank = r0;
    if (r >= r0) {
        r -= r0, a = a1, u = u1, scale = s1, rank = r1;
        if (r >= r1) {
            r -= r1, a = a2, u = u2, scale = s2, rank = r2;
            if (r >= r2) return;
        }
    }
    float acc[NB];
    row_dots<float, NB>(x, a + (size_t)r * k, batch, k, acc);
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
        for (int b = 0; b < NB; b++)
            if (b < batch) u[(size_t)b * rank + r] = scale * acc[b];
    }
}

// y_i[b, r] += B_i[r] . u_i[b] for up to three adapters (the products of a batch too large for
// decode_gemv); one warp per output row of the three together, any batch.
__device__ void decode_lora_up(int batch, const float* b0, const float* u0, int rank0, float* y0, int n0, const float* b1,
                               const float* u1, int rank1, float* y1, int n1, const float* b2, const float* u2, int rank2,
                               float* y2, int n2) {
    int r = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    const float *lb = b0, *u = u0;
    float* y = y0;
    int rank = rank0, n = n0;
    if (r >= n0) {
        r -= n0, lb = b1, u = u1, rank = rank1, y = y1, n = n1;
        if (r >= n1) {
            r -= n1, lb = b2, u = u2, rank = rank2, y = y2, n = n2;
            if (r >= n2) return;
        }
    }
    const int lane = threadIdx.x & 31;
    for (int b = 0; b < batch; b++) {
        float part = 0.0f;
        for (int j = lane; j < rank; j += 32) part += lb[(size_t)r * rank + j] * u[(size_t)b * rank + j];
        part = warp_sum(part);
        if (lane == 0) y[(size_t)b * n + r] += part;
    }
}

#define LORA_DOWN_ENTRY_POINT(NB)                                                                                        \
    extern "C" __global__ void decode_lora_down_b##NB(const float* x, int batch, int k, const float* a0, float s0,       \
                                                      float* u0, int r0, const float* a1, float s1, float* u1, int r1,   \
                                                      const float* a2, float s2, float* u2, int r2) {                    \
        decode_lora_down<NB>(x, batch, k, a0, s0, u0, r0, a1, s1, u1, r1, a2, s2, u2, r2);                               \
    }
LORA_DOWN_ENTRY_POINT(1)
LORA_DOWN_ENTRY_POINT(4)
LORA_DOWN_ENTRY_POINT(16)

extern "C" __global__ void decode_lora_up_f32(int batch, const float* b0, const float* u0, int rank0, float* y0, int n0,
                                              const float* b1, const float* u1, int rank1, float* y1, int n1,
                                              const float* b2, const float* u2, int rank2, float* y2, int n2) {
    decode_lora_up(batch, b0, u0, rank0, y0, n0, b1, u1, rank1, y1, n1, b2, u2, rank2, y2, n2);
}

// ---- attention over a short window of keys (the Liger layers' SWA), mixed -------------------
// A block per (sequence, key-value head); its warps take the query heads of the group, which
// read the same keys and values (from L1 after the first). A warp scores 32 keys at a time, a
// lane per key (a whole key row in 16-byte loads, against q in shared memory), keeps the
// softmax online, and accumulates the values with a lane per 32nd dimension. The output is
// mixed with the mixer's: o = alpha * mixer_o + beta * attention, as float and as T.
// Keys in slots [0, min(lengths[b], capacity)) are valid (a ring buffer fills from slot 0).
// d must be a multiple of 16 bytes of T and at most 32 * MAX_DIM_PER_LANE.
#define MAX_DIM_PER_LANE 8
#define WINDOW_MAX_WARPS 8
template <typename T>
__device__ void decode_window_attention(int batch, int hq, int hkv, int d, int capacity, const T* q_t, const T* k_cache,
                                        const T* v_cache, const u32* lengths, const float* mixer_o, float alpha, float beta,
                                        float* o_f, T* o_t) {
    __shared__ float q_s[WINDOW_MAX_WARPS][32 * MAX_DIM_PER_LANE];
    const int group = hq / hkv, kvh = blockIdx.x % hkv, b = blockIdx.x / hkv;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    const int n = (int)min(lengths[b], (u32)capacity);
    const float scale = rsqrtf((float)d);
    const T* keys = k_cache + ((size_t)b * hkv + kvh) * capacity * d;
    const T* values = v_cache + ((size_t)b * hkv + kvh) * capacity * d;
    const int VEC = 16 / sizeof(T);
    for (int g = warp; g < group; g += warps) {
        const size_t row = ((size_t)b * hq + (size_t)kvh * group + g) * d;
        __syncwarp();
        for (int e = lane; e < d; e += 32) q_s[warp][e] = to_f32(q_t[row + e]);
        __syncwarp();
        float acc[MAX_DIM_PER_LANE];
#pragma unroll
        for (int c = 0; c < MAX_DIM_PER_LANE; c++) acc[c] = 0.0f;
        float m = -POS_INFINITY, l = 0.0f;
        for (int j0 = 0; j0 < n; j0 += 32) {
            const int j = j0 + lane;
            float s = -POS_INFINITY;
            if (j < n) {
                float dot = 0.0f, kv[16 / sizeof(T)];
                // Unrolled so that several loads are in flight at once (d / VEC is a multiple
                // of 4); the sum keeps its order.
#pragma unroll 4
                for (int e = 0; e < d; e += VEC) {
                    load16(keys + (size_t)j * d + e, kv);
#pragma unroll
                    for (int i = 0; i < VEC; i++) dot += q_s[warp][e + i] * kv[i];
                }
                s = dot * scale;
            }
            const float m_new = fmaxf(m, warp_max(s));  // finite: lane 0's key (j0 < n) is valid
            const float correction = __expf(m - m_new), p = j < n ? __expf(s - m_new) : 0.0f;
            l = l * correction + warp_sum(p);
            m = m_new;
#pragma unroll
            for (int c = 0; c < MAX_DIM_PER_LANE; c++) acc[c] *= correction;
            const int count = min(32, n - j0);
            // Unrolled for the same reason: the value loads do not wait on the sums.
#pragma unroll 8
            for (int jj = 0; jj < count; jj++) {
                const float pj = __shfl_sync(0xffffffffu, p, jj);
                const T* value = values + (size_t)(j0 + jj) * d;
#pragma unroll
                for (int c = 0; c < MAX_DIM_PER_LANE; c++)
                    if (c * 32 < d) acc[c] += pj * to_f32(value[c * 32 + lane]);
            }
        }
        const float inv = n > 0 ? 1.0f / l : 0.0f;
#pragma unroll
        for (int c = 0; c < MAX_DIM_PER_LANE; c++) {
            const int e = c * 32 + lane;
            if (e < d) {
                const float o = alpha * mixer_o[row + e] + beta * acc[c] * inv;
                o_f[row + e] = o;
                o_t[row + e] = from_f32<T>(o);
            }
        }
    }
}

// x = float(bf16(x)) in place: what a state kept in bf16 would hold.
extern "C" __global__ void decode_round_bf16(float* x, unsigned long long n) {
    for (size_t i = global_index(); i < n; i += grid_stride()) x[i] = to_f32(from_f32<bf16>(x[i]));
}

#define WINDOW_ENTRY_POINT(T, SUFFIX)                                                                                     \
    extern "C" __global__ void decode_window_attention_##SUFFIX(                                                          \
        int batch, int hq, int hkv, int d, int capacity, const T* q_t, const T* k_cache, const T* v_cache,               \
        const u32* lengths, const float* mixer_o, float alpha, float beta, float* o_f, T* o_t) {                         \
        decode_window_attention<T>(batch, hq, hkv, d, capacity, q_t, k_cache, v_cache, lengths, mixer_o, alpha, beta,    \
                                   o_f, o_t);                                                                             \
    }
WINDOW_ENTRY_POINT(float, f32)
WINDOW_ENTRY_POINT(bf16, bf16)
