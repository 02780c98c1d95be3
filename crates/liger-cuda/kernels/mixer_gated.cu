// The gated recurrent mixers (every Liger mixer but GSA) on the GPU, in three kinds of kernel:
//
// 1. Feature maps, one warp per row (a token's head, d <= 128): queries -> softmax, keys ->
//    key features and log-gates per mixer kind, values and output gradients -> f32.
// 2. The gated scan, one CTA per (sequence, key-value head, block of 32 state columns), the
//    fp32 state slice in registers for the whole sequence:
//        X_t = decay_t (.) X_{t-1} + sum_u x_u^T y_u        out_h = w_h X_t
//    The forward is rows = key dims, columns = value dims, decay along rows (exp of the
//    log-gate, always <= 1, so nothing overflows), x = kf, y = v, w = qf of each query head
//    of the group. The backward runs the same loop three more times: dqf forward with the
//    state transposed (decay along columns), and the state gradient backward in time in both
//    orientations for dv and dkf (see mixer.rs).
// 3. Backward finishing, one warp per row: the log-gate gradient (a reverse cumulative sum
//    over time), then the feature-map backward of queries and keys.
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
// Warps of a scan CTA; each holds a band of state rows, each lane one column.
#define SCAN_WARPS 4

__device__ __forceinline__ float softplus_f(float x) { return x > 0.0f ? x + log1pf(expf(-x)) : log1pf(expf(x)); }
__device__ __forceinline__ float log_sigmoid_f(float x) { return -softplus_f(-x); }
__device__ __forceinline__ float sigmoid_f(float x) {
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    const float e = expf(x);
    return e / (1.0f + e);
}

// Row of this warp, or -1 past the end.
__device__ __forceinline__ long long mixer_warp_row(long long rows) {
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    return row < rows ? row : -1;
}

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

// Rows [0, q_rows) are query heads: qf = softmax(q). Rows [q_rows, q_rows + kv_rows) are key
// and value heads: kf and g per `kind`, vf = v.
template <typename T>
__device__ void mixer_features(const T* q, const T* k, const T* v, float* qf, float* kf, float* g, float* vf, long long q_rows,
                               long long kv_rows, int d, int kind, float gate_scale) {
    long long row = mixer_warp_row(q_rows + kv_rows);
    if (row < 0) return;
    float r[ROW_SLOTS];
    if (row < q_rows) {
        load_row(q + row * d, d, -POS_INFINITY, r);
        softmax_row(r);
        store_row(qf + row * d, d, r);
        return;
    }
    row -= q_rows;
    load_row(v + row * d, d, 0.0f, r);
    store_row(vf + row * d, d, r);
    float x[ROW_SLOTS], gate[ROW_SLOTS];
    load_row(k + row * d, d, 0.0f, x);
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
    store_row(kf + row * d, d, r);
    store_row(g + row * d, d, gate);
}

// One CTA's share of a scan; see the notes at the top and mixer.rs for the four uses.
// Tensors are [B, T, heads, d] with `n` heads per key-value head (1 or the group size G).
struct ScanParams {
    const float* x;   // update rows, x_n heads per kv head
    const float* y;   // update columns, y heads paired with x
    const float* w;   // read-out rows, w_n heads per kv head
    const float* g;   // log-gates [B, T, hkv, d]
    void* out;        // [B, T, w_n * hkv, d]
    const float* initial;  // [B, hkv, d, d] or null (zeros)
    float* final_state;    // [B, hkv, d, d] or null
    int batch, tokens, hkv, d;
    int x_n, w_n;
    int tile;  // tokens per shared-memory tile
};

// Shared memory of one tile (floats, rows padded to SCAN_WARPS * RPT): x, y, w, decays and
// the warps' partial read-outs; the host sizes it the same way (mixer.rs, scan_tile_floats).
template <typename OutT, int RPT, bool DECAY_COLS, bool REVERSE> __device__ void gated_scan(const ScanParams p) {
    extern __shared__ float4 smem4[];
    float* smem = (float*)smem4;
    const int rows = SCAN_WARPS * RPT;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int col0 = blockIdx.x * 32, kvh = blockIdx.y, b = blockIdx.z;
    const int col = col0 + lane, row0 = warp * RPT;
    const int d = p.d, L = p.tile, T = p.tokens;
    float* s_x = smem;
    float* s_y = s_x + L * p.x_n * rows;
    float* s_w = s_y + L * p.x_n * 32;
    float* s_dec = s_w + L * p.w_n * rows;
    float* s_part = s_dec + L * (DECAY_COLS ? 32 : rows);

    const size_t state_base = ((size_t)b * p.hkv + kvh) * d * d;
    float s[RPT];
#pragma unroll
    for (int i = 0; i < RPT; ++i) {
        const int r = row0 + i;
        s[i] = (p.initial && r < d && col < d) ? p.initial[state_base + (size_t)r * d + col] : 0.0f;
    }
    // Offset of (token t, head `first + h`) in a [B, T, heads, d] tensor.
    auto at = [&](int t, int n, int h) -> size_t { return (((size_t)b * T + t) * (p.hkv * n) + (size_t)kvh * n + h) * d; };

    const int tiles = (T + L - 1) / L;
    for (int ti = 0; ti < tiles; ++ti) {
        const int tile = REVERSE ? tiles - 1 - ti : ti;
        const int t0 = tile * L, len = min(L, T - t0);
        // Load the tile: rows and read-outs padded with zeros, decays for each step.
        for (int i = threadIdx.x; i < L * p.x_n * rows; i += blockDim.x) {
            const int r = i % rows, h = (i / rows) % p.x_n, j = i / (rows * p.x_n);
            s_x[i] = (j < len && r < d) ? p.x[at(t0 + j, p.x_n, h) + r] : 0.0f;
        }
        for (int i = threadIdx.x; i < L * p.x_n * 32; i += blockDim.x) {
            const int c = col0 + i % 32, h = (i / 32) % p.x_n, j = i / (32 * p.x_n);
            s_y[i] = (j < len && c < d) ? p.y[at(t0 + j, p.x_n, h) + c] : 0.0f;
        }
        for (int i = threadIdx.x; i < L * p.w_n * rows; i += blockDim.x) {
            const int r = i % rows, h = (i / rows) % p.w_n, j = i / (rows * p.w_n);
            s_w[i] = (j < len && r < d) ? p.w[at(t0 + j, p.w_n, h) + r] : 0.0f;
        }
        const int dec_n = DECAY_COLS ? 32 : rows;
        for (int i = threadIdx.x; i < L * dec_n; i += blockDim.x) {
            const int e = i % dec_n, j = i / dec_n;
            const int dim = DECAY_COLS ? col0 + e : e;
            // Backward in time the state gradient decays with the gate of the step after.
            const int t = REVERSE ? t0 + j + 1 : t0 + j;
            s_dec[i] = (j < len && t < T && dim < d) ? expf(p.g[at(t, 1, 0) + dim]) : 1.0f;
        }
        __syncthreads();

        for (int jj = 0; jj < len; ++jj) {
            const int j = REVERSE ? len - 1 - jj : jj;
            if (DECAY_COLS) {
                const float a = s_dec[j * 32 + lane];
#pragma unroll
                for (int i = 0; i < RPT; ++i) s[i] *= a;
            } else {
                const float4* a4 = (const float4*)(s_dec + j * rows + row0);
#pragma unroll
                for (int i = 0; i < RPT / 4; ++i) {
                    const float4 a = a4[i];
                    s[4 * i] *= a.x, s[4 * i + 1] *= a.y, s[4 * i + 2] *= a.z, s[4 * i + 3] *= a.w;
                }
            }
            for (int h = 0; h < p.x_n; ++h) {
                const float yv = s_y[(j * p.x_n + h) * 32 + lane];
                const float4* x4 = (const float4*)(s_x + (j * p.x_n + h) * rows + row0);
#pragma unroll
                for (int i = 0; i < RPT / 4; ++i) {
                    const float4 x = x4[i];
                    s[4 * i] = fmaf(x.x, yv, s[4 * i]);
                    s[4 * i + 1] = fmaf(x.y, yv, s[4 * i + 1]);
                    s[4 * i + 2] = fmaf(x.z, yv, s[4 * i + 2]);
                    s[4 * i + 3] = fmaf(x.w, yv, s[4 * i + 3]);
                }
            }
            for (int h = 0; h < p.w_n; ++h) {
                const float4* w4 = (const float4*)(s_w + (j * p.w_n + h) * rows + row0);
                float acc = 0.0f;
#pragma unroll
                for (int i = 0; i < RPT / 4; ++i) {
                    const float4 w = w4[i];
                    acc = fmaf(w.x, s[4 * i], acc);
                    acc = fmaf(w.y, s[4 * i + 1], acc);
                    acc = fmaf(w.z, s[4 * i + 2], acc);
                    acc = fmaf(w.w, s[4 * i + 3], acc);
                }
                s_part[((warp * L + j) * p.w_n + h) * 32 + lane] = acc;
            }
        }
        __syncthreads();
        // Sum the warps' partial read-outs and write the tile's outputs.
        OutT* out = (OutT*)p.out;
        for (int i = threadIdx.x; i < len * p.w_n * 32; i += blockDim.x) {
            const int c = col0 + i % 32, h = (i / 32) % p.w_n, j = i / (32 * p.w_n);
            if (c >= d) continue;
            float acc = 0.0f;
#pragma unroll
            for (int w = 0; w < SCAN_WARPS; ++w) acc += s_part[((w * L + j) * p.w_n + h) * 32 + c - col0];
            out[at(t0 + j, p.w_n, h) + c] = from_f32<OutT>(acc);
        }
        // The next tile's loads do not touch s_part; its steps start after the next barrier.
    }
    if (p.final_state) {
#pragma unroll
        for (int i = 0; i < RPT; ++i) {
            const int r = row0 + i;
            if (r < d && col < d) p.final_state[state_base + (size_t)r * d + col] = s[i];
        }
    }
}

// Log-gate gradient, one thread per (sequence, kv head, key dim), backward over time:
// dg_t = sum_{s >= t} (sum_h qf_{h,s} dqf_{h,s} - kf_s dkf_s).
extern "C" __global__ void mixer_gate_grad_f32(const float* qf, const float* dqf, const float* kf, const float* dkf, float* dg, int batch,
                                               int tokens, int hkv, int group, int d) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)batch * hkv * d) return;
    const int dim = idx % d, kvh = (idx / d) % hkv, b = idx / ((long long)d * hkv);
    float acc = 0.0f;
    for (int t = tokens - 1; t >= 0; --t) {
        const size_t kv = (((size_t)b * tokens + t) * hkv + kvh) * d + dim;
        float dG = -kf[kv] * dkf[kv];
        for (int h = 0; h < group; ++h) {
            const size_t qi = (((size_t)b * tokens + t) * hkv * group + (size_t)kvh * group + h) * d + dim;
            dG += qf[qi] * dqf[qi];
        }
        acc += dG;
        dg[kv] = acc;
    }
}

// Rows [0, q_rows): dq = softmax backward of dqf through qf. Rows [q_rows, q_rows + kv_rows):
// dk through the key features and gate of `kind`, and dv = dvf.
template <typename T>
__device__ void mixer_features_backward(const T* k, const float* qf, const float* dqf, const float* kf, const float* dkf, const float* dg,
                                        const float* dvf, T* dq, T* dk, T* dv, long long q_rows, long long kv_rows, int d, int kind,
                                        float gate_scale) {
    long long row = mixer_warp_row(q_rows + kv_rows);
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
    extern "C" __global__ void mixer_features_##SUFFIX(const T* q, const T* k, const T* v, float* qf, float* kf, float* g, float* vf,      \
                                                       long long q_rows, long long kv_rows, int d, int kind, float gate_scale) {            \
        mixer_features<T>(q, k, v, qf, kf, g, vf, q_rows, kv_rows, d, kind, gate_scale);                                                   \
    }                                                                                                                                        \
    extern "C" __global__ void mixer_features_backward_##SUFFIX(const T* k, const float* qf, const float* dqf, const float* kf,             \
                                                                const float* dkf, const float* dg, const float* dvf, T* dq, T* dk, T* dv, \
                                                                long long q_rows, long long kv_rows, int d, int kind, float gate_scale) {   \
        mixer_features_backward<T>(k, qf, dqf, kf, dkf, dg, dvf, dq, dk, dv, q_rows, kv_rows, d, kind, gate_scale);                        \
    }                                                                                                                                        \
    extern "C" __global__ void mixer_to_f32_##SUFFIX(const T* x, float* y, long long n) {                                                  \
        for (size_t i = global_index(); i < (size_t)n; i += grid_stride()) y[i] = to_f32(x[i]);                                           \
    }

MIXER_ROW_KERNELS(float, f32)
MIXER_ROW_KERNELS(bf16, bf16)

// Scan entry points: forward (rows, forward in time) writes the output type; the three
// backward uses write f32. RPT 16 serves d <= 64, RPT 32 d <= 128.
#define MIXER_SCAN(NAME, OutT, RPT, COLS, REV) \
    extern "C" __global__ void __launch_bounds__(SCAN_WARPS * 32) NAME(const ScanParams p) { gated_scan<OutT, RPT, COLS, REV>(p); }

MIXER_SCAN(mixer_scan_forward_f32_r16, float, 16, false, false)
MIXER_SCAN(mixer_scan_forward_f32_r32, float, 32, false, false)
MIXER_SCAN(mixer_scan_forward_bf16_r16, bf16, 16, false, false)
MIXER_SCAN(mixer_scan_forward_bf16_r32, bf16, 32, false, false)
MIXER_SCAN(mixer_scan_cols_forward_r16, float, 16, true, false)
MIXER_SCAN(mixer_scan_cols_forward_r32, float, 32, true, false)
MIXER_SCAN(mixer_scan_rows_reverse_r16, float, 16, false, true)
MIXER_SCAN(mixer_scan_rows_reverse_r32, float, 32, false, true)
MIXER_SCAN(mixer_scan_cols_reverse_r16, float, 16, true, true)
MIXER_SCAN(mixer_scan_cols_reverse_r32, float, 32, true, true)
