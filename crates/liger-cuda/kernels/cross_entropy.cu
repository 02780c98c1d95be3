// Cross-entropy over one chunk of logit rows (rows x vocab): the host computes a few rows of
// float logits at a time with a GEMM, so the full T x vocab logits never exist.
// For a counted row: loss[r] = logsumexp(z) - z[label], and grad (stored as T, the type the
// next GEMM reads) = grad_scale * (softmax(z) - onehot(label)). An ignored row
// (label == IGNORE) gets loss 0 and a zero gradient. Labels are checked against the
// vocabulary on the host. One block per row.

#define IGNORE_LABEL 0xffffffffu

template <typename T>
__device__ void cross_entropy_rows(const float* logits, const u32* labels, float* loss, T* grad, int vocab, float grad_scale) {
    const size_t row = blockIdx.x;
    const float* z = logits + row * vocab;
    T* g = grad + row * vocab;
    const u32 label = labels[row];
    if (label == IGNORE_LABEL) {
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) g[i] = from_f32<T>(0.0f);
        if (threadIdx.x == 0) loss[row] = 0.0f;
        return;
    }
    float max = -POS_INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) max = fmaxf(max, z[i]);
    max = block_max(max);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) sum += expf(z[i] - max);
    sum = block_sum(sum);
    const float lse = max + logf(sum);
    if (threadIdx.x == 0) loss[row] = lse - z[label];
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float p = expf(z[i] - lse) * grad_scale;
        g[i] = from_f32<T>((u32)i == label ? p - grad_scale : p);
    }
}

extern "C" __global__ void cross_entropy_rows_f32(const float* logits, const u32* labels, float* loss, float* grad, int vocab,
                                                  float grad_scale) {
    cross_entropy_rows(logits, labels, loss, grad, vocab, grad_scale);
}

extern "C" __global__ void cross_entropy_rows_bf16(const float* logits, const u32* labels, float* loss, bf16* grad, int vocab,
                                                   float grad_scale) {
    cross_entropy_rows(logits, labels, loss, grad, vocab, grad_scale);
}

// Distillation over one chunk of logit rows: the student's logits z and the teacher's zt
// (rows x vocab, f32, through the same head). For a counted row, with p = softmax(z) and
// pt = softmax(zt): loss[r] = (1 - w) (lse(z) - z[label]) + w KL(pt || p), and
// grad = grad_scale (p - w pt - (1 - w) onehot(label)). An ignored row gets loss 0 and a zero
// gradient. CPU twin: liger_core::nn::loss::distillation_loss. One block per row.
template <typename T>
__device__ void distillation_rows(const float* logits, const float* teacher_logits, const u32* labels, float* loss, T* grad,
                                  int vocab, float grad_scale, float weight) {
    const size_t row = blockIdx.x;
    const float* z = logits + row * vocab;
    const float* zt = teacher_logits + row * vocab;
    T* g = grad + row * vocab;
    const u32 label = labels[row];
    if (label == IGNORE_LABEL) {
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) g[i] = from_f32<T>(0.0f);
        if (threadIdx.x == 0) loss[row] = 0.0f;
        return;
    }
    float max = -POS_INFINITY, max_t = -POS_INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) max = fmaxf(max, z[i]), max_t = fmaxf(max_t, zt[i]);
    max = block_max(max);
    max_t = block_max(max_t);
    float sum = 0.0f, sum_t = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) sum += expf(z[i] - max), sum_t += expf(zt[i] - max_t);
    sum = block_sum(sum);
    sum_t = block_sum(sum_t);
    const float lse = max + logf(sum), lse_t = max_t + logf(sum_t);
    float kl = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float log_pt = zt[i] - lse_t, log_p = z[i] - lse;
        const float pt = expf(log_pt);
        kl += pt * (log_pt - log_p);
        const float d = expf(log_p) - weight * pt - ((u32)i == label ? 1.0f - weight : 0.0f);
        g[i] = from_f32<T>(d * grad_scale);
    }
    kl = block_sum(kl);
    if (threadIdx.x == 0) loss[row] = (1.0f - weight) * (lse - z[label]) + weight * kl;
}

extern "C" __global__ void distillation_rows_f32(const float* logits, const float* teacher_logits, const u32* labels, float* loss,
                                                 float* grad, int vocab, float grad_scale, float weight) {
    distillation_rows(logits, teacher_logits, labels, loss, grad, vocab, grad_scale, weight);
}

extern "C" __global__ void distillation_rows_bf16(const float* logits, const float* teacher_logits, const u32* labels, float* loss,
                                                  bf16* grad, int vocab, float grad_scale, float weight) {
    distillation_rows(logits, teacher_logits, labels, loss, grad, vocab, grad_scale, weight);
}

// Scoring (evaluation): for each row, the log-probability of its target under softmax(z) and
// whether the target is the argmax (the first largest logit on ties, as the CPU scorer). Only
// these two numbers per row go back to the host instead of the vocabulary's logits. One block
// per row; a non-finite maximum is reported as NaN so the host can name it.
extern "C" __global__ void score_rows_f32(const float* logits, const u32* targets, float* logprob, u32* greedy, int vocab) {
    __shared__ float best_value[32];
    __shared__ int best_index[32];
    const size_t r = blockIdx.x;
    const float* z = logits + r * vocab;
    float value = -POS_INFINITY;
    int index = vocab;  // loses every tie
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        if (z[i] > value || index == vocab) value = z[i], index = i;
    }
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
        if (lane == 0) best_value[0] = value, best_index[0] = index;
    }
    __syncthreads();
    const float max = best_value[0];
    const int argmax = best_index[0];
    float sum = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) sum += expf(z[i] - max);
    sum = block_sum(sum);
    if (threadIdx.x == 0) {
        const u32 t = targets[r];
        logprob[r] = isfinite(max) ? z[t] - max - logf(sum) : __int_as_float(0x7fc00000);  // NaN
        greedy[r] = (u32)argmax == t ? 1u : 0u;
    }
}
