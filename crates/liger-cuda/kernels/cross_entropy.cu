// Cross-entropy over one chunk of logit rows (rows x vocab), in place: the host computes a
// few rows of logits at a time with a GEMM, so the full T x vocab logits never exist.
// For a counted row: loss[r] = logsumexp(z) - z[label], and z becomes
// grad_scale * (softmax(z) - onehot(label)). An ignored row (label == IGNORE) gets loss 0 and
// a zero gradient. Labels are checked against the vocabulary on the host. One block per row.

#define IGNORE_LABEL 0xffffffffu

extern "C" __global__ void cross_entropy_rows_f32(float* logits, const u32* labels, float* loss, int vocab, float grad_scale) {
    const size_t row = blockIdx.x;
    float* z = logits + row * vocab;
    const u32 label = labels[row];
    if (label == IGNORE_LABEL) {
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) z[i] = 0.0f;
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
    const float z_label = z[label];
    __syncthreads();  // every thread has read z[label] before any thread overwrites it
    if (threadIdx.x == 0) loss[row] = lse - z_label;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float p = expf(z[i] - lse) * grad_scale;
        z[i] = (u32)i == label ? p - grad_scale : p;
    }
}
