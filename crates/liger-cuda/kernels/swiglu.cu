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
template <typename T>
__device__ void swiglu_backward(const float* gate, const float* up, const float* da, T* dgate, T* dup, size_t n) {
    for (size_t i = global_index(); i < n; i += grid_stride()) {
        const float g = gate[i], s = sigmoidf(g);
        dup[i] = from_f32<T>(da[i] * g * s);
        dgate[i] = from_f32<T>(da[i] * up[i] * s * (1.0f + g * (1.0f - s)));
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

// The training forward: f32 gate and up, the product stored as bf16 for the down projection.
extern "C" __global__ void swiglu_forward_to_bf16(const float* gate, const float* up, bf16* out, unsigned long long n) {
    for (size_t i = global_index(); i < n; i += grid_stride()) {
        const float g = gate[i];
        out[i] = from_f32<bf16>(g * sigmoidf(g) * up[i]);
    }
}
