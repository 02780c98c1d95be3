// AdamW with decoupled weight decay, and the two pieces of global-norm gradient clipping.

// One AdamW step. step_size = lr / (1 - beta1^t) and bc2_sqrt = sqrt(1 - beta2^t) are computed
// on the host in double precision, exactly as the CPU optimizer does.
extern "C" __global__ void adamw_step_f32(float* param, const float* grad, float* m, float* v, unsigned long long n, float lr,
                                          float beta1, float beta2, float eps, float weight_decay, float step_size,
                                          float bc2_sqrt) {
    for (size_t i = global_index(); i < n; i += grid_stride()) {
        const float g = grad[i];
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float p = param[i];
        p -= lr * weight_decay * p;
        p -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
        param[i] = p;
    }
}

// partial[block] = sum of x^2 over the elements this block visits; the host adds the partials
// in double precision.
extern "C" __global__ void sum_squares_f32(const float* x, unsigned long long n, float* partial) {
    float acc = 0.0f;
    for (size_t i = global_index(); i < n; i += grid_stride()) acc += x[i] * x[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// x *= scale, in place.
extern "C" __global__ void scale_f32(float* x, unsigned long long n, float scale) {
    for (size_t i = global_index(); i < n; i += grid_stride()) x[i] *= scale;
}
