// SwiGLU of the MLP: a = silu(g) * u, elementwise, and its backward.

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

template <typename T>
__device__ void swiglu_forward(const T* gate, const T* up, T* out, size_t n) {
    for (size_t i = global_index(); i < n; i += grid_stride()) {
        const float g = to_f32(gate[i]);
        out[i] = from_f32<T>(g * sigmoidf(g) * to_f32(up[i]));
    }
}

extern "C" __global__ void swiglu_forward_f32(const float* gate, const float* up, float* out, unsigned long long n) {
    swiglu_forward(gate, up, out, n);
}

extern "C" __global__ void swiglu_forward_bf16(const bf16* gate, const bf16* up, bf16* out, unsigned long long n) {
    swiglu_forward(gate, up, out, n);
}

// dg = da * u * s * (1 + g * (1 - s)) with s = sigmoid(g); du = da * silu(g). The gradients
// are stored as T: the type the next GEMM (with the frozen gate and up weights) reads.
__device__ __forceinline__ void swiglu_grads(float g, float u, float da, float* dg, float* du) {
    const float s = sigmoidf(g);
    *du = da * g * s;
    *dg = da * u * s * (1.0f + g * (1.0f - s));
}

// Four values per thread and access where the buffers allow (launched over n / 4 threads),
// then the tail one by one.
template <typename T>
__device__ void swiglu_backward(const float* gate, const float* up, const float* da, T* dgate, T* dup, size_t n) {
    const bool quads_ok = quad_aligned(gate) && quad_aligned(up) && quad_aligned(da) && quad_aligned(dgate) && quad_aligned(dup);
    const size_t quads = quads_ok ? n / 4 : 0;
    for (size_t q = global_index(); q < quads; q += grid_stride()) {
        const float4 g = load_quad(gate, 4 * q), u = load_quad(up, 4 * q), d = load_quad(da, 4 * q);
        float4 dg, du;
        swiglu_grads(g.x, u.x, d.x, &dg.x, &du.x);
        swiglu_grads(g.y, u.y, d.y, &dg.y, &du.y);
        swiglu_grads(g.z, u.z, d.z, &dg.z, &du.z);
        swiglu_grads(g.w, u.w, d.w, &dg.w, &du.w);
        store_quad(dgate, 4 * q, dg);
        store_quad(dup, 4 * q, du);
    }
    for (size_t i = 4 * quads + global_index(); i < n; i += grid_stride()) {
        float dg, du;
        swiglu_grads(gate[i], up[i], da[i], &dg, &du);
        dgate[i] = from_f32<T>(dg);
        dup[i] = from_f32<T>(du);
    }
}

extern "C" __global__ void swiglu_backward_f32(const float* gate, const float* up, const float* da, float* dgate, float* dup,
                                               unsigned long long n) {
    swiglu_backward(gate, up, da, dgate, dup, n);
}

extern "C" __global__ void swiglu_backward_to_bf16(const float* gate, const float* up, const float* da, bf16* dgate, bf16* dup,
                                                   unsigned long long n) {
    swiglu_backward(gate, up, da, dgate, dup, n);
}

// The training forward: f32 gate and up, the product stored as bf16 for the down projection;
// four values per thread and access where the buffers allow (launched over n / 4 threads).
extern "C" __global__ void swiglu_forward_to_bf16(const float* gate, const float* up, bf16* out, unsigned long long n) {
    const size_t quads = quad_aligned(gate) && quad_aligned(up) && quad_aligned(out) ? n / 4 : 0;
    for (size_t q = global_index(); q < quads; q += grid_stride()) {
        const float4 g = load_quad(gate, 4 * q), u = load_quad(up, 4 * q);
        store_quad(out, 4 * q, make_float4(g.x * sigmoidf(g.x) * u.x, g.y * sigmoidf(g.y) * u.y, g.z * sigmoidf(g.z) * u.z, g.w * sigmoidf(g.w) * u.w));
    }
    for (size_t i = 4 * quads + global_index(); i < n; i += grid_stride()) {
        const float g = gate[i];
        out[i] = from_f32<bf16>(g * sigmoidf(g) * up[i]);
    }
}
