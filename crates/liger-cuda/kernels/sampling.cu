// Picking the next token on the GPU, one block per sequence. The sampled path repeats
// liger_core::sampling::sample_with_draw step by step (same f32 operations, same order, no
// fused multiply-adds), so that it picks exactly the token the CPU sampler picks for the same
// logits and the same uniform draw.

// Greedy: the index of the largest logit, the first one on ties. logits [rows, vocab].
extern "C" __global__ void argmax_rows_f32(const float* logits, int vocab, u32* tokens) {
    __shared__ float best_value[32];
    __shared__ int best_index[32];
    const float* row = logits + (size_t)blockIdx.x * vocab;
    float value = -POS_INFINITY;
    int index = vocab;  // larger than any real index: loses every tie
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        if (row[i] > value || index == vocab) value = row[i], index = i;
    }
    // Warp, then block: larger value wins, smaller index on ties.
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float v = __shfl_xor_sync(0xffffffffu, value, offset);
        const int j = __shfl_xor_sync(0xffffffffu, index, offset);
        if (v > value || (v == value && j < index)) value = v, index = j;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) best_value[warp] = value, best_index[warp] = index;
    __syncthreads();
    if (warp == 0) {
        const bool live = lane < (int)(blockDim.x >> 5);
        value = live ? best_value[lane] : -POS_INFINITY;
        index = live ? best_index[lane] : vocab;
        for (int offset = 16; offset > 0; offset >>= 1) {
            const float v = __shfl_xor_sync(0xffffffffu, value, offset);
            const int j = __shfl_xor_sync(0xffffffffu, index, offset);
            if (v > value || (v == value && j < index)) value = v, index = j;
        }
        if (lane == 0) tokens[blockIdx.x] = (u32)(index < vocab ? index : 0);
    }
}

// The sort key of a candidate: ascending keys = most likely first (Rust's total_cmp order of
// the scaled logit, descending), then ascending token id.
__device__ __forceinline__ unsigned long long candidate_key(float scaled, u32 id) {
    u32 bits = __float_as_uint(scaled);
    bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);  // ascending as unsigned = total order
    return ((unsigned long long)(~bits) << 32) | id;
}

__device__ __forceinline__ float key_value(unsigned long long key, float temperature, const float* row) {
    return __fdiv_rn(row[(u32)key], temperature);
}

// liger_core::sampling::exp_nonpositive, operation for operation.
__device__ __forceinline__ float exp_nonpositive(float x) {
    if (x < -87.0f) return 0.0f;
    const float n = floorf(__fadd_rn(__fmul_rn(x, 1.44269502f), 0.5f));
    const float r = __fsub_rn(__fsub_rn(x, __fmul_rn(n, 0.693145751953125f)), __fmul_rn(n, 1.42860677e-6f));
    const float c[6] = {1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f};
    float p = c[0];
#pragma unroll
    for (int i = 1; i < 6; i++) p = __fadd_rn(__fmul_rn(p, r), c[i]);
    p = __fadd_rn(__fmul_rn(__fadd_rn(__fmul_rn(p, r), 1.0f), r), 1.0f);
    return __fmul_rn(p, __uint_as_float((u32)((int)n + 127) << 23));
}

// Sampled: keys [rows, padded] and probs [rows, padded] are scratch space, padded a power of
// two >= vocab. top_k = 0 keeps every token; draws[row] is the uniform number in [0, 1).
extern "C" __global__ void sample_rows_f32(const float* logits, int vocab, int padded, float temperature, int top_k,
                                           float top_p, const float* draws, unsigned long long* keys, float* probs,
                                           u32* tokens) {
    const float* row = logits + (size_t)blockIdx.x * vocab;
    unsigned long long* key = keys + (size_t)blockIdx.x * padded;
    float* prob = probs + (size_t)blockIdx.x * padded;
    for (int i = threadIdx.x; i < padded; i += blockDim.x)
        key[i] = i < vocab ? candidate_key(__fdiv_rn(row[i], temperature), (u32)i) : ~0ull;
    __syncthreads();
    // Bitonic sort, ascending, in global memory (visible to the whole block after each barrier).
    for (int size = 2; size <= padded; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < padded; i += blockDim.x) {
                const int partner = i ^ stride;
                if (partner > i) {
                    const unsigned long long a = key[i], b = key[partner];
                    const bool ascending = (i & size) == 0;
                    if ((a > b) == ascending) key[i] = b, key[partner] = a;
                }
            }
            __syncthreads();
        }
    }
    const int k = (top_k == 0 || top_k > vocab) ? vocab : top_k;
    const float max = key_value(key[0], temperature, row);
    for (int i = threadIdx.x; i < k; i += blockDim.x) prob[i] = exp_nonpositive(__fsub_rn(key_value(key[i], temperature, row), max));
    __syncthreads();
    __shared__ float sum;
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int i = 0; i < k; i++) s = __fadd_rn(s, prob[i]);
        sum = s;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < k; i += blockDim.x) prob[i] = __fdiv_rn(prob[i], sum);
    __syncthreads();
    if (threadIdx.x != 0) return;
    int kept = k;
    if (top_p < 1.0f) {
        float acc = 0.0f;
        for (int i = 0; i < k; i++) {
            acc = __fadd_rn(acc, prob[i]);
            if (acc >= top_p) {
                kept = i + 1;
                break;
            }
        }
    }
    float total = 0.0f;
    for (int i = 0; i < kept; i++) total = __fadd_rn(total, prob[i]);
    float r = __fmul_rn(draws[blockIdx.x], total);
    for (int i = 0; i < kept; i++) {
        r = __fsub_rn(r, prob[i]);
        if (r <= 0.0f) {
            tokens[blockIdx.x] = (u32)key[i];
            return;
        }
    }
    tokens[blockIdx.x] = (u32)key[kept - 1];
}
