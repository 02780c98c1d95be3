// Attention transfer's loss on one layer (CPU twin: liger_core::nn::loss::attention_transfer_rows).
// o is the layer's Liger attention output, target the base's softmax attention output on the
// same input (rows x width, f32). For a counted row (label != IGNORE):
//   row_loss[r] += weight * mean_j (o - target)^2,   d_o = grad_scale * weight * 2 (o - target) / width;
// an ignored row keeps its loss and gets a zero gradient. row_loss adds up over the layers of
// one step. One block per row.

#define IGNORE_LABEL 0xffffffffu

extern "C" __global__ void attention_transfer_rows_f32(const float* o, const float* target, const u32* labels,
                                                       float* d_o, float* row_loss, int width, float weight,
                                                       float grad_scale) {
    const size_t r = blockIdx.x;
    const bool counted = labels[r] != IGNORE_LABEL;
    const float scale = counted ? 2.0f * weight * grad_scale / (float)width : 0.0f;
    float sum = 0.0f;
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        const size_t i = r * (size_t)width + j;
        const float diff = o[i] - target[i];
        sum += diff * diff;
        d_o[i] = scale * diff;
    }
    sum = block_sum(sum);
    if (threadIdx.x == 0 && counted) row_loss[r] += weight * sum / (float)width;
}
