// Fused glue of a decoding step (one token per sequence): each kernel does in one launch what
// the whole-sequence path does in two or three (an op, then a cast to the storage type T); the
// norms and SwiGLU of a step use the shared kernels of rms_norm.cu and swiglu.cu.
// CPU twins: the elementwise steps of `liger_core::convert` (model.rs) and `liger::swa`.

// RoPE ("rotate_half") of one token per sequence at position positions[b], for q (`hq` heads)
// and k (`hkv` heads): q goes to `q_roped`; the roped k and the unchanged v go into entry
// `cache_slot(positions[b], sinks, capacity)` of each sequence's cache `[B, hkv, stride, d]`
// (stride = capacity, or more where the surprise cache's slots follow the window). One thread
// per rotated pair (of q or k); the k threads also copy the two matching values of v.
template <typename T>
__device__ void decode_rope_append(const float* q, const float* k, const float* v, const float* inv_freq, const u32* positions,
                                   T* q_roped, T* k_cache, T* v_cache, int batch, int hq, int hkv, int d, int capacity,
                                   int sinks, int stride) {
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
            const size_t dst = (((size_t)b * hkv + kvh) * stride + cache_slot(positions[b], sinks, capacity)) * d;
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

// ---- the surprise cache while decoding (CPU twin: liger::surprise::SurpriseMemory) -----------
// A Liger layer's window caches [B, hkv, stride, d] hold in each row the sinks, the ring of the
// last `keys` tokens, then the cache's `slots` (stride = sinks + keys + slots); `scores`
// [B, hkv, keys + slots] holds the surprise of the ring's tokens, then of the cached ones.
// The slots fill in order and a free one scores -inf; with the repeat rule a head can keep slots
// free that another head has filled, so each (sequence, head) row counts its own.

// One step, before the new token is written into the window: one warp per (sequence, key-value
// head). The new token's surprise is |v - n / (den + eps)|^2, n and den [B, hkv, d] the
// recurrent branch read out with its key as the query over the values and over values of one
// (every query head of a group reads the same, so this is their mean). The token leaving the
// window (at position - keys) sits in the ring entry the new token takes: being no sink, it
// enters a free slot, or else the first slot of lowest score when its own score is higher,
// unless its value repeats one the cache holds (the repeat rule at `tolerance`, see
// repeats_held). Then the new token's surprise takes the ring entry's score, and
// head_lengths [B, hkv] the entries of the row the attention reads (its window's, then its
// slots in use).
template <typename T>
__device__ void surprise_decode_step(const float* n, const float* den, const float* v, const u32* positions, int batch,
                                     int hkv, int d, int keys, int sinks, int slots, float eps, double tolerance,
                                     T* k_cache, T* v_cache, float* scores, u32* head_lengths) {
    const long long w = warp_row((long long)batch * hkv);
    if (w < 0) return;
    const int lane = threadIdx.x & 31;
    const u32 pos = positions[w / hkv];
    float err = 0.0f;
    for (int e = lane; e < d; e += 32) {
        const float miss = v[w * d + e] - n[w * d + e] / (den[w * d + e] + eps);
        err += miss * miss;
    }
    const float surprise = warp_sum(err);
    const int capacity = sinks + keys;
    if (pos < (u32)sinks) {  // a sink keeps no score and pushes no token out
        if (lane == 0) head_lengths[w] = pos + 1;
        return;
    }
    const int ring = (int)((pos - (u32)sinks) % (u32)keys);
    float* row_scores = scores + w * (keys + slots);
    int used = 0;  // slots in use after this step
    if (pos >= (u32)capacity) {
        const float leaving = row_scores[ring];
        // The first slot of lowest score (a free one: the first free), min over (score, slot)
        // pairs as surprise_select; and the slots in use.
        float best = POS_INFINITY;
        int best_at = slots;
        for (int c = lane; c < slots; c += 32) {
            const float held = row_scores[keys + c];
            used += held != -POS_INFINITY;
            if (held < best) best = held, best_at = c;
        }
        for (int off = 16; off > 0; off >>= 1) {
            const float ob = __shfl_xor_sync(0xffffffffu, best, off);
            const int oa = __shfl_xor_sync(0xffffffffu, best_at, off);
            if (ob < best || (ob == best && oa < best_at)) best = ob, best_at = oa;
            used += __shfl_xor_sync(0xffffffffu, used, off);
        }
        int at = best == -POS_INFINITY || leaving > best ? best_at : -1;
        const size_t row = (size_t)w * (capacity + slots) * d;
        const size_t from = row + (size_t)(sinks + ring) * d;
        const auto held = [&](int c) { return v_cache + row + (size_t)(capacity + c) * d; };
        if (at >= 0 && repeats_held(v_cache + from, held, used, d, tolerance)) at = -1;
        if (at >= 0) {
            const size_t to = row + (size_t)(capacity + at) * d;
            for (int e = lane; e < d; e += 32) {
                k_cache[to + e] = k_cache[from + e];
                v_cache[to + e] = v_cache[from + e];
            }
        }
        __syncwarp();  // every lane has read the scores before lane 0 writes them
        if (lane == 0 && at >= 0) row_scores[keys + at] = leaving;
        if (at == used) used++;
    }
    if (lane == 0) {
        row_scores[ring] = surprise;
        head_lengths[w] = (u32)min((long long)pos + 1, (long long)capacity) + (u32)used;
    }
}

// After a prefill of `tokens` tokens per sequence (roped k_new and v_new [B, tokens, hkv, d],
// their surprise token_scores [B * tokens, hkv], and kept [B, tokens, hkv, slots] from
// surprise_select): fills the window caches and the scores as the steps would have left them.
// Entry e < capacity of a row holds token window_tokens[e] (-1: not written yet), entry
// capacity + s the token in slot s once the last token is in (-1: free, scored -inf). Other
// entries without a token are left as they are: the steps never read them.
template <typename T>
__device__ void surprise_cache_fill(const T* k_new, const T* v_new, const float* token_scores, const int* kept,
                                    const int* window_tokens, int batch, int tokens, int hkv, int d, int keys, int sinks,
                                    int slots, T* k_cache, T* v_cache, float* scores) {
    const int capacity = sinks + keys, stride = capacity + slots;
    const size_t n = (size_t)batch * hkv * stride * d;
    for (size_t idx = global_index(); idx < n; idx += grid_stride()) {
        const int e = (int)(idx % d), entry = (int)((idx / d) % stride);
        const size_t row = idx / ((size_t)stride * d);  // b * hkv + kvh
        const int kvh = (int)(row % hkv), b = (int)(row / hkv);
        const int* last = kept + (((size_t)b * tokens + tokens - 1) * hkv + kvh) * slots;
        const int token = entry < capacity ? window_tokens[entry] : last[entry - capacity];
        if (token < 0) {
            // A free slot scores -inf (the steps count the slots in use by it).
            if (e == 0 && entry >= capacity) scores[row * (keys + slots) + entry - sinks] = -POS_INFINITY;
            continue;
        }
        const size_t src = ((size_t)b * tokens + token) * hkv + kvh;
        k_cache[idx] = k_new[src * d + e];
        v_cache[idx] = v_new[src * d + e];
        if (e == 0 && entry >= sinks) scores[row * (keys + slots) + entry - sinks] = token_scores[src];
    }
}

#define DECODE_ENTRY_POINTS(T, SUFFIX)                                                                                    \
    extern "C" __global__ void decode_rope_append_##SUFFIX(const float* q, const float* k, const float* v,                \
                                                           const float* inv_freq, const u32* positions, T* q_roped,       \
                                                           T* k_cache, T* v_cache, int batch, int hq, int hkv, int d,     \
                                                           int capacity, int sinks, int stride) {                         \
        decode_rope_append<T>(q, k, v, inv_freq, positions, q_roped, k_cache, v_cache, batch, hq, hkv, d, capacity, sinks,  \
                              stride);                                                                                    \
    }                                                                                                                     \
    extern "C" __global__ void decode_mix_##SUFFIX(const float* a, float alpha, int use_a, const T* b, float beta,        \
                                                   int use_b, float* o_f, T* o_t, unsigned long long n) {                 \
        decode_mix<T>(a, alpha, use_a, b, beta, use_b, o_f, o_t, n);                                                      \
    }                                                                                                                     \
    extern "C" __global__ void surprise_decode_step_##SUFFIX(const float* n, const float* den, const float* v,           \
                                                             const u32* positions, int batch, int hkv, int d, int keys,   \
                                                             int sinks, int slots, float eps, double tolerance,           \
                                                             T* k_cache, T* v_cache, float* scores, u32* head_lengths) {  \
        surprise_decode_step<T>(n, den, v, positions, batch, hkv, d, keys, sinks, slots, eps, tolerance, k_cache, v_cache, \
                                scores, head_lengths);                                                                    \
    }                                                                                                                     \
    extern "C" __global__ void surprise_cache_fill_##SUFFIX(const T* k_new, const T* v_new, const float* token_scores,   \
                                                            const int* kept, const int* window_tokens, int batch,         \
                                                            int tokens, int hkv, int d, int keys, int sinks, int slots,   \
                                                            T* k_cache, T* v_cache, float* scores) {                      \
        surprise_cache_fill<T>(k_new, v_new, token_scores, kept, window_tokens, batch, tokens, hkv, d, keys, sinks, slots, \
                               k_cache, v_cache, scores);                                                                 \
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

// Up to three products of the same x (q, k and v): rows [0, n0) of w0 into y0, then n1 rows of
// w1 into y1, n2 rows of w2 into y2.
template <typename T, int NB>
__device__ void decode_gemv(const T* x, const T* w0, float* y0, int n0, const T* w1, float* y1, int n1, const T* w2, float* y2,
                            int n2, int batch, int k, int accumulate) {
    int r = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    const T* w = w0;
    float* y = y0;
    int n = n0;
    if (r >= n0) {
        r -= n0, w = w1, y = y1, n = n1;
        if (r >= n1) {
            r -= n1, w = w2, y = y2, n = n2;
            if (r >= n2) return;  // past the last row: whole warps leave together
        }
    }
    float acc[NB];
    row_dots<T, NB>(x, w + (size_t)r * k, batch, k, acc);
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
    extern "C" __global__ void decode_gemv_##SUFFIX##_b##NB(const T* x, const T* w0, float* y0, int n0, const T* w1,     \
                                                            float* y1, int n1, const T* w2, float* y2, int n2, int batch, \
                                                            int k, int accumulate) {                                      \
        decode_gemv<T, NB>(x, w0, y0, n0, w1, y1, n1, w2, y2, n2, batch, k, accumulate);                                  \
    }                                                                                                                     \
    extern "C" __global__ void decode_gemv_swiglu_##SUFFIX##_b##NB(const T* x, const T* w_gate, const T* w_up, T* act,   \
                                                                   int n, int batch, int k) {                             \
        decode_gemv_swiglu<T, NB>(x, w_gate, w_up, act, n, batch, k);                                                     \
    }

GEMV_ENTRY_POINTS(float, f32, 1)
GEMV_ENTRY_POINTS(float, f32, 4)
GEMV_ENTRY_POINTS(bf16, bf16, 1)
GEMV_ENTRY_POINTS(bf16, bf16, 4)

// The adapters' up projections of a decoding step, after their down projections (a
// decode_gemv of the f32 input with the A matrices): y_a[b, o] += scale_a * sum_j u_a[b, j]
// B_a[o, j] for up to three adapters (q, k, v) in one launch, a thread per (adapter, sequence,
// output), grid-stride. Unused adapters have out = 0.
struct DecodeLoraUp {
    const float* u;  // [batch, rank]
    const float* b;  // [out, rank]
    float* y;        // [batch, out]
    int rank, out;
    float scale;
};

extern "C" __global__ void decode_lora_up(const DecodeLoraUp a0, const DecodeLoraUp a1, const DecodeLoraUp a2, int batch) {
    const long long n0 = (long long)batch * a0.out, n1 = (long long)batch * a1.out, n2 = (long long)batch * a2.out;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < n0 + n1 + n2; idx += (long long)gridDim.x * blockDim.x) {
        long long i = idx;
        const DecodeLoraUp* a = &a0;
        if (i >= n0) {
            i -= n0, a = &a1;
            if (i >= n1) i -= n1, a = &a2;
        }
        const long long s = i / a->out;
        const int o = i % a->out;
        const float* u = a->u + s * a->rank;
        const float* w = a->b + (long long)o * a->rank;
        float acc = 0.0f;
        for (int j = 0; j < a->rank; ++j) acc = fmaf(u[j], w[j], acc);
        a->y[i] = fmaf(a->scale, acc, a->y[i]);
    }
}
