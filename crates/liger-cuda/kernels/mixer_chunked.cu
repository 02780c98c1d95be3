// The gated mixers' recurrence in chunked form, on tensor cores (bf16 in, fp32 accumulate), for
// head sizes 64 and 128: a drop-in for the scans of mixer_gated.cu that takes the same f32
// feature maps (qf, kf, decay, vf) and writes the same outputs (o; dqf, dkf, dvf).
//
// Per key dim k, S_t = a_t S_{t-1} + kf_t^T v_t and o_t = qf_t S_t. Time is cut into chunks of
// CHUNK tokens; G_t = sum of log a over the chunk up to t (inclusive), so that
//   S_t = exp(G_t) S_0 + sum_{j<=t} exp(G_t - G_j) kf_j^T v_j        (S_0: the chunk's start)
//   o_t = (qf_t exp(G_t)) S_0 + sum_{j<=t} A_tj v_j,   A_tj = sum_k qf_tk kf_jk exp(G_tk - G_jk).
// Every exponent used is <= 0 (nothing overflows): the scores A between different sub-chunks
// of SUB tokens come from a product of factors both decayed to a reference token r between
// them, (qf_t exp(G_t - G_r)) . (kf_j exp(G_r - G_j)); the SUB x SUB diagonal blocks are
// summed directly in fp32. The chunks' states come in three steps (mixer/chunked.rs):
// 1. mixer_chunk_states: each chunk's end state from zero, (kf exp(G_last - G))^T v, and its
//    decay product exp(G_last);
// 2. mixer_segment_carry (mixer_gated.cu) walks the chunks: true start states;
// 3. mixer_chunk_output: o per chunk and query head.
//
// Why this split: the chunk products are dense matrix products (tensor cores), the scan's
// token-by-token dependence is left only in the short carry over chunks.

#define CHUNK 64
#define SUB 16
// log(decay) is clamped here: a decay that underflowed to 0 would give -inf, and -inf - -inf.
#define LOG_DECAY_FLOOR -87.0f

typedef unsigned short u16;

// Device pointers (null where a kernel does not use one) and sizes; ChunkParams in chunked.rs.
struct ChunkParams {
    const float* qf;     // [B, T, hkv * group, d]
    const float* kf;     // [B, T, hkv, d]
    const float* decay;  // [B, T, hkv, d]: exp(log-gate) <= 1
    const float* vf;     // [B, T, hkv, d]
    float* states;       // [B, chunks, hkv, d, d]: chunk end states from zero, then start states
    float* products;     // [B, chunks, hkv, d]: exp(G_last)
    bf16* o;             // [B, T, hkv * group, d]
    int batch, tokens, hkv, group, chunks;
};

__device__ __forceinline__ u16 bf16_bits(float x) { return from_f32<bf16>(x).bits; }

// Row t of this chunk of head `head` of a [B, T, heads, D] tensor.
template <int D> __device__ __forceinline__ size_t chunk_row(const ChunkParams& p, int b, int t0, int t, int heads, int head) {
    return (((size_t)b * p.tokens + t0 + t) * heads + head) * D;
}

// G[t][k]: the cumulative log decay of the chunk (tokens past `len` add nothing). One thread per key dim.
template <int D> __device__ void chunk_log_decays(const ChunkParams& p, int b, int kvh, int t0, int len, float (*G)[D]) {
    for (int k = threadIdx.x; k < D; k += blockDim.x) {
        float acc = 0.0f;
#pragma unroll 8
        for (int t = 0; t < CHUNK; ++t) {
            if (t < len) acc += fmaxf(logf(p.decay[chunk_row<D>(p, b, t0, t, p.hkv, kvh) + k]), LOG_DECAY_FLOOR);
            G[t][k] = acc;
        }
    }
}

// acc (16 x 8 NT, f32) += A (16 x K) B, A row major in shared memory (row stride lda), B given
// as its transpose Bt (8 NT rows of K, stride ldb); K a multiple of 16. Only the first `nt` of
// the NT column tiles are computed. Whole warp.
template <int NT>
__device__ __forceinline__ void warp_mma(float (&acc)[NT][4], const u16* A, int lda, const u16* Bt, int ldb, int K, int nt = NT) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t2 = 2 * (lane & 3);
    for (int k0 = 0; k0 < K; k0 += 16) {
        u32 a[4];
        a[0] = *(const u32*)(A + g * lda + k0 + t2);
        a[1] = *(const u32*)(A + (g + 8) * lda + k0 + t2);
        a[2] = *(const u32*)(A + g * lda + k0 + t2 + 8);
        a[3] = *(const u32*)(A + (g + 8) * lda + k0 + t2 + 8);
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            if (n >= nt) break;
            const u16* bp = Bt + (n * 8 + g) * ldb + k0 + t2;
            mma_bf16(acc[n], a, *(const u32*)bp, *(const u32*)(bp + 8));
        }
    }
}

__device__ __forceinline__ u32 smem_address(const void* ptr) {
    u32 addr;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }\n" : "=r"(addr) : "l"(ptr));
    return addr;
}

// As warp_mma, but B row major ([K][8 NT], stride ldb, 16-byte aligned rows): its fragments
// come transposed out of shared memory by ldmatrix.
template <int NT> __device__ __forceinline__ void warp_mma_kn(float (&acc)[NT][4], const u16* A, int lda, const u16* B, int ldb, int K) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t2 = 2 * (lane & 3);
    for (int k0 = 0; k0 < K; k0 += 16) {
        u32 a[4];
        a[0] = *(const u32*)(A + g * lda + k0 + t2);
        a[1] = *(const u32*)(A + (g + 8) * lda + k0 + t2);
        a[2] = *(const u32*)(A + g * lda + k0 + t2 + 8);
        a[3] = *(const u32*)(A + (g + 8) * lda + k0 + t2 + 8);
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            u32 b0, b1;
            const u32 addr = smem_address(B + (k0 + (lane & 15)) * ldb + n * 8);
            asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(addr));
            mma_bf16(acc[n], a, b0, b1);
        }
    }
}

template <int NT> __device__ __forceinline__ void zero_acc(float (&acc)[NT][4]) {
#pragma unroll
    for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
}

// Row and column of accumulator value i of column tile n (see warp_mma).
__device__ __forceinline__ int acc_row(int i) { return ((threadIdx.x & 31) >> 2) + 8 * (i >> 1); }
__device__ __forceinline__ int acc_col(int n, int i) { return n * 8 + 2 * (threadIdx.x & 3) + (i & 1); }

// ---- 1. chunk states ----------------------------------------------------------------------------
// One CTA of 8 warps per (chunk, kv head, sequence): the chunk's end state from zero,
// (kf exp(G_last - G))^T v, and exp(G_last). The decayed keys go in as bf16 high and low
// parts (two products), so that the carried states keep about f32 precision; v is bf16 data.
// Warp w computes rows [16 (w % RT), +16) of the d x d result, columns split CS ways.
template <int D> __device__ void chunk_states(const ChunkParams& p) {
    constexpr int LC = CHUNK + 8, RT = D / 16, CS = 8 / RT, NT = D / 8 / CS;
    extern __shared__ float4 smem4[];
    float(*G)[D] = (float(*)[D])smem4;
    u16(*hi)[LC] = (u16(*)[LC])(G + CHUNK);  // [D][LC]: decayed keys transposed (key dims, tokens), high part
    u16(*lo)[LC] = hi + D;                   // the low part
    u16(*vt)[LC] = lo + D;                   // [D][LC]: v transposed (value dims, tokens)
    const int c = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, t0 = c * CHUNK, len = min(CHUNK, p.tokens - t0);
    const int warp = threadIdx.x >> 5, rt = warp % RT, cs = warp / RT;
    const size_t seg = ((size_t)b * p.chunks + c) * p.hkv + kvh;

    chunk_log_decays<D>(p, b, kvh, t0, len, G);
    __syncthreads();
    for (int k = threadIdx.x; k < D; k += blockDim.x) p.products[seg * D + k] = expf(G[CHUNK - 1][k]);
    for (int i = threadIdx.x; i < CHUNK * D; i += blockDim.x) {
        const int t = i / D, k = i % D;
        const size_t at = chunk_row<D>(p, b, t0, t, p.hkv, kvh) + k;
        const float x = t < len ? p.kf[at] * expf(G[CHUNK - 1][k] - G[t][k]) : 0.0f;
        const u16 x_hi = bf16_bits(x);
        hi[k][t] = x_hi;
        lo[k][t] = bf16_bits(x - __uint_as_float((u32)x_hi << 16));
        vt[k][t] = bf16_bits(t < len ? p.vf[at] : 0.0f);
    }
    __syncthreads();
    float acc[NT][4];
    zero_acc(acc);
    warp_mma<NT>(acc, &hi[rt * 16][0], LC, &vt[cs * NT * 8][0], LC, CHUNK);
    warp_mma<NT>(acc, &lo[rt * 16][0], LC, &vt[cs * NT * 8][0], LC, CHUNK);
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int i = 0; i < 4; i += 2) {
            const int r = rt * 16 + acc_row(i), col = cs * NT * 8 + acc_col(n, i);
            *(float2*)(p.states + (seg * D + r) * D + col) = make_float2(acc[n][i], acc[n][i + 1]);
        }
}

// ---- 3. forward output ----------------------------------------------------------------------
// Staging rows of row block I's decayed keys (I SUB rows, none for I = 0) in a region of
// STAGE_ROWS rows: blocks 1, 2, 3 take rows [0, 16), [16, 48), [48, 96); the decayed queries
// of blocks 1-3 follow at rows [96, 144).
#define STAGE_ROWS (9 * SUB)
__device__ __forceinline__ int key_stage_offset(int I) { return SUB * ((I - 1) * I / 2); }
#define QUERY_STAGE (6 * SUB)

// One CTA of 8 warps per (chunk, query head, sequence); row block I = warp % 4 holds tokens
// [16 I, 16 I + 16):
// - scores between sub-chunks on tensor cores (warps 0-3): (qf_t exp(G_t - G_r)) .
//   (kf_j exp(G_r - G_j)), r the token before block I, every factor <= 1;
// - the diagonal 16 x 16 blocks in fp32 (warps 4-7), one lane per (t, j <= t) pair;
// - o = (qf exp(G)) S_0 + A v as one product over d + CHUNK, warps 4-7 taking the second
//   half of the value dims.
template <int D> __device__ void chunk_output(const ChunkParams& p) {
    constexpr int LD = D + 8, LC = CHUNK + 8, ST = D > STAGE_ROWS ? D : STAGE_ROWS;
    extern __shared__ float4 smem4[];
    float(*G)[D] = (float(*)[D])smem4;
    u16(*qg)[LD] = (u16(*)[LD])(G + CHUNK);  // [CHUNK][LD]: qf exp(G)
    u16(*vr)[LD] = qg + CHUNK;               // [CHUNK][LD]: v
    u16(*qr)[LD] = vr + CHUNK;               // [CHUNK][LD]: qf, for the diagonal blocks
    u16(*kr)[LD] = qr + CHUNK;               // [CHUNK][LD]: kf
    u16(*st)[LD] = kr + CHUNK;               // [ST][LD]: the staging tiles, then S_0 ([key][value])
    u16(*am)[LC] = (u16(*)[LC])(st + ST);    // [CHUNK][LC]: the scores
    const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, kvh = h / p.group, hq = p.hkv * p.group;
    const int t0 = c * CHUNK, len = min(CHUNK, p.tokens - t0), warp = threadIdx.x >> 5, lane = threadIdx.x & 31, I = warp & 3;

    chunk_log_decays<D>(p, b, kvh, t0, len, G);
    __syncthreads();
    for (int i = threadIdx.x; i < CHUNK * D; i += blockDim.x) {
        const int t = i / D, k = i % D;
        const float q = t < len ? p.qf[chunk_row<D>(p, b, t0, t, hq, h) + k] : 0.0f;
        const size_t kv = chunk_row<D>(p, b, t0, t, p.hkv, kvh) + k;
        const float key = t < len ? p.kf[kv] : 0.0f;
        qg[t][k] = bf16_bits(q * expf(G[t][k]));
        qr[t][k] = bf16_bits(q);
        kr[t][k] = bf16_bits(key);
        vr[t][k] = bf16_bits(t < len ? p.vf[kv] : 0.0f);
        // Row blocks 1-3 against the tokens before them, decayed through their reference.
        const int tb = t / SUB;
        if (tb > 0) st[QUERY_STAGE + t - SUB][k] = bf16_bits(q * expf(G[t][k] - G[tb * SUB - 1][k]));
        for (int rb = tb + 1; rb < CHUNK / SUB; ++rb) st[key_stage_offset(rb) + t][k] = bf16_bits(key * expf(G[rb * SUB - 1][k] - G[t][k]));
    }
    __syncthreads();
    if (warp < 4) {
        if (I > 0) {
            float acc[6][4];
            zero_acc(acc);
            warp_mma<6>(acc, &st[QUERY_STAGE + (I - 1) * SUB][0], LD, &st[key_stage_offset(I)][0], LD, D, 2 * I);
#pragma unroll
            for (int n = 0; n < 6; ++n) {
                if (n >= 2 * I) break;
#pragma unroll
                for (int i = 0; i < 4; i += 2) *(u32*)&am[I * SUB + acc_row(i)][acc_col(n, i)] = pack_bf16(acc[n][i], acc[n][i + 1]);
            }
        }
        // Zeros after the diagonal block.
        const int after = CHUNK - (I + 1) * SUB;
        for (int i = lane; i < SUB * after; i += 32) am[I * SUB + i / after][(I + 1) * SUB + i % after] = 0;
    } else {
        // The diagonal block: pairs (t, j) of the block, t = a, j = b, in order of a then b.
        for (int pair = lane; pair < SUB * SUB; pair += 32) {
            const int a = pair / SUB, bb = pair % SUB, t = I * SUB + a, j = I * SUB + bb;
            float s = 0.0f;
            if (bb <= a) {
                // Lanes start at different key dims: fewer shared-memory bank conflicts.
                for (int e = 0; e < D; ++e) {
                    const int k = (e + lane) & (D - 1);
                    s += __uint_as_float((u32)qr[t][k] << 16) * __uint_as_float((u32)kr[j][k] << 16) * expf(G[t][k] - G[j][k]);
                }
            }
            am[t][j] = bf16_bits(s);
        }
    }
    __syncthreads();  // the staging tiles are done: S_0 goes over them
    const float* s0 = p.states + (((size_t)b * p.chunks + c) * p.hkv + kvh) * D * D;
    for (int i = 4 * threadIdx.x; i < D * D; i += 4 * blockDim.x) {
        const float4 x = *(const float4*)(s0 + i);
        *(uint2*)&st[i / D][i % D] = make_uint2(pack_bf16(x.x, x.y), pack_bf16(x.z, x.w));
    }
    __syncthreads();
    constexpr int NT = D / 16;
    const int n0 = (warp >> 2) * (D / 2);
    float acc[NT][4];
    zero_acc(acc);
    warp_mma_kn<NT>(acc, &qg[I * SUB][0], LD, &st[0][n0], LD, D);
    warp_mma_kn<NT>(acc, &am[I * SUB][0], LC, &vr[0][n0], LD, (I + 1) * SUB);
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int i = 0; i < 4; i += 2) {
            const int t = I * SUB + acc_row(i);
            if (t < len) *(u32*)(p.o + chunk_row<D>(p, b, t0, t, hq, h) + n0 + acc_col(n, i)) = pack_bf16(acc[n][i], acc[n][i + 1]);
        }
}

#define MIXER_CHUNK_KERNELS(D)                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) mixer_chunk_states_d##D(const ChunkParams p) { chunk_states<D>(p); } \
    extern "C" __global__ void __launch_bounds__(256) mixer_chunk_output_d##D(const ChunkParams p) { chunk_output<D>(p); }

MIXER_CHUNK_KERNELS(64)
MIXER_CHUNK_KERNELS(128)
