// Causal softmax attention with an optional sliding window, grouped-query heads, scale 1/sqrt(d).
// Layouts: q, o, dq [B, T, hq, d]; k, v, dk, dv [B, T, hkv, d]; lse [B, hq, T] (fp32).
// Query i sees keys lo(i)..=i with lo(i) = max(0, i + 1 - window) (window = T for full attention),
// and the first `sinks` keys (attention sinks; CPU twin: liger::Window::sees).
//
// These are the warp-per-row forms: one warp owns one query (or one key) row, each lane holds
// d / 32 of its values, and a warp sum gives each dot product. They serve every head size that
// is a multiple of 32 up to 256.

#define MAX_PER_LANE 8  // head_dim <= 256

struct AttnDims {
    int batch, tokens, hq, hkv, d, window, sinks;
};

__device__ __forceinline__ int first_visible(int i, int window) { return max(0, i + 1 - window); }
__device__ __forceinline__ bool sees(const AttnDims& p, int i, int j) { return j <= i && (j > i - p.window || j < p.sinks); }
// The keys query i sees, in order: the first of them, and the one after key j.
__device__ __forceinline__ int first_key(const AttnDims& p, int i) { return p.sinks > 0 ? 0 : first_visible(i, p.window); }
__device__ __forceinline__ int next_key(const AttnDims& p, int i, int j) {
    const int lo = first_visible(i, p.window);
    return j + 1 == p.sinks && j + 1 < lo ? lo : j + 1;
}
// The same for tiles of MMA_KEYS keys seen by some query of i0..: the sink tiles, then the window's.
#define MMA_KEYS 64
__device__ __forceinline__ int first_key_tile(const AttnDims& p, int i0) {
    return p.sinks > 0 ? 0 : first_visible(i0, p.window) / MMA_KEYS * MMA_KEYS;
}
__device__ __forceinline__ int next_key_tile(const AttnDims& p, int i0, int j0) {
    const int lo = first_visible(i0, p.window) / MMA_KEYS * MMA_KEYS;
    return j0 + MMA_KEYS >= p.sinks && j0 + MMA_KEYS < lo ? lo : j0 + MMA_KEYS;
}
// The last query that sees some key of j0..j0+count-1.
__device__ __forceinline__ int last_query_of(const AttnDims& p, int j0, int count) {
    return j0 < p.sinks ? p.tokens - 1 : min(p.tokens - 1, j0 + count - 1 + p.window - 1);
}
// Calls f(j) for each key query i sees, in order. Without a surprise cache (cached = nullptr):
// the sinks, then the window. With one: the sinks, the query's cached tokens (its `slots`
// entries of kept [B, T, hkv, slots], -1 for an empty slot), then the window's recent part.
template <typename F> __device__ __forceinline__ void visit_keys(const AttnDims& p, int i, const int* cached, int slots, F&& f) {
    if (cached == nullptr) {
        for (int j = first_key(p, i); j <= i; j = next_key(p, i, j)) f(j);
        return;
    }
    const int n_sinks = min(p.sinks, i + 1), recent = max(p.sinks, first_visible(i, p.window));
    for (int j = 0; j < n_sinks; j++) f(j);
    for (int s = 0; s < slots; s++)
        if (cached[s] >= 0) f(cached[s]);
    for (int j = recent; j <= i; j++) f(j);
}
// A query row's cached tokens in kept (nullptr without a cache).
__device__ __forceinline__ const int* cached_of(const AttnDims& p, const int* kept, int slots, int b, int i, int kvh) {
    return kept == nullptr ? nullptr : kept + (((long long)b * p.tokens + i) * p.hkv + kvh) * slots;
}

// Whether query i sees key j of the key tile at j0. Without a surprise cache (runs = nullptr): by
// the window and the sinks. With one: by the key's run, j ..= runs[j - j0] - 1 (its window, then
// its time in the cache; `runs` holds the tile's entries of `until`, see surprise_select).
__device__ __forceinline__ bool tile_sees(const AttnDims& p, const int* runs, int j0, int i, int j) {
    return runs == nullptr ? sees(p, i, j) : j <= i && i < runs[j - j0];
}

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


// Forward: one warp per (b, i, h), online softmax over the visible keys (with a surprise cache
// `kept`, see visit_keys).
template <typename T>
__device__ void attention_forward_rows(AttnDims p, const T* q, const T* k, const T* v, const int* kept, int slots, T* o, float* lse) {
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
    const int lane = threadIdx.x & 31;
    visit_keys(p, i, cached_of(p, kept, slots, b, i, kvh), slots, [&](int j) {
        const float s = dot_row(qr, kb + j * kv_stride, p.d) * scale;
        const float m_new = fmaxf(m, s);
        const float correction = __expf(m - m_new), e = __expf(s - m_new);
        l = l * correction + e;
#pragma unroll
        for (int c = 0; c < MAX_PER_LANE; c++)
            if (c * 32 < p.d) acc[c] = acc[c] * correction + e * to_f32(vb[j * kv_stride + c * 32 + lane]);
        m = m_new;
    });
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

// Backward for dq: one warp per query row, over the keys it sees (with a surprise cache `kept`).
template <typename T>
__device__ void attention_dq_rows(AttnDims p, const T* q, const T* k, const T* v, const int* kept, int slots, const float* lse,
                                  const float* delta, const T* d_o, T* dq) {
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
    visit_keys(p, i, cached_of(p, kept, slots, b, i, kvh), slots, [&](int j) {
        const float prob = __expf(dot_row(qr, kb + j * kv_stride, p.d) * scale - row_lse);
        const float ds = prob * (dot_row(dor, vb + j * kv_stride, p.d) - row_delta) * scale;
#pragma unroll
        for (int c = 0; c < MAX_PER_LANE; c++)
            if (c * 32 < p.d) acc[c] += ds * to_f32(kb[j * kv_stride + c * 32 + lane]);
    });
    store_row(dq + row * p.d, p.d, acc);
}

// dK and dV of key row (b, j, kv head) (values kr, vr in the lanes' registers) over the queries
// first..last of its group, added to the lanes' dk_acc, dv_acc; every one of them sees the key.
template <typename T>
__device__ __forceinline__ void dkv_over_queries(const AttnDims& p, const T* q, const float* lse, const float* delta,
                                                 const T* d_o, int b, int kvh, int first, int last, const float* kr,
                                                 const float* vr, float* dk_acc, float* dv_acc) {
    const int group = p.hq / p.hkv, lane = threadIdx.x & 31;
    const float scale = rsqrtf((float)p.d);
    const long long q_stride = (long long)p.hq * p.d;
    for (int g = 0; g < group; g++) {
        const int h = kvh * group + g;
        const T* qb = q + (long long)b * p.tokens * q_stride + (long long)h * p.d;
        const T* dob = d_o + (long long)b * p.tokens * q_stride + (long long)h * p.d;
        const long long stat0 = ((long long)b * p.hq + h) * p.tokens;
        for (int i = first; i <= last; i++) {
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
}

// Backward for dk and dv: one warp per key row (b, j, kv head), over the queries of its group
// that see it (i in j ..= j + window - 1, or to the end for a sink).
template <typename T>
__device__ void attention_dkv_rows(AttnDims p, const T* q, const T* k, const T* v, const float* lse, const float* delta,
                                   const T* d_o, T* dk, T* dv) {
    const long long row = warp_row((long long)p.batch * p.tokens * p.hkv);
    if (row < 0) return;
    const int kvh = (int)(row % p.hkv), j = (int)((row / p.hkv) % p.tokens), b = (int)(row / ((long long)p.hkv * p.tokens));
    float kr[MAX_PER_LANE], vr[MAX_PER_LANE], dk_acc[MAX_PER_LANE], dv_acc[MAX_PER_LANE];
    load_row(k + row * p.d, p.d, kr);
    load_row(v + row * p.d, p.d, vr);
#pragma unroll
    for (int c = 0; c < MAX_PER_LANE; c++) dk_acc[c] = dv_acc[c] = 0.0f;
    // Every query j..last sees key j; window <= tokens, so no overflow.
    dkv_over_queries(p, q, lse, delta, d_o, b, kvh, j, last_query_of(p, j, 1), kr, vr, dk_acc, dv_acc);
    store_row(dk + row * p.d, p.d, dk_acc);
    store_row(dv + row * p.d, p.d, dv_acc);
}

// The same with a surprise cache: the queries that see token j are j ..= until[b, j, kv head] - 1
// (the window, then the cache: a token stays in its slot until it is replaced). A sink's or a
// long-kept token's run spans the sequence, so warps take RUN_CHUNK queries of a run each and
// add their sums into f32 accumulators dk_acc, dv_acc [B, T, hkv, d] (zeroed by the caller).
#define RUN_CHUNK 64
template <typename T>
__device__ void surprise_dkv_rows(AttnDims p, const T* q, const T* k, const T* v, const int* until, const float* lse,
                                  const float* delta, const T* d_o, float* dk_sum, float* dv_sum) {
    const int chunks = (p.tokens + RUN_CHUNK - 1) / RUN_CHUNK;
    const long long w = warp_row((long long)p.batch * p.tokens * p.hkv * chunks);
    if (w < 0) return;
    const long long row = w / chunks;
    const int kvh = (int)(row % p.hkv), j = (int)((row / p.hkv) % p.tokens), b = (int)(row / ((long long)p.hkv * p.tokens));
    const int first = j + (int)(w % chunks) * RUN_CHUNK, last = min(until[row], first + RUN_CHUNK) - 1;
    if (first > last) return;
    float kr[MAX_PER_LANE], vr[MAX_PER_LANE], dk_acc[MAX_PER_LANE], dv_acc[MAX_PER_LANE];
    load_row(k + row * p.d, p.d, kr);
    load_row(v + row * p.d, p.d, vr);
#pragma unroll
    for (int c = 0; c < MAX_PER_LANE; c++) dk_acc[c] = dv_acc[c] = 0.0f;
    dkv_over_queries(p, q, lse, delta, d_o, b, kvh, first, last, kr, vr, dk_acc, dv_acc);
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int c = 0; c < MAX_PER_LANE; c++) {
        if (c * 32 < p.d) {
            atomicAdd(dk_sum + row * p.d + c * 32 + lane, dk_acc[c]);
            atomicAdd(dv_sum + row * p.d + c * 32 + lane, dv_acc[c]);
        }
    }
}

// dk, dv (T) from the f32 sums of surprise_dkv.
template <typename T> __device__ void store_sums(const float* dk_sum, const float* dv_sum, T* dk, T* dv, long long n) {
    for (size_t idx = global_index(); idx < (size_t)n; idx += grid_stride()) {
        dk[idx] = from_f32<T>(dk_sum[idx]);
        dv[idx] = from_f32<T>(dv_sum[idx]);
    }
}

// Decoding: one block of DECODE_WARPS warps per (b, h); the first lengths[b] slots (with
// per_head: lengths[b * hkv + kv head], for caches whose heads hold different counts) of the
// sequence's cache [B, hkv, capacity, d] are its keys, in any order. Each warp takes chunks of
// 32 keys (a key per lane for the scores, then the lanes split d for P.V) with its own online
// softmax; the warps' partial results are merged at the end. An empty cache gives zeros.
#define DECODE_WARPS 4

template <typename T>
__device__ void attention_decode_rows(int batch, int hq, int hkv, int d, int capacity, const T* q_t, const T* k_cache,
                                      const T* v_cache, const u32* lengths, int per_head, T* o_t) {
    __shared__ float q_s[32 * MAX_PER_LANE];
    __shared__ float partial[DECODE_WARPS][32 * MAX_PER_LANE];
    __shared__ float warp_m[DECODE_WARPS], warp_l[DECODE_WARPS];
    const int h = blockIdx.x % hq, b = blockIdx.x / hq, kvh = h / (hq / hkv);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = (int)min(lengths[per_head ? b * hkv + kvh : b], (u32)capacity);
    const float scale = rsqrtf((float)d);
    const long long row = (long long)b * hq + h;
    for (int e = threadIdx.x; e < d; e += blockDim.x) q_s[e] = to_f32(q_t[row * d + e]);
    __syncthreads();
    const T* keys = k_cache + ((long long)b * hkv + kvh) * capacity * d;
    const T* values = v_cache + ((long long)b * hkv + kvh) * capacity * d;
    float acc[MAX_PER_LANE];
#pragma unroll
    for (int c = 0; c < MAX_PER_LANE; c++) acc[c] = 0.0f;
    float m = -POS_INFINITY, l = 0.0f;
    for (int j0 = warp * 32; j0 < n; j0 += DECODE_WARPS * 32) {
        const int j = j0 + lane;
        float s = -POS_INFINITY;
        if (j < n) {
            float dot = 0.0f;
            for (int e = 0; e < d; e++) dot += q_s[e] * to_f32(keys[(long long)j * d + e]);
            s = dot * scale;
        }
        const float m_new = fmaxf(m, warp_max(s));  // finite: lane 0's key is always valid
        const float correction = __expf(m - m_new), prob = j < n ? __expf(s - m_new) : 0.0f;
        l = l * correction + warp_sum(prob);
        m = m_new;
#pragma unroll
        for (int c = 0; c < MAX_PER_LANE; c++) acc[c] *= correction;
        const int count = min(32, n - j0);
        for (int jj = 0; jj < count; jj++) {
            const float pj = __shfl_sync(0xffffffffu, prob, jj);
            const T* value = values + (long long)(j0 + jj) * d;
#pragma unroll
            for (int c = 0; c < MAX_PER_LANE; c++)
                if (c * 32 < d) acc[c] += pj * to_f32(value[c * 32 + lane]);
        }
    }
#pragma unroll
    for (int c = 0; c < MAX_PER_LANE; c++)
        if (c * 32 < d) partial[warp][c * 32 + lane] = acc[c];
    if (lane == 0) warp_m[warp] = m, warp_l[warp] = l;
    __syncthreads();
    float m_all = -POS_INFINITY;
    for (int w = 0; w < DECODE_WARPS; w++) m_all = fmaxf(m_all, warp_m[w]);
    float weights[DECODE_WARPS], l_all = 0.0f;
    for (int w = 0; w < DECODE_WARPS; w++) {
        weights[w] = warp_l[w] > 0.0f ? __expf(warp_m[w] - m_all) : 0.0f;  // a warp without keys adds nothing
        l_all += warp_l[w] * weights[w];
    }
    const float inv = n > 0 ? 1.0f / l_all : 0.0f;
    for (int e = threadIdx.x; e < d; e += blockDim.x) {
        float out = 0.0f;
        for (int w = 0; w < DECODE_WARPS; w++) out += partial[w][e] * weights[w];
        o_t[row * d + e] = from_f32<T>(n > 0 ? out * inv : 0.0f);
    }
}

// Writes token t of sequence b (k_new/v_new [B, tokens, hkv, d], at position positions[b] + t)
// into its slot of the caches (cache_slot: the first `sinks` tokens for good, the others in a
// ring); a token that a later one of the same call would overwrite is skipped, so that no slot
// is written twice. tokens = 1 is the per-step append.
template <typename T>
__device__ void cache_write(int batch, int tokens, int hkv, int d, int capacity, int sinks, const T* k_new, const T* v_new,
                            const u32* positions, T* k_cache, T* v_cache) {
    const int ring = capacity - sinks;
    const size_t row = (size_t)hkv * d, n = (size_t)batch * tokens * row;
    for (size_t idx = global_index(); idx < n; idx += grid_stride()) {
        const int e = (int)(idx % d), kvh = (int)((idx / d) % hkv);
        const size_t bt = idx / row;
        const int t = (int)(bt % tokens), b = (int)(bt / tokens);
        const u32 pos = positions[b] + (u32)t;
        if (pos >= (u32)sinks && t < tokens - ring) continue;
        const size_t src = ((size_t)b * tokens + t) * row + (size_t)kvh * d + e;
        const size_t dst = (((size_t)b * hkv + kvh) * capacity + cache_slot(pos, sinks, capacity)) * d + e;
        k_cache[dst] = k_new[src];
        v_cache[dst] = v_new[src];
    }
}

// ---- bf16 forward on tensor cores -------------------------------------------------------------
// Flash-style: a block of 4 warps owns 64 queries of one (sequence, head); each warp 16 of them.
// Key tiles of 64 go through shared memory, skipping tiles outside
// every query's window (with a surprise cache: tiles whose keys all left before the block's
// first query, by `tile_until`, the largest `until` of each tile); scores and P.V use mma.sync m16n8k16 (bf16 in, fp32 accumulate), the
// softmax is online in fp32. Fragment layouts (g = lane / 4, t = lane % 4): A holds rows g and
// g + 8, columns 2t, 2t + 1 (+ 8); B holds column g, rows 2t, 2t + 1 (+ 8); C rows g, g + 8,
// columns 2t, 2t + 1. B fragments of row-major [k][n] tiles come from ldmatrix.trans.

#define MMA_ROWS 64

__device__ __forceinline__ u32 shared_address(const void* ptr) {
    u32 addr;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }\n" : "=r"(addr) : "l"(ptr));
    return addr;
}

// The B fragment of rows k0..k0+15, columns n0..n0+7 of a row-major [k][n] tile in shared memory.
template <int STRIDE>
__device__ __forceinline__ void b_fragment_trans(const unsigned short (*tile)[STRIDE], int k0, int n0, u32& b0, u32& b1) {
    const u32 addr = shared_address(&tile[k0 + (threadIdx.x & 15)][n0]);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(addr));
}

// The A fragment of rows (row_a, row_a + 8), columns c..c+15 of a global [rows][stride] matrix.
__device__ __forceinline__ void a_fragment_global(const unsigned short* base, long long stride, int row_a, int rows, int c, u32* a) {
    const int t2 = 2 * (threadIdx.x & 3), row_b = row_a + 8;
    a[0] = row_a < rows ? *(const u32*)(base + row_a * stride + c + t2) : 0u;
    a[1] = row_b < rows ? *(const u32*)(base + row_b * stride + c + t2) : 0u;
    a[2] = row_a < rows ? *(const u32*)(base + row_a * stride + c + t2 + 8) : 0u;
    a[3] = row_b < rows ? *(const u32*)(base + row_b * stride + c + t2 + 8) : 0u;
}

// Copies rows r0..r0+63 of a global [rows][stride] matrix (D columns) into a shared tile; zeros past `rows`.
template <int D>
__device__ __forceinline__ void load_tile(unsigned short (*tile)[D + 8], const unsigned short* base, long long stride, int r0, int rows) {
    for (int chunk = threadIdx.x; chunk < MMA_KEYS * D / 8; chunk += blockDim.x) {
        const int r = chunk / (D / 8), c = (chunk % (D / 8)) * 8;
        *(uint4*)&tile[r][c] = r0 + r < rows ? *(const uint4*)(base + (r0 + r) * stride + c) : make_uint4(0, 0, 0, 0);
    }
}

// The key tiles a block of queries from i0 reads: without a cache, those of its window and sinks;
// with one, every earlier tile that holds a key some query of the block still sees.
struct KeyTiles {
    const int* until;       // [B, T, hkv] for this (b, kv head) at token 0 (stride hkv), or nullptr
    const int* tile_until;  // [B, hkv, tiles] for this (b, kv head), or nullptr
    __device__ int first(const AttnDims& p, int i0) const { return until ? 0 : first_key_tile(p, i0); }
    __device__ int next(const AttnDims& p, int i0, int j0) const { return until ? j0 + MMA_KEYS : next_key_tile(p, i0, j0); }
    __device__ bool skip(int i0, int j0) const { return until && tile_until[j0 / MMA_KEYS] <= i0; }
    // The tile's runs into shared memory (call between the block's barriers); nullptr without a cache.
    __device__ const int* load_runs(const AttnDims& p, int j0, int* runs) const {
        if (!until) return nullptr;
        for (int r = threadIdx.x; r < MMA_KEYS; r += blockDim.x) runs[r] = j0 + r < p.tokens ? until[(long long)(j0 + r) * p.hkv] : 0;
        return runs;
    }
};
__device__ __forceinline__ KeyTiles key_tiles(const AttnDims& p, const int* until, const int* tile_until, int b, int kvh) {
    if (until == nullptr) return KeyTiles{nullptr, nullptr};
    const int tiles = (p.tokens + MMA_KEYS - 1) / MMA_KEYS;
    return KeyTiles{until + (long long)b * p.tokens * p.hkv + kvh, tile_until + ((long long)b * p.hkv + kvh) * tiles};
}

template <int D>
__device__ void attention_forward_mma(AttnDims p, const bf16* q, const bf16* k, const bf16* v, const int* until,
                                      const int* tile_until, bf16* o, float* lse) {
    __shared__ __align__(16) unsigned short ks[MMA_KEYS][D + 8];   // padded rows: no bank conflicts
    __shared__ __align__(16) unsigned short vs[MMA_KEYS][D + 8];
    __shared__ int tile_runs[MMA_KEYS];
    // The last query tiles see the most keys: start them first.
    const int i0 = (gridDim.x - 1 - blockIdx.x) * MMA_ROWS, h = blockIdx.y, b = blockIdx.z, kvh = h / (p.hq / p.hkv);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const float scale_log2 = rsqrtf((float)D) * 1.4426950408889634f;
    const long long q_stride = (long long)p.hq * D, kv_stride = (long long)p.hkv * D;

    // This warp's 16 query rows as A fragments, one per 16 columns of d.
    u32 qa[D / 16][4];
    const int row_a = i0 + warp * 16 + g, row_b = row_a + 8;
    const unsigned short* q_base = (const unsigned short*)q + ((long long)b * p.tokens) * q_stride + (long long)h * D;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        const int c = kk * 16 + 2 * t;
        qa[kk][0] = row_a < p.tokens ? *(const u32*)(q_base + row_a * q_stride + c) : 0u;
        qa[kk][1] = row_b < p.tokens ? *(const u32*)(q_base + row_b * q_stride + c) : 0u;
        qa[kk][2] = row_a < p.tokens ? *(const u32*)(q_base + row_a * q_stride + c + 8) : 0u;
        qa[kk][3] = row_b < p.tokens ? *(const u32*)(q_base + row_b * q_stride + c + 8) : 0u;
    }
    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    float m[2] = {-POS_INFINITY, -POS_INFINITY}, l[2] = {0.0f, 0.0f};

    const int last_row = min(p.tokens - 1, i0 + MMA_ROWS - 1);
    const unsigned short* k_base = (const unsigned short*)k + (long long)b * p.tokens * kv_stride + (long long)kvh * D;
    const unsigned short* v_base = (const unsigned short*)v + (long long)b * p.tokens * kv_stride + (long long)kvh * D;
    const KeyTiles tiles = key_tiles(p, until, tile_until, b, kvh);
    for (int j0 = tiles.first(p, i0); j0 <= last_row; j0 = tiles.next(p, i0, j0)) {
        if (tiles.skip(i0, j0)) continue;
        __syncthreads();  // the previous tile is no longer read
        load_tile<D>(ks, k_base, kv_stride, j0, p.tokens);
        load_tile<D>(vs, v_base, kv_stride, j0, p.tokens);
        const int* runs = tiles.load_runs(p, j0, tile_runs);
        __syncthreads();

        float s[MMA_KEYS / 8][4];
#pragma unroll
        for (int n = 0; n < MMA_KEYS / 8; n++) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                const u32 b0 = *(const u32*)&ks[n * 8 + g][kk * 16 + 2 * t];
                const u32 b1 = *(const u32*)&ks[n * 8 + g][kk * 16 + 2 * t + 8];
                mma_bf16(s[n], qa[kk], b0, b1);
            }
        }
        // Scale, mask to each query's window, and the online softmax update (base 2).
        float tile_max[2] = {-POS_INFINITY, -POS_INFINITY};
#pragma unroll
        for (int n = 0; n < MMA_KEYS / 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = e < 2 ? row_a : row_b, j = j0 + n * 8 + 2 * t + (e & 1);
                s[n][e] = tile_sees(p, runs, j0, i, j) ? s[n][e] * scale_log2 : -POS_INFINITY;
                tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[n][e]);
            }
        }
        float correction[2], reference[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
            const float m_new = fmaxf(m[r], tile_max[r]);
            reference[r] = m_new == -POS_INFINITY ? 0.0f : m_new;  // a row with nothing visible yet
            correction[r] = exp2f(m[r] - reference[r]);
            m[r] = m_new;
            l[r] *= correction[r];
        }
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            acc[n][0] *= correction[0], acc[n][1] *= correction[0];
            acc[n][2] *= correction[1], acc[n][3] *= correction[1];
        }
        u32 pa[MMA_KEYS / 16][4];
#pragma unroll
        for (int n = 0; n < MMA_KEYS / 8; n++) {
            const float p0 = exp2f(s[n][0] - reference[0]), p1 = exp2f(s[n][1] - reference[0]);
            const float p2 = exp2f(s[n][2] - reference[1]), p3 = exp2f(s[n][3] - reference[1]);
            l[0] += p0 + p1;
            l[1] += p2 + p3;
            pa[n / 2][(n & 1) * 2] = pack_bf16(p0, p1);
            pa[n / 2][(n & 1) * 2 + 1] = pack_bf16(p2, p3);
        }
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
#pragma unroll
            for (int kk = 0; kk < MMA_KEYS / 16; kk++) {
                u32 b0, b1;
                b_fragment_trans<D + 8>(vs, kk * 16, n * 8, b0, b1);
                mma_bf16(acc[n], pa[kk], b0, b1);
            }
        }
    }
    // Finish the row sums across the 4 threads of each row; write O and the log-sum-exp.
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    unsigned short* o_base = (unsigned short*)o + ((long long)b * p.tokens) * q_stride + (long long)h * D;
    const float inv_a = 1.0f / l[0], inv_b = 1.0f / l[1];
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        const int c = n * 8 + 2 * t;
        if (row_a < p.tokens) *(u32*)(o_base + row_a * q_stride + c) = pack_bf16(acc[n][0] * inv_a, acc[n][1] * inv_a);
        if (row_b < p.tokens) *(u32*)(o_base + row_b * q_stride + c) = pack_bf16(acc[n][2] * inv_b, acc[n][3] * inv_b);
    }
    if (t == 0) {
        float* lse_row = lse + ((long long)b * p.hq + h) * p.tokens;
        if (row_a < p.tokens) lse_row[row_a] = (m[0] + __log2f(l[0])) * 0.6931471805599453f;
        if (row_b < p.tokens) lse_row[row_b] = (m[1] + __log2f(l[1])) * 0.6931471805599453f;
    }
}

#define MMA_FORWARD_ENTRY_POINTS(D)                                                                                     \
    extern "C" __global__ void __launch_bounds__(128)                                                                   \
        attention_forward_mma_d##D(AttnDims p, const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse) {      \
        attention_forward_mma<D>(p, q, k, v, nullptr, nullptr, o, lse);                                                 \
    }                                                                                                                   \
    extern "C" __global__ void __launch_bounds__(128)                                                                   \
        surprise_attention_mma_d##D(AttnDims p, const bf16* q, const bf16* k, const bf16* v, const int* until,          \
                                    const int* tile_until, bf16* o, float* lse) {                                       \
        attention_forward_mma<D>(p, q, k, v, until, tile_until, o, lse);                                                \
    }

MMA_FORWARD_ENTRY_POINTS(64)
MMA_FORWARD_ENTRY_POINTS(128)

// ---- bf16 backward on tensor cores ------------------------------------------------------------
// dK, dV: a block owns 64 keys of one (sequence, kv head), 16 per warp, and walks the query
// tiles (of every head of its group) that see them; dQ: a block owns 64 queries, like the
// forward. Probabilities come back from the forward's log-sum-exp; delta = rowsum(dO * O)
// is the attention_delta kernel's.

template <int D>
__device__ void attention_dkv_mma(AttnDims p, const bf16* q, const bf16* k, const bf16* v, const int* until,
                                  const int* tile_until, const float* lse, const float* delta, const bf16* d_o, bf16* dk,
                                  bf16* dv) {
    __shared__ __align__(16) unsigned short qs[MMA_ROWS][D + 8];
    __shared__ __align__(16) unsigned short dos[MMA_ROWS][D + 8];
    __shared__ float lse2[MMA_ROWS], row_delta[MMA_ROWS];
    const int j0 = blockIdx.x * MMA_KEYS, kvh = blockIdx.y, b = blockIdx.z, group = p.hq / p.hkv;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const float scale = rsqrtf((float)D), scale_log2 = scale * 1.4426950408889634f;
    const long long q_stride = (long long)p.hq * D, kv_stride = (long long)p.hkv * D;
    const int key_a = j0 + warp * 16 + g, key_b = key_a + 8;
    const unsigned short* k_base = (const unsigned short*)k + (long long)b * p.tokens * kv_stride + (long long)kvh * D;
    const unsigned short* v_base = (const unsigned short*)v + (long long)b * p.tokens * kv_stride + (long long)kvh * D;
    float dk_acc[D / 8][4], dv_acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk_acc[n][e] = dv_acc[n][e] = 0.0f;
    // With a surprise cache, the queries that see each of this warp's keys are its run (see tile_sees).
    const KeyTiles tiles = key_tiles(p, until, tile_until, b, kvh);
    const int run_a = tiles.until && key_a < p.tokens ? tiles.until[(long long)key_a * p.hkv] : 0;
    const int run_b = tiles.until && key_b < p.tokens ? tiles.until[(long long)key_b * p.hkv] : 0;
    const int last_query = tiles.until ? tiles.tile_until[blockIdx.x] - 1 : last_query_of(p, j0, MMA_KEYS);
    for (int gh = 0; gh < group; gh++) {
        const int h = kvh * group + gh;
        const unsigned short* q_base = (const unsigned short*)q + (long long)b * p.tokens * q_stride + (long long)h * D;
        const unsigned short* do_base = (const unsigned short*)d_o + (long long)b * p.tokens * q_stride + (long long)h * D;
        const long long stat0 = ((long long)b * p.hq + h) * p.tokens;
        for (int i0 = j0; i0 <= last_query; i0 += MMA_ROWS) {
            __syncthreads();
            load_tile<D>(qs, q_base, q_stride, i0, p.tokens);
            load_tile<D>(dos, do_base, q_stride, i0, p.tokens);
            for (int r = threadIdx.x; r < MMA_ROWS; r += blockDim.x) {
                const bool live = i0 + r < p.tokens;
                lse2[r] = live ? lse[stat0 + i0 + r] * 1.4426950408889634f : POS_INFINITY;
                row_delta[r] = live ? delta[stat0 + i0 + r] : 0.0f;
            }
            __syncthreads();
            // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys x 64 queries.
            float s[MMA_ROWS / 8][4], dp[MMA_ROWS / 8][4];
#pragma unroll
            for (int n = 0; n < MMA_ROWS / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[n][e] = dp[n][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                u32 ka[4], va[4];
                a_fragment_global(k_base, kv_stride, key_a, p.tokens, kk * 16, ka);
                a_fragment_global(v_base, kv_stride, key_a, p.tokens, kk * 16, va);
#pragma unroll
                for (int n = 0; n < MMA_ROWS / 8; n++) {
                    mma_bf16(s[n], ka, *(const u32*)&qs[n * 8 + g][kk * 16 + 2 * t], *(const u32*)&qs[n * 8 + g][kk * 16 + 2 * t + 8]);
                    mma_bf16(dp[n], va, *(const u32*)&dos[n * 8 + g][kk * 16 + 2 * t], *(const u32*)&dos[n * 8 + g][kk * 16 + 2 * t + 8]);
                }
            }
            u32 pa[MMA_ROWS / 16][4], dsa[MMA_ROWS / 16][4];
#pragma unroll
            for (int n = 0; n < MMA_ROWS / 8; n++) {
                float pr[4], ds[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = e < 2 ? key_a : key_b, r = n * 8 + 2 * t + (e & 1), i = i0 + r;
                    const bool seen = tiles.until ? key <= i && i < (e < 2 ? run_a : run_b) : sees(p, i, key);
                    const bool visible = seen && i < p.tokens;
                    pr[e] = visible ? exp2f(s[n][e] * scale_log2 - lse2[r]) : 0.0f;
                    ds[e] = pr[e] * (dp[n][e] - row_delta[r]) * scale;
                }
                pa[n / 2][(n & 1) * 2] = pack_bf16(pr[0], pr[1]);
                pa[n / 2][(n & 1) * 2 + 1] = pack_bf16(pr[2], pr[3]);
                dsa[n / 2][(n & 1) * 2] = pack_bf16(ds[0], ds[1]);
                dsa[n / 2][(n & 1) * 2 + 1] = pack_bf16(ds[2], ds[3]);
            }
            // dV += P^T dO, dK += dS^T Q.
#pragma unroll
            for (int n = 0; n < D / 8; n++) {
#pragma unroll
                for (int kk = 0; kk < MMA_ROWS / 16; kk++) {
                    u32 b0, b1;
                    b_fragment_trans<D + 8>(dos, kk * 16, n * 8, b0, b1);
                    mma_bf16(dv_acc[n], pa[kk], b0, b1);
                    b_fragment_trans<D + 8>(qs, kk * 16, n * 8, b0, b1);
                    mma_bf16(dk_acc[n], dsa[kk], b0, b1);
                }
            }
        }
    }
    unsigned short* dk_base = (unsigned short*)dk + (long long)b * p.tokens * kv_stride + (long long)kvh * D;
    unsigned short* dv_base = (unsigned short*)dv + (long long)b * p.tokens * kv_stride + (long long)kvh * D;
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        const int c = n * 8 + 2 * t;
        if (key_a < p.tokens) {
            *(u32*)(dk_base + key_a * kv_stride + c) = pack_bf16(dk_acc[n][0], dk_acc[n][1]);
            *(u32*)(dv_base + key_a * kv_stride + c) = pack_bf16(dv_acc[n][0], dv_acc[n][1]);
        }
        if (key_b < p.tokens) {
            *(u32*)(dk_base + key_b * kv_stride + c) = pack_bf16(dk_acc[n][2], dk_acc[n][3]);
            *(u32*)(dv_base + key_b * kv_stride + c) = pack_bf16(dv_acc[n][2], dv_acc[n][3]);
        }
    }
}

template <int D>
__device__ void attention_dq_mma(AttnDims p, const bf16* q, const bf16* k, const bf16* v, const int* until,
                                 const int* tile_until, const float* lse, const float* delta, const bf16* d_o, bf16* dq) {
    __shared__ __align__(16) unsigned short ks[MMA_KEYS][D + 8];
    __shared__ __align__(16) unsigned short vs[MMA_KEYS][D + 8];
    __shared__ int tile_runs[MMA_KEYS];
    // The last query tiles see the most keys: start them first.
    const int i0 = (gridDim.x - 1 - blockIdx.x) * MMA_ROWS, h = blockIdx.y, b = blockIdx.z, kvh = h / (p.hq / p.hkv);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const float scale = rsqrtf((float)D), scale_log2 = scale * 1.4426950408889634f;
    const long long q_stride = (long long)p.hq * D, kv_stride = (long long)p.hkv * D;
    const int row_a = i0 + warp * 16 + g, row_b = row_a + 8;
    const unsigned short* q_base = (const unsigned short*)q + (long long)b * p.tokens * q_stride + (long long)h * D;
    const unsigned short* do_base = (const unsigned short*)d_o + (long long)b * p.tokens * q_stride + (long long)h * D;
    u32 qa[D / 16][4], doa[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        a_fragment_global(q_base, q_stride, row_a, p.tokens, kk * 16, qa[kk]);
        a_fragment_global(do_base, q_stride, row_a, p.tokens, kk * 16, doa[kk]);
    }
    const long long stat0 = ((long long)b * p.hq + h) * p.tokens;
    const float lse_a = row_a < p.tokens ? lse[stat0 + row_a] * 1.4426950408889634f : 0.0f;
    const float lse_b = row_b < p.tokens ? lse[stat0 + row_b] * 1.4426950408889634f : 0.0f;
    const float delta_a = row_a < p.tokens ? delta[stat0 + row_a] : 0.0f;
    const float delta_b = row_b < p.tokens ? delta[stat0 + row_b] : 0.0f;
    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    const int last_row = min(p.tokens - 1, i0 + MMA_ROWS - 1);
    const unsigned short* k_base = (const unsigned short*)k + (long long)b * p.tokens * kv_stride + (long long)kvh * D;
    const unsigned short* v_base = (const unsigned short*)v + (long long)b * p.tokens * kv_stride + (long long)kvh * D;
    const KeyTiles tiles = key_tiles(p, until, tile_until, b, kvh);
    for (int j0 = tiles.first(p, i0); j0 <= last_row; j0 = tiles.next(p, i0, j0)) {
        if (tiles.skip(i0, j0)) continue;
        __syncthreads();
        load_tile<D>(ks, k_base, kv_stride, j0, p.tokens);
        load_tile<D>(vs, v_base, kv_stride, j0, p.tokens);
        const int* runs = tiles.load_runs(p, j0, tile_runs);
        __syncthreads();
        float s[MMA_KEYS / 8][4], dp[MMA_KEYS / 8][4];
#pragma unroll
        for (int n = 0; n < MMA_KEYS / 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) s[n][e] = dp[n][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                mma_bf16(s[n], qa[kk], *(const u32*)&ks[n * 8 + g][kk * 16 + 2 * t], *(const u32*)&ks[n * 8 + g][kk * 16 + 2 * t + 8]);
                mma_bf16(dp[n], doa[kk], *(const u32*)&vs[n * 8 + g][kk * 16 + 2 * t], *(const u32*)&vs[n * 8 + g][kk * 16 + 2 * t + 8]);
            }
        }
        u32 dsa[MMA_KEYS / 16][4];
#pragma unroll
        for (int n = 0; n < MMA_KEYS / 8; n++) {
            float ds[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = e < 2 ? row_a : row_b, j = j0 + n * 8 + 2 * t + (e & 1);
                const float pr = tile_sees(p, runs, j0, i, j) ? exp2f(s[n][e] * scale_log2 - (e < 2 ? lse_a : lse_b)) : 0.0f;
                ds[e] = pr * (dp[n][e] - (e < 2 ? delta_a : delta_b)) * scale;
            }
            dsa[n / 2][(n & 1) * 2] = pack_bf16(ds[0], ds[1]);
            dsa[n / 2][(n & 1) * 2 + 1] = pack_bf16(ds[2], ds[3]);
        }
        // dQ += dS K.
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
#pragma unroll
            for (int kk = 0; kk < MMA_KEYS / 16; kk++) {
                u32 b0, b1;
                b_fragment_trans<D + 8>(ks, kk * 16, n * 8, b0, b1);
                mma_bf16(acc[n], dsa[kk], b0, b1);
            }
        }
    }
    unsigned short* dq_base = (unsigned short*)dq + (long long)b * p.tokens * q_stride + (long long)h * D;
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        const int c = n * 8 + 2 * t;
        if (row_a < p.tokens) *(u32*)(dq_base + row_a * q_stride + c) = pack_bf16(acc[n][0], acc[n][1]);
        if (row_b < p.tokens) *(u32*)(dq_base + row_b * q_stride + c) = pack_bf16(acc[n][2], acc[n][3]);
    }
}

#define MMA_BACKWARD_ENTRY_POINTS(D)                                                                                    \
    extern "C" __global__ void __launch_bounds__(128)                                                                   \
        attention_dkv_mma_d##D(AttnDims p, const bf16* q, const bf16* k, const bf16* v, const float* lse,              \
                               const float* delta, const bf16* d_o, bf16* dk, bf16* dv) {                               \
        attention_dkv_mma<D>(p, q, k, v, nullptr, nullptr, lse, delta, d_o, dk, dv);                                    \
    }                                                                                                                   \
    extern "C" __global__ void __launch_bounds__(128)                                                                   \
        attention_dq_mma_d##D(AttnDims p, const bf16* q, const bf16* k, const bf16* v, const float* lse,               \
                              const float* delta, const bf16* d_o, bf16* dq) {                                          \
        attention_dq_mma<D>(p, q, k, v, nullptr, nullptr, lse, delta, d_o, dq);                                         \
    }                                                                                                                   \
    extern "C" __global__ void __launch_bounds__(128)                                                                   \
        surprise_dkv_mma_d##D(AttnDims p, const bf16* q, const bf16* k, const bf16* v, const int* until,               \
                              const int* tile_until, const float* lse, const float* delta, const bf16* d_o, bf16* dk,   \
                              bf16* dv) {                                                                               \
        attention_dkv_mma<D>(p, q, k, v, until, tile_until, lse, delta, d_o, dk, dv);                                   \
    }                                                                                                                   \
    extern "C" __global__ void __launch_bounds__(128)                                                                   \
        surprise_dq_mma_d##D(AttnDims p, const bf16* q, const bf16* k, const bf16* v, const int* until,                \
                             const int* tile_until, const float* lse, const float* delta, const bf16* d_o, bf16* dq) {  \
        attention_dq_mma<D>(p, q, k, v, until, tile_until, lse, delta, d_o, dq);                                        \
    }

MMA_BACKWARD_ENTRY_POINTS(64)
MMA_BACKWARD_ENTRY_POINTS(128)

// ---- The surprise cache (CPU twin: liger::surprise) -------------------------------------------
// k [rows, hkv, d] repeated over each key-value head's query heads: kq [rows, hq, d], so that the
// recurrent branch reads its state out with the keys as queries.
extern "C" __global__ void keys_as_queries_f32(const float* k, float* kq, long long rows, int hq, int hkv, int d) {
    const int group = hq / hkv;
    for (size_t idx = global_index(); idx < (size_t)rows * hq * d; idx += grid_stride()) {
        const int e = (int)(idx % d), h = (int)((idx / d) % hq);
        const size_t r = idx / ((size_t)hq * d);
        kq[idx] = k[(r * hkv + h / group) * d + e];
    }
}

// Surprise of each token: the mean over a key-value head's query heads of |v - n / (den + eps)|^2,
// where n and den are the recurrent branch read out with the token's key as the query (over the
// values and over values of one). n, den [rows, hq, d]; v [rows, hkv, d]; scores [rows, hkv].
extern "C" __global__ void surprise_scores_f32(const float* n, const float* den, const float* v, float* scores,
                                               long long rows, int hq, int hkv, int d, float eps) {
    const int group = hq / hkv;
    for (size_t idx = global_index(); idx < (size_t)rows * hkv; idx += grid_stride()) {
        const size_t r = idx / hkv;
        const int kvh = (int)(idx % hkv);
        const float* vr = v + idx * d;
        float total = 0.0f;
        for (int h = kvh * group; h < (kvh + 1) * group; h++) {
            const size_t q = (r * hq + h) * d;
            float err = 0.0f;
            for (int e = 0; e < d; e++) {
                const float miss = vr[e] - n[q + e] / (den[q + e] + eps);
                err += miss * miss;
            }
            total += err / group;
        }
        scores[idx] = total;
    }
}

// The cache's contents before each query, by running its rule token by token: one block per
// (sequence, key-value head). Token j leaves the window at query j + window; if it is no sink it
// takes a free slot, or else replaces the first slot of lowest score when its own is higher,
// unless its value v [B, T, hkv, d] repeats one the cache holds (the repeat rule, at `tolerance`).
// Without the rule the block is one warp. With it, the held values sit in dynamic shared memory,
// [slots + 1, d + 1] floats (the last row the offered token's value), and the block's threads
// each compare their own slots: the comparisons, d multiply-adds per slot, are what a token costs,
// so they are spread over SELECT_THREADS threads (the padding keeps 32 consecutive slots on
// distinct banks). Every thread follows the same decisions; thread 0 writes them.
// kept [B, T, hkv, slots]: the token in each slot while query t attends (-1: empty).
// until [B, T, hkv]: the first query that no longer sees the token (through the window, the
// sinks or the cache). tile_until [B, hkv, ceil(T / 64)]: the largest `until` of each tile of 64
// tokens (the tensor-core kernels' key tiles). slot_token, slot_score [B, hkv, slots]: scratch.
extern "C" __global__ void surprise_select(const float* scores, const float* v, int batch, int tokens, int hkv, int d,
                                           int window, int sinks, int slots, double tolerance, int* slot_token,
                                           float* slot_score, int* kept, int* until, int* tile_until) {
    extern __shared__ float held_values[];
    const int stride = d + 1;
    const long long w = blockIdx.x;
    if (w >= (long long)batch * hkv) return;
    const int tid = threadIdx.x, threads = blockDim.x, lane = tid & 31, b = (int)(w / hkv), kvh = (int)(w % hkv);
    int* tok = slot_token + w * slots;
    float* sc = slot_score + w * slots;
    float* offered = held_values + slots * stride;
    int* gone = until + (long long)b * tokens * hkv + kvh;  // token j's entry: gone[j * hkv]
    for (int j = tid; j < tokens; j += threads) gone[(long long)j * hkv] = j < sinks ? tokens : min(tokens, j + window);
    __syncthreads();
    int used = 0;
    for (int i = 0; i < tokens; i++) {
        const int j = i - window;
        if (j >= sinks) {
            const float s = scores[((long long)b * tokens + j) * hkv + kvh];
            int at = used;  // the slot the token takes (-1: none)
            if (used == slots) {
                // The first slot of lowest score: min over (score, slot) pairs, in every warp.
                float best = POS_INFINITY;
                at = slots;
                for (int c = lane; c < slots; c += 32)
                    if (sc[c] < best) best = sc[c], at = c;
                for (int off = 16; off > 0; off >>= 1) {
                    const float ob = __shfl_xor_sync(0xffffffffu, best, off);
                    const int oa = __shfl_xor_sync(0xffffffffu, at, off);
                    if (ob < best || (ob == best && oa < at)) best = ob, at = oa;
                }
                if (!(s > best)) at = -1;
            }
            if (tolerance > 0.0 && at >= 0) {
                const float* value = v + (((long long)b * tokens + j) * hkv + kvh) * d;
                for (int e = tid; e < d; e += threads) offered[e] = value[e];
                __syncthreads();
                bool hit = false;
                for (int c = tid; c < used && !hit; c += threads) hit = repeats_one(offered, held_values + c * stride, d, tolerance);
                if (__syncthreads_or(hit)) at = -1;
                if (at >= 0)
                    for (int e = tid; e < d; e += threads) held_values[at * stride + e] = offered[e];
            }
            if (tid == 0 && at >= 0) {
                if (at < used) gone[(long long)tok[at] * hkv] = i;
                gone[(long long)j * hkv] = tokens;
                tok[at] = j;
                sc[at] = s;
            }
            if (at == used) used++;
            __syncthreads();  // the new slot's token, score and value, before any thread reads them
        }
        int* out = kept + (((long long)b * tokens + i) * hkv + kvh) * slots;
        for (int c = tid; c < slots; c += threads) out[c] = c < used ? tok[c] : -1;
        __syncthreads();  // every thread has read the slots before thread 0 next writes them
    }
    const int tiles = (tokens + MMA_KEYS - 1) / MMA_KEYS;
    for (int tile = tid; tile < tiles; tile += threads) {
        int last = 0;
        for (int j = tile * MMA_KEYS; j < min(tokens, (tile + 1) * MMA_KEYS); j++) last = max(last, gone[(long long)j * hkv]);
        tile_until[w * tiles + tile] = last;
    }
}

#define ATTENTION_ENTRY_POINTS(T, SUFFIX)                                                                                  \
    extern "C" __global__ void attention_forward_##SUFFIX(AttnDims p, const T* q, const T* k, const T* v, T* o,         \
                                                          float* lse) {                                                 \
        attention_forward_rows<T>(p, q, k, v, nullptr, 0, o, lse);                                                                  \
    }                                                                                                                   \
    extern "C" __global__ void attention_delta_##SUFFIX(AttnDims p, const T* o, const T* d_o, float* delta) {           \
        attention_delta_rows<T>(p, o, d_o, delta);                                                                      \
    }                                                                                                                   \
    extern "C" __global__ void attention_dq_##SUFFIX(AttnDims p, const T* q, const T* k, const T* v, const float* lse,  \
                                                     const float* delta, const T* d_o, T* dq) {                         \
        attention_dq_rows<T>(p, q, k, v, nullptr, 0, lse, delta, d_o, dq);                                                          \
    }                                                                                                                   \
    extern "C" __global__ void attention_dkv_##SUFFIX(AttnDims p, const T* q, const T* k, const T* v, const float* lse, \
                                                      const float* delta, const T* d_o, T* dk, T* dv) {                 \
        attention_dkv_rows<T>(p, q, k, v, lse, delta, d_o, dk, dv);                                                     \
    }                                                                                                                   \
    extern "C" __global__ void attention_decode_##SUFFIX(int batch, int hq, int hkv, int d, int capacity, const T* q_t, \
                                                         const T* k_cache, const T* v_cache, const u32* lengths,        \
                                                         int per_head, T* o_t) {                                        \
        attention_decode_rows<T>(batch, hq, hkv, d, capacity, q_t, k_cache, v_cache, lengths, per_head, o_t);           \
    }                                                                                                                   \
    extern "C" __global__ void cache_write_##SUFFIX(int batch, int tokens, int hkv, int d, int capacity, int sinks,     \
                                                    const T* k_new, const T* v_new, const u32* positions, T* k_cache,   \
                                                    T* v_cache) {                                                       \
        cache_write<T>(batch, tokens, hkv, d, capacity, sinks, k_new, v_new, positions, k_cache, v_cache);              \
    }                                                                                                                   \
    extern "C" __global__ void surprise_attention_##SUFFIX(AttnDims p, int slots, const T* q, const T* k, const T* v,   \
                                                           const int* kept, T* o, float* lse) {                         \
        attention_forward_rows<T>(p, q, k, v, kept, slots, o, lse);                                                     \
    }                                                                                                                   \
    extern "C" __global__ void surprise_dq_##SUFFIX(AttnDims p, int slots, const T* q, const T* k, const T* v,          \
                                                    const int* kept, const float* lse, const float* delta,              \
                                                    const T* d_o, T* dq) {                                              \
        attention_dq_rows<T>(p, q, k, v, kept, slots, lse, delta, d_o, dq);                                             \
    }                                                                                                                   \
    extern "C" __global__ void surprise_dkv_##SUFFIX(AttnDims p, const T* q, const T* k, const T* v, const int* until,  \
                                                     const float* lse, const float* delta, const T* d_o, float* dk_sum, \
                                                     float* dv_sum) {                                                   \
        surprise_dkv_rows<T>(p, q, k, v, until, lse, delta, d_o, dk_sum, dv_sum);                                       \
    }                                                                                                                   \
    extern "C" __global__ void surprise_dkv_store_##SUFFIX(const float* dk_sum, const float* dv_sum, T* dk, T* dv,      \
                                                           long long n) {                                               \
        store_sums<T>(dk_sum, dv_sum, dk, dv, n);                                                                       \
    }

ATTENTION_ENTRY_POINTS(float, f32)
ATTENTION_ENTRY_POINTS(bf16, bf16)
