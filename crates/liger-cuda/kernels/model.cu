// The glue of the whole-model forward and backward: conversions between the float work
// buffers and the storage type, residual adds, biases, batched RoPE and random fills.
// CPU twins: the elementwise steps of `liger_core::convert` (model.rs, backward.rs).

// The elementwise kernels below read and write four values per thread and access where the
// buffers allow (they are launched over n / 4 threads), then the tail one by one.

// y = s * x, stored as T (a cast when s = 1). x and y may not overlap.
template <typename T>
__device__ void scale_to(const float* x, T* y, size_t n, float s) {
    const size_t quads = quad_aligned(x) && quad_aligned(y) ? n / 4 : 0;
    for (size_t q = global_index(); q < quads; q += grid_stride()) {
        const float4 v = load_quad(x, 4 * q);
        store_quad(y, 4 * q, make_float4(s * v.x, s * v.y, s * v.z, s * v.w));
    }
    for (size_t i = 4 * quads + global_index(); i < n; i += grid_stride()) y[i] = from_f32<T>(s * x[i]);
}

extern "C" __global__ void scale_to_f32(const float* x, float* y, unsigned long long n, float s) { scale_to(x, y, n, s); }
extern "C" __global__ void scale_to_bf16(const float* x, bf16* y, unsigned long long n, float s) { scale_to(x, y, n, s); }

// y = s * x (accumulate = 0) or y += s * x (accumulate = 1), x stored as T, y float.
template <typename T>
__device__ void widen(const T* x, float* y, size_t n, float s, int accumulate) {
    for (size_t i = global_index(); i < n; i += grid_stride()) {
        const float v = s * to_f32(x[i]);
        y[i] = accumulate ? y[i] + v : v;
    }
}

extern "C" __global__ void widen_f32(const float* x, float* y, unsigned long long n, float s, int accumulate) {
    widen(x, y, n, s, accumulate);
}
extern "C" __global__ void widen_bf16(const bf16* x, float* y, unsigned long long n, float s, int accumulate) {
    widen(x, y, n, s, accumulate);
}

// The two branches of a Liger layer mixed: o = alpha * g + beta * a (g the gated mixer's output,
// a the window attention's, stored as T), and o's copy in T for the o projection, in one pass.
template <typename T>
__device__ void liger_mix_to(const float* g, const T* a, float* o, T* o_t, size_t n, float alpha, float beta) {
    const size_t quads = quad_aligned(g) && quad_aligned(a) && quad_aligned(o) && quad_aligned(o_t) ? n / 4 : 0;
    for (size_t q = global_index(); q < quads; q += grid_stride()) {
        const float4 gv = load_quad(g, 4 * q), av = load_quad(a, 4 * q);
        const float4 v = make_float4(alpha * gv.x + beta * av.x, alpha * gv.y + beta * av.y, alpha * gv.z + beta * av.z, alpha * gv.w + beta * av.w);
        store_quad(o, 4 * q, v);
        store_quad(o_t, 4 * q, v);
    }
    for (size_t i = 4 * quads + global_index(); i < n; i += grid_stride()) {
        const float v = alpha * g[i] + beta * to_f32(a[i]);
        o[i] = v;
        o_t[i] = from_f32<T>(v);
    }
}

extern "C" __global__ void liger_mix_to_f32(const float* g, const float* a, float* o, float* o_t, unsigned long long n, float alpha,
                                            float beta) {
    liger_mix_to(g, a, o, o_t, n, alpha, beta);
}
extern "C" __global__ void liger_mix_to_bf16(const float* g, const bf16* a, float* o, bf16* o_t, unsigned long long n, float alpha,
                                             float beta) {
    liger_mix_to(g, a, o, o_t, n, alpha, beta);
}

// y = s * x (f32) and z = t * x (stored as T) in one pass: the gradient of a mixed output
// split between the two branches.
template <typename T>
__device__ void scale_pair(const float* x, float* y, T* z, size_t n, float s, float t) {
    const size_t quads = quad_aligned(x) && quad_aligned(y) && quad_aligned(z) ? n / 4 : 0;
    for (size_t q = global_index(); q < quads; q += grid_stride()) {
        const float4 v = load_quad(x, 4 * q);
        store_quad(y, 4 * q, make_float4(s * v.x, s * v.y, s * v.z, s * v.w));
        store_quad(z, 4 * q, make_float4(t * v.x, t * v.y, t * v.z, t * v.w));
    }
    for (size_t i = 4 * quads + global_index(); i < n; i += grid_stride()) {
        y[i] = s * x[i];
        z[i] = from_f32<T>(t * x[i]);
    }
}

extern "C" __global__ void scale_pair_f32(const float* x, float* y, float* z, unsigned long long n, float s, float t) {
    scale_pair(x, y, z, n, s, t);
}
extern "C" __global__ void scale_pair_bf16(const float* x, float* y, bf16* z, unsigned long long n, float s, float t) {
    scale_pair(x, y, z, n, s, t);
}

// x *= s, in place.
extern "C" __global__ void scale_in_place_f32(float* x, unsigned long long n, float s) {
    for (size_t i = global_index(); i < n; i += grid_stride()) x[i] *= s;
}

// x = value everywhere.
extern "C" __global__ void fill_f32(float* x, unsigned long long n, float value) {
    for (size_t i = global_index(); i < n; i += grid_stride()) x[i] = value;
}

// The normalised recurrent branch (CPU twins: liger::liger_attention::grm_normalize and its backward):
// o = n / (den + eps) in place on n; and from d_o, den and the normalised o,
// d_n = d_o / (den + eps), d_den = -d_n * o.
extern "C" __global__ void grm_normalize_f32(float* n, const float* den, unsigned long long count, float eps) {
    for (size_t i = global_index(); i < count; i += grid_stride()) n[i] /= den[i] + eps;
}
extern "C" __global__ void grm_normalize_backward_f32(const float* d_o, const float* den, const float* o, float* d_n, float* d_den,
                                                      unsigned long long count, float eps) {
    for (size_t i = global_index(); i < count; i += grid_stride()) {
        const float g = d_o[i] / (den[i] + eps);
        d_n[i] = g;
        d_den[i] = -g * o[i];
    }
}

// y[r, c] += bias[c] for rows of `cols` values.
extern "C" __global__ void add_bias_rows_f32(float* y, const float* bias, unsigned long long n, int cols) {
    for (size_t i = global_index(); i < n; i += grid_stride()) y[i] += bias[i % cols];
}

// RoPE ("rotate_half": element j pairs with j + d/2) over a batch: rows are (sequence b,
// token t) with `tokens` tokens per sequence, each `heads` heads of d values; token t of
// sequence b sits at position start[b] + t. The angle is computed in double precision, as
// the CPU does, so long positions lose nothing.
__device__ __forceinline__ void rope_angle(const float* inv_freq, const u32* start, int tokens, size_t row, int j, float* c,
                                           float* s) {
    const size_t b = row / tokens, t = row % tokens;
    const double angle = (double)(start[b] + t) * (double)inv_freq[j];
    *c = (float)cos(angle);
    *s = (float)sin(angle);
}

// Forward: y (stored as T) = rotate(x).
template <typename T>
__device__ void rope_forward_to(const float* x, T* y, const float* inv_freq, const u32* start, int rows, int tokens, int heads,
                                int d) {
    const int half = d / 2;
    const size_t pairs = (size_t)rows * heads * half;
    for (size_t idx = global_index(); idx < pairs; idx += grid_stride()) {
        const int j = (int)(idx % half);
        const size_t row_head = idx / half, row = row_head / heads, base = row_head * d;
        float c, s;
        rope_angle(inv_freq, start, tokens, row, j, &c, &s);
        const float a = x[base + j], b = x[base + j + half];
        y[base + j] = from_f32<T>(a * c - b * s);
        y[base + j + half] = from_f32<T>(b * c + a * s);
    }
}

extern "C" __global__ void rope_forward_to_f32(const float* x, float* y, const float* inv_freq, const u32* start, int rows,
                                               int tokens, int heads, int d) {
    rope_forward_to(x, y, inv_freq, start, rows, tokens, heads, d);
}
extern "C" __global__ void rope_forward_to_bf16(const float* x, bf16* y, const float* inv_freq, const u32* start, int rows,
                                                int tokens, int heads, int d) {
    rope_forward_to(x, y, inv_freq, start, rows, tokens, heads, d);
}

// Backward: dx (float) += s * rotate_back(dy), dy stored as T.
template <typename T>
__device__ void rope_backward_add(const T* dy, float* dx, const float* inv_freq, const u32* start, int rows, int tokens,
                                  int heads, int d, float scale) {
    const int half = d / 2;
    const size_t pairs = (size_t)rows * heads * half;
    for (size_t idx = global_index(); idx < pairs; idx += grid_stride()) {
        const int j = (int)(idx % half);
        const size_t row_head = idx / half, row = row_head / heads, base = row_head * d;
        float c, s;
        rope_angle(inv_freq, start, tokens, row, j, &c, &s);
        const float a = to_f32(dy[base + j]), b = to_f32(dy[base + j + half]);
        dx[base + j] += scale * (a * c + b * s);
        dx[base + j + half] += scale * (b * c - a * s);
    }
}

extern "C" __global__ void rope_backward_add_f32(const float* dy, float* dx, const float* inv_freq, const u32* start, int rows,
                                                 int tokens, int heads, int d, float scale) {
    rope_backward_add(dy, dx, inv_freq, start, rows, tokens, heads, d, scale);
}
extern "C" __global__ void rope_backward_add_bf16(const bf16* dy, float* dx, const float* inv_freq, const u32* start, int rows,
                                                  int tokens, int heads, int d, float scale) {
    rope_backward_add(dy, dx, inv_freq, start, rows, tokens, heads, d, scale);
}

// Uniform values in [center - spread, center + spread) from a counter-based hash of (seed, i):
// random weights of any size made on the GPU, for benchmarks.
__device__ __forceinline__ float hash_uniform(unsigned long long seed, size_t i) {
    unsigned long long z = seed + 0x9e3779b97f4a7c15ull * (i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);  // 24 bits: [0, 1)
}

template <typename T>
__device__ void fill_uniform(T* y, size_t n, unsigned long long seed, float center, float spread) {
    for (size_t i = global_index(); i < n; i += grid_stride())
        y[i] = from_f32<T>(center + spread * (2.0f * hash_uniform(seed, i) - 1.0f));
}

extern "C" __global__ void fill_uniform_f32(float* y, unsigned long long n, unsigned long long seed, float center, float spread) {
    fill_uniform(y, n, seed, center, spread);
}
extern "C" __global__ void fill_uniform_bf16(bf16* y, unsigned long long n, unsigned long long seed, float center, float spread) {
    fill_uniform(y, n, seed, center, spread);
}
