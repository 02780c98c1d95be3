// Rotary position embedding, Hugging Face "rotate_half" convention: within each head of
// head_dim values, element j pairs with j + head_dim/2. Token t sits at position pos0 + t.
// One thread per (token, head, pair); x and y may be the same buffer.

__device__ void rope_rotate(const float* x, float* y, const float* inv_freq, int tokens, int heads, int head_dim, int pos0,
                            float direction) {
    const int half = head_dim / 2;
    const size_t pairs = (size_t)tokens * heads * half;
    for (size_t idx = global_index(); idx < pairs; idx += grid_stride()) {
        const int j = (int)(idx % half);
        const size_t token_head = idx / half;
        const size_t t = token_head / heads;
        const size_t base = token_head * head_dim;  // row t, head h: (t * heads + h) * head_dim
        const float pos = (float)(pos0 + (long long)t);
        float s, c;
        sincosf(pos * inv_freq[j], &s, &c);
        s *= direction;  // the backward rotates by the negated angle (the transpose)
        const float a = x[base + j], b = x[base + j + half];
        y[base + j] = a * c - b * s;
        y[base + j + half] = b * c + a * s;
    }
}

extern "C" __global__ void rope_forward_f32(const float* x, float* y, const float* inv_freq, int tokens, int heads, int head_dim,
                                            int pos0) {
    rope_rotate(x, y, inv_freq, tokens, heads, head_dim, pos0, 1.0f);
}

extern "C" __global__ void rope_backward_f32(const float* dy, float* dx, const float* inv_freq, int tokens, int heads,
                                             int head_dim, int pos0) {
    rope_rotate(dy, dx, inv_freq, tokens, heads, head_dim, pos0, -1.0f);
}
