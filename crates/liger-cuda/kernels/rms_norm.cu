// RMSNorm over rows of `cols` values: y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps).
// One block per row; the weight is always float (it is small), x and y may be bf16.

template <typename T>
__device__ void rms_norm_forward(const T* x, const float* w, T* y, float* rstd_out, int cols, float eps) {
    const size_t row = blockIdx.x;
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    float sum_sq = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = to_f32(xr[i]);
        sum_sq += v * v;
    }
    sum_sq = block_sum(sum_sq);
    const float rstd = 1.0f / sqrtf(sum_sq / cols + eps);
    if (threadIdx.x == 0) rstd_out[row] = rstd;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) yr[i] = from_f32<T>(to_f32(xr[i]) * rstd * w[i]);
}

extern "C" __global__ void rms_norm_forward_f32(const float* x, const float* w, float* y, float* rstd, int cols, float eps) {
    rms_norm_forward(x, w, y, rstd, cols, eps);
}

extern "C" __global__ void rms_norm_forward_bf16(const bf16* x, const float* w, bf16* y, float* rstd, int cols, float eps) {
    rms_norm_forward(x, w, y, rstd, cols, eps);
}

// dx = dy * w * rstd - x * (sum_j dy_j w_j x_j) * rstd^3 / cols. Writes dx and each row's rstd
// (for rms_norm_backward_weight). One block per row.
extern "C" __global__ void rms_norm_backward_f32(const float* x, const float* w, const float* dy, float* dx, float* rstd_out,
                                                 int cols, float eps) {
    const size_t row = blockIdx.x;
    const float* xr = x + row * cols;
    const float* dyr = dy + row * cols;
    float* dxr = dx + row * cols;
    float sum_sq = 0.0f, dot = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        sum_sq += xr[i] * xr[i];
        dot += dyr[i] * w[i] * xr[i];
    }
    sum_sq = block_sum(sum_sq);
    dot = block_sum(dot);
    const float rstd = 1.0f / sqrtf(sum_sq / cols + eps);
    const float c = dot * rstd * rstd * rstd / cols;
    if (threadIdx.x == 0) rstd_out[row] = rstd;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) dxr[i] = dyr[i] * w[i] * rstd - xr[i] * c;
}

// dw[i] = sum over rows of dy * x * rstd. One thread per column, so reads are coalesced.
extern "C" __global__ void rms_norm_backward_weight_f32(const float* x, const float* dy, const float* rstd, float* dw,
                                                        int rows, int cols) {
    for (size_t col = global_index(); col < (size_t)cols; col += grid_stride()) {
        float acc = 0.0f;
        for (int r = 0; r < rows; r++) acc += dy[(size_t)r * cols + col] * x[(size_t)r * cols + col] * rstd[r];
        dw[col] = acc;
    }
}
