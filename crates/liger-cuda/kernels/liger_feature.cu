// Feature maps and gate of the Liger GLA mixer, per token and head (a row of d values):
//   phi(x) = softmax(x) over the head dim (queries and keys),
//   log a  = logsigmoid(k) / gate_normalizer (the gate is built from the key itself).
// One warp per row: head dims are small (64 in the default model).

__device__ __forceinline__ float softplusf(float x) { return x > 0.0f ? x + log1pf(expf(-x)) : log1pf(expf(x)); }
__device__ __forceinline__ float log_sigmoidf(float x) { return -softplusf(-x); }
__device__ __forceinline__ float stable_sigmoidf(float x) {
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    const float e = expf(x);
    return e / (1.0f + e);
}

// Row index of this warp, or -1 past the end. Blocks hold blockDim.x / 32 rows.
__device__ __forceinline__ long long warp_row(int rows) {
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    return row < rows ? row : -1;
}

// y = softmax(x) over one row, max-subtracted. Called by a whole warp.
__device__ void warp_softmax(const float* x, float* y, int d) {
    const int lane = threadIdx.x & 31;
    float max = -POS_INFINITY;
    for (int i = lane; i < d; i += 32) max = fmaxf(max, x[i]);
    max = warp_max(max);
    float sum = 0.0f;
    for (int i = lane; i < d; i += 32) sum += expf(x[i] - max);
    const float inv = 1.0f / warp_sum(sum);
    for (int i = lane; i < d; i += 32) y[i] = expf(x[i] - max) * inv;
}

// sum(a * b) over one row. Called by a whole warp; every lane gets the result.
__device__ float warp_dot(const float* a, const float* b, int d) {
    float acc = 0.0f;
    for (int i = threadIdx.x & 31; i < d; i += 32) acc += a[i] * b[i];
    return warp_sum(acc);
}

extern "C" __global__ void softmax_rows_f32(const float* x, float* y, int rows, int d) {
    const long long row = warp_row(rows);
    if (row < 0) return;
    warp_softmax(x + row * d, y + row * d, d);
}

extern "C" __global__ void softmax_rows_backward_f32(const float* y, const float* dy, float* dx, int rows, int d) {
    const long long row = warp_row(rows);
    if (row < 0) return;
    const float *yr = y + row * d, *dyr = dy + row * d;
    const float dot = warp_dot(yr, dyr, d);
    // dx = y * (dy - sum(y * dy))
    for (int i = threadIdx.x & 31; i < d; i += 32) dx[row * d + i] = yr[i] * (dyr[i] - dot);
}

// Key features kf = softmax(k) and log-gates g = logsigmoid(k) / gate_normalizer.
extern "C" __global__ void gla_key_features_f32(const float* k, float* kf, float* g, int rows, int d, float gate_normalizer) {
    const long long row = warp_row(rows);
    if (row < 0) return;
    const float* kr = k + row * d;
    warp_softmax(kr, kf + row * d, d);
    const float inv = 1.0f / gate_normalizer;
    for (int i = threadIdx.x & 31; i < d; i += 32) g[row * d + i] = log_sigmoidf(kr[i]) * inv;
}

// dk = softmax backward of dkf through kf, plus dg * sigmoid(-k) / gate_normalizer
// (d logsigmoid(x) / dx = sigmoid(-x)).
extern "C" __global__ void gla_key_features_backward_f32(const float* k, const float* kf, const float* dkf, const float* dg,
                                                         float* dk, int rows, int d, float gate_normalizer) {
    const long long row = warp_row(rows);
    if (row < 0) return;
    const float *kr = k + row * d, *kfr = kf + row * d, *dkfr = dkf + row * d, *dgr = dg + row * d;
    const float dot = warp_dot(kfr, dkfr, d);
    const float inv = 1.0f / gate_normalizer;
    for (int i = threadIdx.x & 31; i < d; i += 32)
        dk[row * d + i] = kfr[i] * (dkfr[i] - dot) + dgr[i] * stable_sigmoidf(-kr[i]) * inv;
}
