// The gated recurrent mixers (every Liger mixer but GSA) on the GPU, in three kinds of kernel:
//
// 1. Feature maps, one warp per row (a token's head, d <= 128): queries -> softmax, keys ->
//    key features and decays exp(log-gate) per mixer kind, values and output gradients -> f32.
// 2. The gated scan, one CTA per (sequence, key-value head, block of 32 state columns), the
//    fp32 state slice in registers for the whole sequence:
//        X_t = decay_t (.) X_{t-1} + sum_u x_u^T y_u        out_h = w_h X_t
//    The forward is rows = key dims, columns = value dims, decay along rows (exp of the
//    log-gate, always <= 1, so nothing overflows; tiles of tokens are copied in asynchronously,
//    the next while the current one is computed), x = kf, y = v, w = qf of each query head
//    of the group. The backward runs the same loop three more times: dqf forward with the
//    state transposed (decay along columns), and the state gradient backward in time in both
//    orientations for dv and dkf (see mixer.rs).
// 3. Backward finishing: the log-gate gradient (a reverse cumulative sum over time, in pieces
//    of 64 tokens, then a carry across pieces), then the feature-map backward of queries and
//    keys (one warp per row). Decoding steps apply the feature maps inside the scan CTA.
//
// Mixer kinds (MixerKind on the host): 0 gla, 1 hgrn2, 2 retention, 3 mamba2, 4 rwkv6, 5 linear.

#define KIND_GLA 0
#define KIND_HGRN2 1
#define KIND_RETENTION 2
#define KIND_MAMBA2 3
#define KIND_RWKV6 4
#define KIND_LINEAR 5

// Most values per lane of a warp-per-row kernel: rows of at most 128.
#define ROW_SLOTS 4
// Warps of a scan CTA: one per 16 state rows (4 for head sizes up to 64, 8 up to 128), so
// that an SM holds more warps to hide the latency of shared memory and shuffles.
#define SCAN_WARPS(ROWS) ((ROWS) / 16)

// Loads one row of d values (lane i holds elements lane + 32 i), missing ones as `fill`.
template <typename T> __device__ __forceinline__ void load_row(const T* x, int d, float fill, float (&r)[ROW_SLOTS]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < ROW_SLOTS; ++i) {
        const int col = lane + 32 * i;
        r[i] = col < d ? to_f32(x[col]) : fill;
    }
}

// softmax of a row held as load_row leaves it (padding -inf gives 0).
__device__ __forceinline__ void softmax_row(float (&r)[ROW_SLOTS]) {
    float m = -POS_INFINITY;
#pragma unroll
    for (int i = 0; i < ROW_SLOTS; ++i) m = fmaxf(m, r[i]);
    m = warp_max(m);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < ROW_SLOTS; ++i) {
        r[i] = expf(r[i] - m);
        s += r[i];
    }
    const float inv = 1.0f / warp_sum(s);
#pragma unroll
    for (int i = 0; i < ROW_SLOTS; ++i) r[i] *= inv;
}

template <typename T> __device__ __forceinline__ void store_row(T* y, int d, const float (&r)[ROW_SLOTS]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < ROW_SLOTS; ++i) {
        const int col = lane + 32 * i;
        if (col < d) y[col] = from_f32<T>(r[i]);
    }
}

// qf = softmax(q) of one query row, into `qf` (global or shared memory). Whole warp.
template <typename T> __device__ __forceinline__ void query_features_row(const T* q, float* qf, int d) {
    float r[ROW_SLOTS];
    load_row(q, d, -POS_INFINITY, r);
    softmax_row(r);
    store_row(qf, d, r);
}

// The key features and the decay exp(log-gate) of one key row per `kind`. Whole warp.
template <typename T> __device__ __forceinline__ void key_features_row(const T* k, float* kf, float* decay, int d, int kind, float gate_scale) {
    float x[ROW_SLOTS], gate[ROW_SLOTS], r[ROW_SLOTS];
    load_row(k, d, 0.0f, x);
    const float mean = warp_sum(x[0] + x[1] + x[2] + x[3]) / (float)d;
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < ROW_SLOTS; ++i) {
        const bool in_row = lane + 32 * i < d;
        r[i] = in_row ? x[i] : -POS_INFINITY;  // softmax input
        switch (kind) {
            case KIND_GLA: gate[i] = log_sigmoid_f(x[i]) * gate_scale; break;
            case KIND_HGRN2: gate[i] = log_sigmoid_f(x[i]); break;
            case KIND_RETENTION: gate[i] = log_sigmoid_f(mean); break;
            case KIND_MAMBA2: gate[i] = -softplus_f(mean); break;
            case KIND_RWKV6: gate[i] = -expf(x[i]); break;
            default: gate[i] = 0.0f; break;
        }
    }
    if (kind == KIND_HGRN2) {
#pragma unroll
        for (int i = 0; i < ROW_SLOTS; ++i) r[i] = sigmoid_f(-x[i]);  // 1 - sigmoid(k)
    } else {
        softmax_row(r);
    }
    store_row(kf, d, r);
#pragma unroll
    for (int i = 0; i < ROW_SLOTS; ++i) gate[i] = expf(gate[i]);  // <= 1: the decay
    store_row(decay, d, gate);
}

// Rows [0, q_rows) are query heads: qf = softmax(q). Rows [q_rows, q_rows + kv_rows) are key
// and value heads: kf and the decay exp(log-gate) per `kind`, vf = v.
template <typename T>
__device__ void mixer_features(const T* q, const T* k, const T* v, float* qf, float* kf, float* decay, float* vf, long long q_rows,
                               long long kv_rows, int d, int kind, float gate_scale) {
    long long row = warp_row(q_rows + kv_rows);
    if (row < 0) return;
    if (row < q_rows) {
        query_features_row(q + row * d, qf + row * d, d);
        return;
    }
    row -= q_rows;
    float r[ROW_SLOTS];
    load_row(v + row * d, d, 0.0f, r);
    store_row(vf + row * d, d, r);
    key_features_row(k + row * d, kf + row * d, decay + row * d, d, kind, gate_scale);
}

// One CTA's share of a scan; see the notes at the top and mixer.rs for the four uses.
// Tensors are [B, T, heads, d] with `n` heads per key-value head (1 or the group size G).
// A decoding step (T = 1) passes the RAW k, v and q of the output type as x, y and w instead,
// and the CTA applies the feature maps itself (no scratch buffers).
struct ScanParams {
    const float* x;      // update rows, x_n heads per kv head
    const float* y;      // update columns, y heads paired with x
    const float* w;      // read-out rows, w_n heads per kv head
    const float* decay;  // exp(log-gate) [B, T, hkv, d]
    void* out;           // [B, T, w_n * hkv, d]
    const float* initial;  // [B * segments, hkv, d, d] or null (zeros)
    float* final_state;    // [B * segments, hkv, d, d] or null
    float* decay_product;  // [B * segments, hkv, d] or null: the product of the decays applied
    int batch, tokens, hkv, d;
    int x_n, w_n;
    int tile;  // tokens per shared-memory tile
    int kind;  // KIND_*, for a decoding step's feature maps
    float gate_scale;
    // Each sequence is cut into `segments` runs of `segment_len` tokens (the last may be
    // shorter); grid.z is (sequence, segment) and each CTA scans its segment alone, from its
    // own initial state. One segment of T tokens is the whole sequence.
    int segments, segment_len;
};

// Asynchronous global -> shared copies (sm_80+; plain copies before that). Waiting for all
// but the most recent group lets the next tile load while the current one is computed.
__device__ __forceinline__ unsigned shared_address(const void* p) {
    unsigned long long a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (unsigned)a;
}
__device__ __forceinline__ void copy_async4(float* dst, const float* src) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(shared_address(dst)), "l"(src));
#else
    *dst = *src;
#endif
}
__device__ __forceinline__ void copy_async16(float* dst, const float* src) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(dst)), "l"(src));
#else
    *(float4*)dst = *(const float4*)src;
#endif
}
__device__ __forceinline__ void copy_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits for every copy group but the newest `pending` (0 or 1).
__device__ __forceinline__ void copy_wait(int pending) {
#if __CUDA_ARCH__ >= 800
    if (pending) asm volatile("cp.async.wait_group 1;\n" ::);
    else asm volatile("cp.async.wait_group 0;\n" ::);
#endif
}

// Copies `count` consecutive floats (count <= d, from a row start) into shared memory in
// pieces of 4 when rows are 16-byte aligned (d % 4 == 0), else one by one.
__device__ __forceinline__ void copy_row_part(float* dst, const float* src, int count, bool aligned, int tid, int threads) {
    if (aligned) {
        for (int e = 4 * tid; e < count; e += 4 * threads) copy_async16(dst + e, src + e);
    } else {
        for (int e = tid; e < count; e += threads) copy_async4(dst + e, src + e);
    }
}

// Shared memory of one tile buffer, in floats (rows padded to ROWS, 64 or 128); the CTA
// has two (double buffering) and one partial read-out area. The host sizes it the same way
// (mixer.rs, scan_floats_per_token).
__device__ __forceinline__ int tile_buffer_floats(const ScanParams& p, int rows, bool decay_cols) {
    return p.tile * (p.x_n * rows + p.x_n * 32 + p.w_n * rows + (decay_cols ? 32 : rows));
}

template <int ROWS, bool DECAY_COLS> struct TileBuffer {
    float *x, *y, *w, *dec;
    __device__ TileBuffer(float* base, const ScanParams& p) {
        const int rows = ROWS;
        x = base;
        y = x + p.tile * p.x_n * rows;
        w = y + p.tile * p.x_n * 32;
        dec = w + p.tile * p.w_n * rows;
    }
};

template <int ROWS, bool DECAY_COLS, bool REVERSE>
__device__ void load_tile(const ScanParams& p, TileBuffer<ROWS, DECAY_COLS> buf, int b, int kvh, int col0, int t0, int len) {
    const int rows = ROWS, d = p.d, T = p.tokens;
    const bool aligned = (d & 3) == 0;
    const int cols = min(32, d - col0);
    // Warps take (token, head) rows in turn; the lanes copy a row's values.
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    auto at = [&](int t, int n, int h) -> size_t { return (((size_t)b * T + t) * (p.hkv * n) + (size_t)kvh * n + h) * d; };
    for (int i = warp; i < len * p.x_n; i += SCAN_WARPS(ROWS)) {
        const int j = i / p.x_n, h = i % p.x_n;
        copy_row_part(buf.x + i * rows, p.x + at(t0 + j, p.x_n, h), d, aligned, lane, 32);
        copy_row_part(buf.y + i * 32, p.y + at(t0 + j, p.x_n, h) + col0, cols, aligned, lane, 32);
    }
    for (int i = warp; i < len * p.w_n; i += SCAN_WARPS(ROWS)) {
        const int j = i / p.w_n, h = i % p.w_n;
        copy_row_part(buf.w + i * rows, p.w + at(t0 + j, p.w_n, h), d, aligned, lane, 32);
    }
    const int dec_n = DECAY_COLS ? 32 : rows;
    for (int j = warp; j < len; j += SCAN_WARPS(ROWS)) {
        // Backward in time the state gradient decays with the gate of the step after.
        const int t = REVERSE ? t0 + j + 1 : t0 + j;
        if (t < T) {
            copy_row_part(buf.dec + j * dec_n, p.decay + at(t, 1, 0) + (DECAY_COLS ? col0 : 0), DECAY_COLS ? cols : d, aligned, lane, 32);
        } else {
            for (int e = lane; e < dec_n; e += 32) buf.dec[j * dec_n + e] = 1.0f;  // the state gradient is still zero
        }
    }
}

// A decoding step's only token: the feature maps of the raw q, k, v (type T) into the tile.
// Warps take the query heads and the key row in turn; the first warp copies the values.
template <typename T, int ROWS> __device__ void load_step(const ScanParams& p, TileBuffer<ROWS, false> buf, int b, int kvh, int col0) {
    const int d = p.d, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const T* q = (const T*)p.w + ((size_t)b * p.hkv * p.w_n + (size_t)kvh * p.w_n) * d;
    const size_t kv = ((size_t)b * p.hkv + kvh) * d;
    for (int i = warp; i <= p.w_n; i += SCAN_WARPS(ROWS)) {
        if (i < p.w_n) query_features_row(q + (size_t)i * d, buf.w + i * ROWS, d);
        else key_features_row((const T*)p.x + kv, buf.x, buf.dec, d, p.kind, p.gate_scale);
    }
    if (warp == 0 && col0 + lane < d) buf.y[lane] = to_f32(((const T*)p.y)[kv + col0 + lane]);
}

// Thread layout of a scan CTA: warp w holds state rows [16 w, 16 w + 16); in it, lane
// = cg + 8 rg holds the 4 rows of row group rg and the 4 columns of column group cg. Every
// value a thread reads from shared memory then feeds 4 FMAs.
#define ROW_GROUPS 4
#define COLS_PER_THREAD 4

// `col_block`: which 32 state columns this CTA holds.
template <typename OutT, int ROWS, bool DECAY_COLS, bool REVERSE, bool STEP> __device__ void gated_scan(const ScanParams& p, int col_block) {
    constexpr int RPT = ROWS / (SCAN_WARPS(ROWS) * ROW_GROUPS);  // rows per thread: 4
    constexpr int CPT = COLS_PER_THREAD;
    extern __shared__ float4 smem4[];
    float* smem = (float*)smem4;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int cg = lane & 7, rg = lane >> 3;
    const int col0 = col_block * 32, kvh = blockIdx.y, b = blockIdx.z / p.segments;
    const int row0 = warp * (ROWS / SCAN_WARPS(ROWS)) + rg * RPT, colt = col0 + cg * CPT;
    const int d = p.d, L = p.tile, T = p.tokens;
    const int t_begin = (blockIdx.z % p.segments) * p.segment_len, t_end = min(T, t_begin + p.segment_len);
    const int buf_floats = tile_buffer_floats(p, ROWS, DECAY_COLS);
    const TileBuffer<ROWS, DECAY_COLS> buf0(smem, p), buf1(smem + buf_floats, p);
    float* s_part = smem + 2 * buf_floats;

    // Padding (rows and columns past d) is never copied: zeros keep the padded state at zero.
    for (int i = threadIdx.x; i < 2 * buf_floats; i += blockDim.x) smem[i] = 0.0f;
    __syncthreads();

    // States are per (sequence, segment): grid.z.
    const size_t state_base = ((size_t)blockIdx.z * p.hkv + kvh) * d * d;
    float s[RPT][CPT];
    // Product of the decays this thread applied, per its rows (or columns when DECAY_COLS).
    float decayed[4] = {1.0f, 1.0f, 1.0f, 1.0f};
#pragma unroll
    for (int i = 0; i < RPT; ++i)
#pragma unroll
        for (int c = 0; c < CPT; ++c) {
            const int r = row0 + i, col = colt + c;
            s[i][c] = (p.initial && r < d && col < d) ? p.initial[state_base + (size_t)r * d + col] : 0.0f;
        }
    auto at = [&](int t, int n, int h) -> size_t { return (((size_t)b * T + t) * (p.hkv * n) + (size_t)kvh * n + h) * d; };

    const int tiles = t_end > t_begin ? (t_end - t_begin + L - 1) / L : 0;
    auto tile_start = [&](int ti) { return t_begin + (REVERSE ? tiles - 1 - ti : ti) * L; };
    if constexpr (STEP) {
        load_step<OutT, ROWS>(p, buf0, b, kvh, col0);
    } else if (tiles > 0) {
        load_tile<ROWS, DECAY_COLS, REVERSE>(p, buf0, b, kvh, col0, tile_start(0), min(L, t_end - tile_start(0)));
        copy_commit();
    }
    for (int ti = 0; ti < tiles; ++ti) {
        const int t0 = tile_start(ti), len = min(L, t_end - t0);
        const bool more = !STEP && ti + 1 < tiles;
        if (more) {
            const int n0 = tile_start(ti + 1);
            load_tile<ROWS, DECAY_COLS, REVERSE>(p, (ti & 1) ? buf0 : buf1, b, kvh, col0, n0, min(L, t_end - n0));
            copy_commit();
        }
        copy_wait(more ? 1 : 0);
        __syncthreads();
        const TileBuffer<ROWS, DECAY_COLS> buf = (ti & 1) ? buf1 : buf0;

        for (int jj = 0; jj < len; ++jj) {
            const int j = REVERSE ? len - 1 - jj : jj;
            if (DECAY_COLS) {
                const float4 a4 = *(const float4*)(buf.dec + j * 32 + cg * CPT);
                const float a[CPT] = {a4.x, a4.y, a4.z, a4.w};
#pragma unroll
                for (int c = 0; c < CPT; ++c) decayed[c] *= a[c];
#pragma unroll
                for (int i = 0; i < RPT; ++i)
#pragma unroll
                    for (int c = 0; c < CPT; ++c) s[i][c] *= a[c];
            } else {
#pragma unroll
                for (int i4 = 0; i4 < RPT / 4; ++i4) {
                    const float4 a4 = *(const float4*)(buf.dec + j * ROWS + row0 + 4 * i4);
                    const float a[4] = {a4.x, a4.y, a4.z, a4.w};
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        decayed[4 * i4 + e] *= a[e];
#pragma unroll
                        for (int c = 0; c < CPT; ++c) s[4 * i4 + e][c] *= a[e];
                    }
                }
            }
            for (int h = 0; h < p.x_n; ++h) {
                const float4 y4 = *(const float4*)(buf.y + (j * p.x_n + h) * 32 + cg * CPT);
                const float y[CPT] = {y4.x, y4.y, y4.z, y4.w};
#pragma unroll
                for (int i4 = 0; i4 < RPT / 4; ++i4) {
                    const float4 x4 = *(const float4*)(buf.x + (j * p.x_n + h) * ROWS + row0 + 4 * i4);
                    const float x[4] = {x4.x, x4.y, x4.z, x4.w};
#pragma unroll
                    for (int e = 0; e < 4; ++e)
#pragma unroll
                        for (int c = 0; c < CPT; ++c) s[4 * i4 + e][c] = fmaf(x[e], y[c], s[4 * i4 + e][c]);
                }
            }
            for (int h = 0; h < p.w_n; ++h) {
                float acc[CPT] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int i4 = 0; i4 < RPT / 4; ++i4) {
                    const float4 w4 = *(const float4*)(buf.w + (j * p.w_n + h) * ROWS + row0 + 4 * i4);
                    const float w[4] = {w4.x, w4.y, w4.z, w4.w};
#pragma unroll
                    for (int e = 0; e < 4; ++e)
#pragma unroll
                        for (int c = 0; c < CPT; ++c) acc[c] = fmaf(w[e], s[4 * i4 + e][c], acc[c]);
                }
                // Sum over the warp's row groups, then one partial per warp.
#pragma unroll
                for (int c = 0; c < CPT; ++c) {
                    acc[c] += __shfl_xor_sync(0xffffffffu, acc[c], 8);
                    acc[c] += __shfl_xor_sync(0xffffffffu, acc[c], 16);
                }
                if (rg == 0) *(float4*)(s_part + ((warp * L + j) * p.w_n + h) * 32 + cg * CPT) = make_float4(acc[0], acc[1], acc[2], acc[3]);
            }
        }
        __syncthreads();
        // Sum the warps' partial read-outs and write the tile's outputs. The next tile's
        // copies go to the other buffer; its steps start after the next barrier.
        OutT* out = (OutT*)p.out;
        for (int i = threadIdx.x; i < len * p.w_n * 32; i += blockDim.x) {
            const int c = col0 + (i & 31), h = (i >> 5) % p.w_n, j = (i >> 5) / p.w_n;
            if (c >= d) continue;
            float acc = 0.0f;
#pragma unroll
            for (int w = 0; w < SCAN_WARPS(ROWS); ++w) acc += s_part[((w * L + j) * p.w_n + h) * 32 + (i & 31)];
            out[at(t0 + j, p.w_n, h) + c] = from_f32<OutT>(acc);
        }
    }
    if (p.final_state) {
#pragma unroll
        for (int i = 0; i < RPT; ++i)
#pragma unroll
            for (int c = 0; c < CPT; ++c) {
                const int r = row0 + i, col = colt + c;
                if (r < d && col < d) p.final_state[state_base + (size_t)r * d + col] = s[i][c];
            }
    }
    if (p.decay_product) {
        // One writer per value: the first column block's first column group for rows, the
        // first warp's first row group for columns.
        float* out = p.decay_product + ((size_t)blockIdx.z * p.hkv + kvh) * d;
        if (DECAY_COLS && warp == 0 && rg == 0) {
#pragma unroll
            for (int c = 0; c < CPT; ++c)
                if (colt + c < d) out[colt + c] = decayed[c];
        } else if (!DECAY_COLS && col_block == 0 && cg == 0) {
#pragma unroll
            for (int i = 0; i < RPT; ++i)
                if (row0 + i < d) out[row0 + i] = decayed[i];
        }
    }
}

// The carry across segments of a scan cut over time (mixer/segments.rs). On entry `states`
// [B, segments, hkv, d, d] holds each segment's final state from a zero start and
// `decay_product` [B, segments, hkv, d] the product of its decays (along rows, or along
// columns when `decay_cols`); on exit `states` holds each segment's true initial state:
//     start(next) = decay_product (.) start(this) + local(this)
// walking the segments in scan order (last to first when `reverse`). The first segment
// starts from `initial` (or zeros); the state after the last goes to `final_state` (if set).
// One thread per (sequence, kv head, state value).
extern "C" __global__ void mixer_segment_carry(float* states, const float* decay_product, const float* initial, float* final_state,
                                               int batch, int segments, int hkv, int d, int decay_cols, int reverse) {
    const long long per_seq = (long long)hkv * d * d;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)batch * per_seq) return;
    const long long b = idx / per_seq, within = idx % per_seq;
    const int kvh = within / ((long long)d * d), r = (within / d) % d, c = within % d;
    const int dim = decay_cols ? c : r;
    float s = initial ? initial[idx] : 0.0f;
    for (int i = 0; i < segments; ++i) {
        const long long seg = b * segments + (reverse ? segments - 1 - i : i);
        float* at = states + seg * per_seq + within;
        const float local = *at;
        *at = s;
        s = fmaf(decay_product[(seg * hkv + kvh) * d + dim], s, local);
    }
    if (final_state) final_state[idx] = s;
}

// Log-gate gradient dg_t = sum_{s >= t} dG_s, dG_s = sum_h qf_{h,s} dqf_{h,s} - kf_s dkf_s, per
// (sequence, kv head, key dim), in two steps so that every token is read in parallel:
// 1. one thread per (sequence, piece of GATE_PIECE tokens, kv head, key dim) writes the sums
//    over the rest of its piece into dg, and the piece's total into `piece_sums`
//    [B, pieces, hkv, d]; eight tokens at a time, so their loads are in flight together;
// 2. one thread per (sequence, kv head, key dim) turns the totals into the carry of each
//    piece: the sum over the pieces after it. The feature-map backward adds it to dg.
#define GATE_PIECE 64
#define GATE_GRAD_UNROLL 8
extern "C" __global__ void mixer_gate_grad_pieces_f32(const float* qf, const float* dqf, const float* kf, const float* dkf, float* dg,
                                                      float* piece_sums, int batch, int tokens, int hkv, int group, int d) {
    const int pieces = (tokens + GATE_PIECE - 1) / GATE_PIECE;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)batch * pieces * hkv * d) return;
    const int dim = idx % d, kvh = (idx / d) % hkv, piece = (idx / ((long long)d * hkv)) % pieces;
    const int b = idx / ((long long)d * hkv * pieces);
    const int first = piece * GATE_PIECE, end = min(tokens, first + GATE_PIECE);
    float acc = 0.0f;
    for (int t1 = end; t1 > first; t1 -= GATE_GRAD_UNROLL) {
        float dG[GATE_GRAD_UNROLL];
#pragma unroll
        for (int u = 0; u < GATE_GRAD_UNROLL; ++u) {
            const int t = t1 - 1 - u;
            dG[u] = 0.0f;
            if (t < first) continue;
            const size_t kv = (((size_t)b * tokens + t) * hkv + kvh) * d + dim;
            dG[u] = -kf[kv] * dkf[kv];
            for (int h = 0; h < group; ++h) {
                const size_t qi = (((size_t)b * tokens + t) * hkv * group + (size_t)kvh * group + h) * d + dim;
                dG[u] += qf[qi] * dqf[qi];
            }
        }
#pragma unroll
        for (int u = 0; u < GATE_GRAD_UNROLL; ++u) {
            const int t = t1 - 1 - u;
            if (t < first) continue;
            acc += dG[u];
            dg[(((size_t)b * tokens + t) * hkv + kvh) * d + dim] = acc;
        }
    }
    piece_sums[idx] = acc;
}

extern "C" __global__ void mixer_gate_grad_carry_f32(float* piece_sums, int batch, int tokens, int hkv, int d) {
    const int pieces = (tokens + GATE_PIECE - 1) / GATE_PIECE;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long per_piece = (long long)hkv * d;
    if (idx >= (long long)batch * per_piece) return;
    float* s = piece_sums + (idx / per_piece) * pieces * per_piece + idx % per_piece;
    float carry = 0.0f;
    for (int piece = pieces - 1; piece >= 0; --piece) {
        const float total = s[piece * per_piece];
        s[piece * per_piece] = carry;
        carry += total;
    }
}

// Rows [0, q_rows): dq = softmax backward of dqf through qf. Rows [q_rows, q_rows + kv_rows):
// dk through the key features and gate of `kind`, and dv = dvf.
template <typename T>
__device__ void mixer_features_backward(const T* k, const float* qf, const float* dqf, const float* kf, const float* dkf, const float* dg,
                                        const float* carry, const float* dvf, T* dq, T* dk, T* dv, long long q_rows, long long kv_rows,
                                        int tokens, int hkv, int d, int kind, float gate_scale) {
    long long row = warp_row(q_rows + kv_rows);
    if (row < 0) return;
    float y[ROW_SLOTS], dy[ROW_SLOTS];
    if (row < q_rows) {
        load_row(qf + row * d, d, 0.0f, y);
        load_row(dqf + row * d, d, 0.0f, dy);
        const float dot = warp_sum(y[0] * dy[0] + y[1] * dy[1] + y[2] * dy[2] + y[3] * dy[3]);
#pragma unroll
        for (int i = 0; i < ROW_SLOTS; ++i) y[i] *= dy[i] - dot;
        store_row(dq + row * d, d, y);
        return;
    }
    row -= q_rows;
    load_row(dvf + row * d, d, 0.0f, y);
    store_row(dv + row * d, d, y);
    float x[ROW_SLOTS], gg[ROW_SLOTS];
    load_row(k + row * d, d, 0.0f, x);
    load_row(kf + row * d, d, 0.0f, y);
    load_row(dkf + row * d, d, 0.0f, dy);
    load_row(dg + row * d, d, 0.0f, gg);
    {
        // The sums over the later pieces (kv rows are [B, T, hkv]).
        const long long t = (row / hkv) % tokens, b = row / ((long long)hkv * tokens), pieces = (tokens + GATE_PIECE - 1) / GATE_PIECE;
        float c[ROW_SLOTS];
        load_row(carry + ((b * pieces + t / GATE_PIECE) * hkv + row % hkv) * d, d, 0.0f, c);
#pragma unroll
        for (int i = 0; i < ROW_SLOTS; ++i) gg[i] += c[i];
    }
    const float mean = warp_sum(x[0] + x[1] + x[2] + x[3]) / (float)d;
    const float dot = warp_sum(y[0] * dy[0] + y[1] * dy[1] + y[2] * dy[2] + y[3] * dy[3]);
    const float dg_sum = warp_sum(gg[0] + gg[1] + gg[2] + gg[3]);
    float r[ROW_SLOTS];
#pragma unroll
    for (int i = 0; i < ROW_SLOTS; ++i) {
        const float softmax_part = y[i] * (dy[i] - dot);
        switch (kind) {
            case KIND_GLA: r[i] = softmax_part + gg[i] * sigmoid_f(-x[i]) * gate_scale; break;
            case KIND_HGRN2: r[i] = -dy[i] * sigmoid_f(x[i]) * sigmoid_f(-x[i]) + gg[i] * sigmoid_f(-x[i]); break;
            case KIND_RETENTION: r[i] = softmax_part + dg_sum * sigmoid_f(-mean) / (float)d; break;
            case KIND_MAMBA2: r[i] = softmax_part - dg_sum * sigmoid_f(mean) / (float)d; break;
            case KIND_RWKV6: r[i] = softmax_part - gg[i] * expf(x[i]); break;
            default: r[i] = softmax_part; break;
        }
    }
    store_row(dk + row * d, d, r);
}

#define MIXER_ROW_KERNELS(T, SUFFIX)                                                                                                         \
    extern "C" __global__ void mixer_features_##SUFFIX(const T* q, const T* k, const T* v, float* qf, float* kf, float* decay, float* vf,  \
                                                       long long q_rows, long long kv_rows, int d, int kind, float gate_scale) {            \
        mixer_features<T>(q, k, v, qf, kf, decay, vf, q_rows, kv_rows, d, kind, gate_scale);                                                   \
    }                                                                                                                                        \
    extern "C" __global__ void mixer_features_backward_##SUFFIX(const T* k, const float* qf, const float* dqf, const float* kf,             \
                                                                const float* dkf, const float* dg, const float* carry, const float* dvf,   \
                                                                T* dq, T* dk, T* dv, long long q_rows, long long kv_rows, int tokens,      \
                                                                int hkv, int d, int kind, float gate_scale) {                              \
        mixer_features_backward<T>(k, qf, dqf, kf, dkf, dg, carry, dvf, dq, dk, dv, q_rows, kv_rows, tokens, hkv, d, kind, gate_scale);    \
    }                                                                                                                                        \
    extern "C" __global__ void mixer_to_f32_##SUFFIX(const T* x, float* y, long long n) {                                                  \
        for (size_t i = global_index(); i < (size_t)n; i += grid_stride()) y[i] = to_f32(x[i]);                                           \
    }

MIXER_ROW_KERNELS(float, f32)
MIXER_ROW_KERNELS(bf16, bf16)

// Scan entry points: forward (rows, forward in time) writes the output type; _d64 serves head
// sizes up to 64, _d128 up to 128.
#define MIXER_SCAN(NAME, OutT, ROWS, STEP)                                                                      \
    extern "C" __global__ void __launch_bounds__(SCAN_WARPS(ROWS) * 32) NAME(const ScanParams p) {              \
        gated_scan<OutT, ROWS, false, false, STEP>(p, blockIdx.x);                                              \
    }

MIXER_SCAN(mixer_scan_forward_f32_d64, float, 64, false)
MIXER_SCAN(mixer_scan_forward_f32_d128, float, 128, false)
MIXER_SCAN(mixer_scan_forward_bf16_d64, bf16, 64, false)
MIXER_SCAN(mixer_scan_forward_bf16_d128, bf16, 128, false)
// Decoding steps (T = 1) from the raw q, k, v of the output type.
MIXER_SCAN(mixer_step_f32_d64, float, 64, true)
MIXER_SCAN(mixer_step_f32_d128, float, 128, true)
MIXER_SCAN(mixer_step_bf16_d64, bf16, 64, true)
MIXER_SCAN(mixer_step_bf16_d128, bf16, 128, true)

// The backward's three scans, f32 out: dqf (columns decay, forward), dvf (rows, reverse) and
// dkf (columns, reverse). One at a time for large grids; for few heads and sequences all three
// in one launch, so that they run side by side (grid.x is three runs of column blocks).
#define MIXER_SCAN_ONE(NAME, ROWS, COLS, REV)                                                    \
    extern "C" __global__ void __launch_bounds__(SCAN_WARPS(ROWS) * 32) NAME(const ScanParams p) { \
        gated_scan<float, ROWS, COLS, REV, false>(p, blockIdx.x);                                  \
    }

MIXER_SCAN_ONE(mixer_scan_cols_forward_d64, 64, true, false)
MIXER_SCAN_ONE(mixer_scan_cols_forward_d128, 128, true, false)
MIXER_SCAN_ONE(mixer_scan_rows_reverse_d64, 64, false, true)
MIXER_SCAN_ONE(mixer_scan_rows_reverse_d128, 128, false, true)
MIXER_SCAN_ONE(mixer_scan_cols_reverse_d64, 64, true, true)
MIXER_SCAN_ONE(mixer_scan_cols_reverse_d128, 128, true, true)

#define MIXER_SCAN_BACKWARD(NAME, ROWS)                                                                                    \
    extern "C" __global__ void __launch_bounds__(SCAN_WARPS(ROWS) * 32)                                                    \
        NAME(const ScanParams dqf, const ScanParams dvf, const ScanParams dkf) {                                          \
        const int blocks = (dqf.d + 31) / 32, role = blockIdx.x / blocks, col_block = blockIdx.x % blocks;               \
        if (role == 0) gated_scan<float, ROWS, true, false, false>(dqf, col_block);                                       \
        else if (role == 1) gated_scan<float, ROWS, false, true, false>(dvf, col_block);                                  \
        else gated_scan<float, ROWS, true, true, false>(dkf, col_block);                                                  \
    }

MIXER_SCAN_BACKWARD(mixer_scan_backward_d64, 64)
MIXER_SCAN_BACKWARD(mixer_scan_backward_d128, 128)
