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

// The forward of a float input writing two outputs at once: y in float and y_t, its copy in
// T for the products with frozen weights (one pass instead of a norm and a cast).
template <typename T>
__device__ void rms_norm_forward_pair(const float* x, const float* w, float* y, T* y_t, float* rstd_out, int cols, float eps) {
    const size_t row = blockIdx.x;
    const float* xr = x + row * cols;
    float sum_sq = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) sum_sq += xr[i] * xr[i];
    sum_sq = block_sum(sum_sq);
    const float rstd = 1.0f / sqrtf(sum_sq / cols + eps);
    if (threadIdx.x == 0) rstd_out[row] = rstd;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = xr[i] * rstd * w[i];
        y[row * cols + i] = v;
        y_t[row * cols + i] = from_f32<T>(v);
    }
}

extern "C" __global__ void rms_norm_forward_pair_f32(const float* x, const float* w, float* y, float* y_t, float* rstd, int cols,
                                                     float eps) {
    rms_norm_forward_pair(x, w, y, y_t, rstd, cols, eps);
}

extern "C" __global__ void rms_norm_forward_pair_bf16(const float* x, const float* w, float* y, bf16* y_t, float* rstd, int cols,
                                                      float eps) {
    rms_norm_forward_pair(x, w, y, y_t, rstd, cols, eps);
}

// dx = dy * w * rstd - x * (sum_j dy_j w_j x_j) * rstd^3 / cols, written (ACCUMULATE false) or
// added to dx (true: the residual path's gradient is already there). Writes each row's rstd
// (for rms_norm_backward_weight). One block per row.
template <bool ACCUMULATE>
__device__ void rms_norm_backward(const float* x, const float* w, const float* dy, float* dx, float* rstd_out, int cols, float eps) {
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
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float g = dyr[i] * w[i] * rstd - xr[i] * c;
        dxr[i] = ACCUMULATE ? dxr[i] + g : g;
    }
}

extern "C" __global__ void rms_norm_backward_f32(const float* x, const float* w, const float* dy, float* dx, float* rstd_out,
                                                 int cols, float eps) {
    rms_norm_backward<false>(x, w, dy, dx, rstd_out, cols, eps);
}

extern "C" __global__ void rms_norm_backward_add_f32(const float* x, const float* w, const float* dy, float* dx, float* rstd_out,
                                                     int cols, float eps) {
    rms_norm_backward<true>(x, w, dy, dx, rstd_out, cols, eps);
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
