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
