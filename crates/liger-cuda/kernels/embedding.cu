// Embedding lookup: out[t, :] = table[ids[t], :] as float. One block per token.
// Token ids are checked against the vocabulary on the host before the launch.

template <typename T>
__device__ void embedding_gather(const T* table, const u32* ids, float* out, int hidden) {
    const size_t t = blockIdx.x;
    const T* row = table + (size_t)ids[t] * hidden;
    float* dst = out + t * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = to_f32(row[i]);
}

extern "C" __global__ void embedding_gather_f32(const float* table, const u32* ids, float* out, int hidden) {
    embedding_gather(table, ids, out, hidden);
}

extern "C" __global__ void embedding_gather_bf16(const bf16* table, const u32* ids, float* out, int hidden) {
    embedding_gather(table, ids, out, hidden);
}
