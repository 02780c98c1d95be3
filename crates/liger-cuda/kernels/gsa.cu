// Gated slot attention (gsa) on the GPU: the pieces around the gated scans of gla_scan.cu.
// CPU twin and the math: liger_core::liger::gsa. Per key-value head, M slots:
//     log a_t = logsigmoid(pool_M(k_t)) / n      w_t = 1 - a_t                (M values)
//     K_t = diag(a_t) K_{t-1} + w_t^T k_t        V_t = diag(a_t) V_{t-1} + w_t^T v_t
//     s_t = K_t (q_t / sqrt(D))                  o_t = softmax_M(s_t) V_t
// The two slot memories run on the gated scan kernels (ops/mixer/gsa.rs says which scan does
// what). Slot tensors are stored D wide, padded past M: writes w = 0 and decays a = 1 there,
// so the padded state rows and columns stay zero and every read-out ignores them. The kernels
// here: the scans' f32 inputs, the slot softmax and its backward, the backward's finishing
// pass (gate path into dk), the state layout conversions, and a decoding step.

// Mean of the keys pooled into `slot` (d / slots consecutive dims).
template <typename T> __device__ __forceinline__ float gsa_pool(const T* k, int slot, int per_slot) {
    float sum = 0.0f;
    for (int j = 0; j < per_slot; ++j) sum += to_f32(k[slot * per_slot + j]);
    return sum / (float)per_slot;
}

// Warp per row. Rows [0, q_rows): qs = q * scale. Rows [q_rows, q_rows + kv_rows): kf = k,
// vf = v in f32, and per slot i < M the write w = 1 - a and the decay a (1 and 0 past M).
template <typename T>
__device__ void gsa_inputs(const T* q, const T* k, const T* v, float* qs, float* kf, float* vf, float* write, float* decay, long long q_rows,
                           long long kv_rows, int d, int slots, float scale, float inv_normalizer) {
    const long long row = warp_row(q_rows + kv_rows);
    const int lane = threadIdx.x & 31;
    if (row < 0) return;
    if (row < q_rows) {
        for (int c = lane; c < d; c += 32) qs[row * d + c] = to_f32(q[row * d + c]) * scale;
        return;
    }
    const long long r = row - q_rows;
    const T* kr = k + r * d;
    for (int c = lane; c < d; c += 32) {
        kf[r * d + c] = to_f32(kr[c]);
        vf[r * d + c] = to_f32(v[r * d + c]);
        float a = 1.0f, w = 0.0f;
        if (c < slots) {
            const float log_a = log_sigmoid_f(gsa_pool(kr, c, d / slots)) * inv_normalizer;
            a = expf(log_a);
            w = -expm1f(log_a);
        }
        write[r * d + c] = w;
        decay[r * d + c] = a;
    }
}

// Warp per row of d values: p = softmax over the first `slots`, zeros past them.
extern "C" __global__ void gsa_slot_softmax(const float* s, float* p, long long rows, int d, int slots) {
    const long long row = warp_row(rows);
    if (row < 0) return;
    warp_softmax(s + row * d, p + row * d, slots);
    for (int c = slots + (threadIdx.x & 31); c < d; c += 32) p[row * d + c] = 0.0f;
}

// Warp per row: ds = p (dp - p . dp) (zero where p is, past the slots).
extern "C" __global__ void gsa_slot_softmax_backward(const float* p, const float* dp, float* ds, long long rows, int d) {
    const long long row = warp_row(rows);
    const int lane = threadIdx.x & 31;
    if (row < 0) return;
    float dot = 0.0f;
    for (int c = lane; c < d; c += 32) dot += p[row * d + c] * dp[row * d + c];
    dot = warp_sum(dot);
    for (int c = lane; c < d; c += 32) ds[row * d + c] = p[row * d + c] * (dp[row * d + c] - dot);
}

// The backward's last pass, warp per row. Rows [0, q_rows): dq = scale * dqs. Rows past them:
// dv = dvf, and dk = (the key pass's dk) + the gate path: per slot i,
//     dw_i = dw_keys_i + dw_values_i
//     dlog a_i = dg_i (both passes, each its pieces' sum plus the carry of later pieces) - dw_i a_i
//     dk[dims of slot i] += dlog a_i * sigmoid(-pool_i) / n / (d / slots)
// (log a = logsigmoid(pool) / n, w = 1 - a). `carry_*` are [B, pieces, hkv, d], `piece` tokens each.
struct GsaGrads {
    const float *dqs, *dk_keys, *dvf, *dw_keys, *dw_values, *dg_keys, *carry_keys, *dg_values, *carry_values, *decay;
    long long q_rows, kv_rows;
    int tokens, hkv, d, slots, piece;
    float scale, inv_normalizer;
};

template <typename T> __device__ void gsa_backward_finish(const GsaGrads g, const T* k, T* dq, T* dk, T* dv) {
    const long long row = warp_row(g.q_rows + g.kv_rows);
    const int lane = threadIdx.x & 31, d = g.d;
    if (row < 0) return;
    if (row < g.q_rows) {
        for (int c = lane; c < d; c += 32) dq[row * d + c] = from_f32<T>(g.dqs[row * d + c] * g.scale);
        return;
    }
    const long long r = row - g.q_rows;
    const long long t = (r / g.hkv) % g.tokens, b = r / ((long long)g.hkv * g.tokens), kvh = r % g.hkv;
    const long long pieces = (g.tokens + g.piece - 1) / g.piece;
    const long long carry_row = ((b * pieces + t / g.piece) * g.hkv + kvh) * d;
    const int per_slot = d / g.slots;
    const T* kr = k + r * d;
    for (int c = lane; c < d; c += 32) {
        dv[r * d + c] = from_f32<T>(g.dvf[r * d + c]);
        const int i = c / per_slot;
        const long long at = r * d + i;
        const float dw = g.dw_keys[at] + g.dw_values[at];
        const float dla = g.dg_keys[at] + g.carry_keys[carry_row + i] + g.dg_values[at] + g.carry_values[carry_row + i] - dw * g.decay[at];
        const float dpool = dla * sigmoid_f(-gsa_pool(kr, i, per_slot)) * g.inv_normalizer;
        dk[r * d + c] = from_f32<T>(g.dk_keys[r * d + c] + dpool / (float)per_slot);
    }
}

// State layouts. The CPU's per (sequence, kv head): [K | V], each [M, D] row-major. The scans'
// per (sequence, kv head) [D, D]: the key pass holds K transposed (rows = key dims, columns =
// slots), the value pass V (rows = slots); both zero past M. One thread per scan-state value.
extern "C" __global__ void gsa_state_split(const float* state, float* key, float* value, long long heads, int d, int slots) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= heads * d * d) return;
    const long long h = idx / ((long long)d * d);
    const int r = (idx / d) % d, c = idx % d;
    const float* cpu = state + h * 2 * slots * d;
    key[idx] = c < slots ? cpu[(long long)c * d + r] : 0.0f;
    value[idx] = r < slots ? cpu[(long long)slots * d + (long long)r * d + c] : 0.0f;
}

// The other way; one thread per CPU-state value.
extern "C" __global__ void gsa_state_join(const float* key, const float* value, float* state, long long heads, int d, int slots) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long per_head = 2LL * slots * d;
    if (idx >= heads * per_head) return;
    const long long h = idx / per_head, within = idx % per_head;
    const bool is_value = within >= (long long)slots * d;
    const int i = (within % ((long long)slots * d)) / d, c = within % d;
    const long long scan = h * d * d;
    state[idx] = is_value ? value[scan + (long long)i * d + c] : key[scan + (long long)c * d + i];
}

// One decoding step; one CTA per (kv head, sequence), state [B, hkv, 2 M D] f32 advanced in
// place (the CPU layout), q_t/o_t [B, hq, d], k_t/v_t [B, hkv, d]. Shared memory (floats):
// k, v (d each), a, w (slots each), the group's queries (group x d), the read-out's partial
// sums (blockDim values), scores (group x slots). Every loop spreads over the whole CTA (a
// thread per column looping over the slots measured ~55 us a layer). Nothing is allocated,
// so the step can be captured in a CUDA graph.
template <typename T>
__device__ void gsa_step(float* state, const T* q_t, const T* k_t, const T* v_t, T* o_t, int hkv, int group, int d, int slots, float scale,
                         float inv_normalizer) {
    extern __shared__ float4 gsa_smem4[];
    float* kv = (float*)gsa_smem4;
    float *vv = kv + d, *a = vv + d, *w = a + slots, *qq = w + slots, *oo = qq + group * d, *p = oo + blockDim.x;
    const int kvh = blockIdx.x, b = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    const long long kv_row = ((long long)b * hkv + kvh) * d, q_row = ((long long)b * hkv + kvh) * group * d;
    float* K = state + ((long long)b * hkv + kvh) * 2 * slots * d;
    float* V = K + (long long)slots * d;
    for (int c = tid; c < d; c += blockDim.x) {
        kv[c] = to_f32(k_t[kv_row + c]);
        vv[c] = to_f32(v_t[kv_row + c]);
    }
    for (int e = tid; e < group * d; e += blockDim.x) qq[e] = to_f32(q_t[q_row + e]) * scale;
    for (int i = tid; i < slots; i += blockDim.x) {
        const float log_a = log_sigmoid_f(gsa_pool(k_t + kv_row, i, d / slots)) * inv_normalizer;
        a[i] = expf(log_a);
        w[i] = -expm1f(log_a);
    }
    __syncthreads();
    for (int e = tid; e < slots * d; e += blockDim.x) {
        const int i = e / d;
        K[e] = fmaf(a[i], K[e], w[i] * kv[e % d]);
    }
    __syncthreads();
    // Scores, a warp per (query head, slot).
    for (int hi = warp; hi < group * slots; hi += warps) {
        const int h = hi / slots, i = hi % slots;
        float acc = 0.0f;
        for (int c = lane; c < d; c += 32) acc += K[(long long)i * d + c] * qq[h * d + c];
        acc = warp_sum(acc);
        if (lane == 0) p[hi] = acc;
    }
    __syncthreads();
    for (int h = warp; h < group; h += warps) {
        float m = -POS_INFINITY;
        for (int i = lane; i < slots; i += 32) m = fmaxf(m, p[h * slots + i]);
        m = warp_max(m);
        float sum = 0.0f;
        for (int i = lane; i < slots; i += 32) sum += expf(p[h * slots + i] - m);
        const float inv = 1.0f / warp_sum(sum);
        __syncwarp();
        for (int i = lane; i < slots; i += 32) p[h * slots + i] = expf(p[h * slots + i] - m) * inv;
    }
    __syncthreads();
    // Value slots: every (slot, column) at once.
    for (int e = tid; e < slots * d; e += blockDim.x) {
        const int i = e / d;
        V[e] = fmaf(a[i], V[e], w[i] * vv[e % d]);
    }
    __syncthreads();
    // Read-out per query head: thread (part, column) sums its share of the slots, then the
    // parts are added (`oo` holds the parts x d partial sums; threads past them idle).
    const int parts = blockDim.x / d, part = tid / d, c = tid % d;
    for (int h = 0; h < group; ++h) {
        if (part < parts) {
            float acc = 0.0f;
            for (int i = part; i < slots; i += parts) acc = fmaf(p[h * slots + i], V[(long long)i * d + c], acc);
            oo[part * d + c] = acc;
        }
        __syncthreads();
        if (tid < d) {
            float sum = 0.0f;
            for (int k = 0; k < parts; ++k) sum += oo[k * d + tid];
            o_t[q_row + h * d + tid] = from_f32<T>(sum);
        }
        __syncthreads();
    }
}

#define GSA_KERNELS(T, SUFFIX)                                                                                                              \
    extern "C" __global__ void gsa_inputs_##SUFFIX(const T* q, const T* k, const T* v, float* qs, float* kf, float* vf, float* write,     \
                                                   float* decay, long long q_rows, long long kv_rows, int d, int slots, float scale,       \
                                                   float inv_normalizer) {                                                                 \
        gsa_inputs<T>(q, k, v, qs, kf, vf, write, decay, q_rows, kv_rows, d, slots, scale, inv_normalizer);                                 \
    }                                                                                                                                       \
    extern "C" __global__ void gsa_backward_finish_##SUFFIX(const GsaGrads g, const T* k, T* dq, T* dk, T* dv) {                          \
        gsa_backward_finish<T>(g, k, dq, dk, dv);                                                                                           \
    }                                                                                                                                       \
    extern "C" __global__ void gsa_step_##SUFFIX(float* state, const T* q_t, const T* k_t, const T* v_t, T* o_t, int hkv, int group, int d, \
                                                 int slots, float scale, float inv_normalizer) {                                            \
        gsa_step<T>(state, q_t, k_t, v_t, o_t, hkv, group, d, slots, scale, inv_normalizer);                                                \
    }

GSA_KERNELS(float, f32)
GSA_KERNELS(bf16, bf16)
