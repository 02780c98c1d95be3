// Feature maps and gate of the Liger GLA mixer, per token and head (a row of d values):
//   phi(x) = softmax(x) over the head dim (queries and keys),
//   log a  = logsigmoid(k) / gate_normalizer (the gate is built from the key itself).
// One warp per row: head dims are small (64 in the default model).

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
    for (int i = threadIdx.x & 31; i < d; i += 32) g[row * d + i] = log_sigmoid_f(kr[i]) * inv;
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
        dk[row * d + i] = kfr[i] * (dkfr[i] - dot) + dgr[i] * sigmoid_f(-kr[i]) * inv;
}
