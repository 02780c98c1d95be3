// The gated mixers' recurrence in chunked form, on tensor cores (bf16 in, fp32 accumulate), for
// head sizes 64 and 128: a drop-in for the scans of gla_scan.cu that takes the same f32
// feature maps (qf, kf, decay, vf) and writes the same outputs (o; dqf, dkf, dvf).
//
// Per key dim k, S_t = a_t S_{t-1} + kf_t^T v_t and o_t = qf_t S_t. Time is cut into chunks of
// CHUNK tokens; G_t = sum of log a over the chunk up to t (inclusive), so that
//   S_t = exp(G_t) S_0 + sum_{j<=t} exp(G_t - G_j) kf_j^T v_j        (S_0: the chunk's start)
//   o_t = (qf_t exp(G_t)) S_0 + sum_{j<=t} A_tj v_j,   A_tj = sum_k qf_tk kf_jk exp(G_tk - G_jk).
// Every exponent used is <= 0 (nothing overflows): the scores A between different sub-chunks
// of SUB tokens come from a product of factors both decayed to a reference token r between
// them, (qf_t exp(G_t - G_r)) . (kf_j exp(G_r - G_j)); the SUB x SUB diagonal blocks are
// summed directly in fp32. The chunks' states come in three steps (ops/mixer/gla_chunk.rs):
// 1. mixer_chunk_states: each chunk's end state from zero, (kf exp(G_last - G))^T v, and its
//    decay product exp(G_last);
// 2. mixer_segment_carry (gla_scan.cu) walks the chunks: true start states;
// 3. mixer_chunk_output: o per chunk and query head.
//
// Why this split: the chunk products are dense matrix products (tensor cores), the scan's
// token-by-token dependence is left only in the short carry over chunks.

#define CHUNK 64
#define SUB 16
// log2(decay) is clamped here: a decay that underflowed to 0 would give -inf, and -inf - -inf.
// The kernels keep G in log2 units (exp2 is one instruction).
#define LOG2_DECAY_FLOOR -126.0f

typedef unsigned short u16;

// Device pointers (null where a kernel does not use one) and sizes; ChunkParams in ops/mixer/gla_chunk.rs.
struct ChunkParams {
    const float* qf;     // [B, T, hkv * group, d]
    const float* kf;     // [B, T, hkv, d]
    const float* decay;  // [B, T, hkv, d]: exp(log-gate) <= 1
    const float* vf;     // [B, T, hkv, d]
    const float* d_o;    // [B, T, hkv * group, d] (backward)
    float* states;       // [B, chunks, hkv, d, d]: chunk end states from zero, then start states
    float* rstates;      // the same for the state gradient (backward; start = arriving from later)
    float* products;     // [B, chunks, hkv, d]: exp(G_last)
    void* o;             // [B, T, hkv * group, d] (forward), bf16 or f32 (the kernel's OutT)
    float* dqf;          // [B, T, hkv * group, d] (backward)
    float* dkf;          // [B, T, hkv, d]
    float* dvf;          // [B, T, hkv, d]
    int batch, tokens, hkv, group, chunks;
};

__device__ __forceinline__ u16 bf16_bits(float x) { return from_f32<bf16>(x).bits; }

// Row t of this chunk of head `head` of a [B, T, heads, D] tensor.
template <int D> __device__ __forceinline__ size_t chunk_row(const ChunkParams& p, int b, int t0, int t, int heads, int head) {
    return (((size_t)b * p.tokens + t0 + t) * heads + head) * D;
}

// Tiles of [CHUNK][D] are loaded by the CTA's 256 threads in quads (4 values of a row, one
// 16-byte load), QUADS(D) per thread, all issued before any is used so that their latencies overlap.
#define CHUNK_THREADS 256
#define QUADS(D) (CHUNK * (D) / 4 / CHUNK_THREADS)

// Row and first column of this thread's quad u.
template <int D> __device__ __forceinline__ int quad_row(int u) { return (threadIdx.x + u * CHUNK_THREADS) / (D / 4); }
template <int D> __device__ __forceinline__ int quad_col(int u) { return (threadIdx.x + u * CHUNK_THREADS) % (D / 4) * 4; }

// This thread's quads of the chunk's rows of head `head` of a [B, T, heads, D] tensor (zeros past `len`).
template <int D>
__device__ __forceinline__ void load_quads(float4 (&out)[QUADS(D)], const float* x, const ChunkParams& p, int b, int t0, int len, int heads, int head) {
#pragma unroll
    for (int u = 0; u < QUADS(D); ++u) {
        const int t = quad_row<D>(u);
        out[u] = t < len ? *(const float4*)(x + chunk_row<D>(p, b, t0, t, heads, head) + quad_col<D>(u)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
}

__device__ __forceinline__ float quad_at(const float4& v, int e) { return e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w; }

// Four floats as bf16 into 8 bytes of shared memory.
__device__ __forceinline__ void store_bf16x4(u16* at, float a, float b, float c, float d) { *(uint2*)at = make_uint2(pack_bf16(a, b), pack_bf16(c, d)); }

// Copies a D x D f32 state from global memory into the bf16 tile `tile` (rows of LD), each
// thread its quads, every load issued before the first store.
template <int D, int LD> __device__ __forceinline__ void stage_state(const float* state, u16 (*tile)[LD]) {
    constexpr int STATE_QUADS = D * D / 4 / CHUNK_THREADS;
    float4 sq[STATE_QUADS];
#pragma unroll
    for (int u = 0; u < STATE_QUADS; ++u) sq[u] = *(const float4*)(state + 4 * (threadIdx.x + u * CHUNK_THREADS));
#pragma unroll
    for (int u = 0; u < STATE_QUADS; ++u) {
        const int i = 4 * (threadIdx.x + u * CHUNK_THREADS);
        store_bf16x4(&tile[i / D][i % D], sq[u].x, sq[u].y, sq[u].z, sq[u].w);
    }
}

// G[t][k] in log2 units: the cumulative log2 decay of the chunk up to t (tokens past `len` add
// nothing). Every thread of the CTA, with its decay quads; ends synchronised.
template <int D> __device__ void chunk_log_decays(const float4 (&dec)[QUADS(D)], int len, float (*G)[D]) {
#pragma unroll
    for (int u = 0; u < QUADS(D); ++u) {
        const int t = quad_row<D>(u), k = quad_col<D>(u);
        float4 l = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (t < len)
            l = make_float4(fmaxf(log2f(dec[u].x), LOG2_DECAY_FLOOR), fmaxf(log2f(dec[u].y), LOG2_DECAY_FLOOR), fmaxf(log2f(dec[u].z), LOG2_DECAY_FLOOR),
                            fmaxf(log2f(dec[u].w), LOG2_DECAY_FLOOR));
        *(float4*)&G[t][k] = l;
    }
    __syncthreads();
    for (int k = threadIdx.x; k < D; k += blockDim.x) {
        float acc = 0.0f;
        for (int t = 0; t < CHUNK; ++t) {
            acc += G[t][k];
            G[t][k] = acc;
        }
    }
    __syncthreads();
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
// (kf exp(G_last - G))^T v, and exp(G_last); REVERSE: the state gradient's local part,
// sum_h (qf_h exp(G))^T do_h. The decayed left factor goes in as bf16 high and low parts (two
// products), so that the carried states keep about f32 precision; v and do are bf16 data.
// Warp w computes rows [16 (w % RT), +16) of the d x d result, columns split CS ways.
template <int D, bool REVERSE> __device__ void chunk_states(const ChunkParams& p) {
    constexpr int LC = CHUNK + 8, RT = D / 16, CS = 8 / RT, NT = D / 8 / CS;
    extern __shared__ float4 smem4[];
    float(*G)[D] = (float(*)[D])smem4;
    u16(*hi)[LC] = (u16(*)[LC])(G + CHUNK);  // [D][LC]: the left factor transposed (key dims, tokens), high part
    u16(*lo)[LC] = hi + D;                   // the low part
    u16(*yt)[LC] = lo + D;                   // [D][LC]: the right factor transposed (value dims, tokens)
    const int c = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, t0 = c * CHUNK, len = min(CHUNK, p.tokens - t0);
    const int warp = threadIdx.x >> 5, rt = warp % RT, cs = warp / RT;
    const size_t seg = ((size_t)b * p.chunks + c) * p.hkv + kvh;

    {
        float4 dq[QUADS(D)];
        load_quads<D>(dq, p.decay, p, b, t0, len, p.hkv, kvh);
        chunk_log_decays<D>(dq, len, G);
    }
    if (!REVERSE)
        for (int k = threadIdx.x; k < D; k += blockDim.x) p.products[seg * D + k] = exp2f(G[CHUNK - 1][k]);
    float acc[NT][4];
    zero_acc(acc);
    const int hq = p.hkv * p.group;
    for (int h = 0; h < (REVERSE ? p.group : 1); ++h) {
        float4 xq[QUADS(D)], yq[QUADS(D)];
        if (REVERSE) {
            load_quads<D>(xq, p.qf, p, b, t0, len, hq, kvh * p.group + h);
            load_quads<D>(yq, p.d_o, p, b, t0, len, hq, kvh * p.group + h);
        } else {
            load_quads<D>(xq, p.kf, p, b, t0, len, p.hkv, kvh);
            load_quads<D>(yq, p.vf, p, b, t0, len, p.hkv, kvh);
        }
        if (h > 0) __syncthreads();  // the previous head's products are done with the tiles
#pragma unroll
        for (int u = 0; u < QUADS(D); ++u) {
            const int t = quad_row<D>(u), k0 = quad_col<D>(u);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int k = k0 + e;
                const float x = quad_at(xq[u], e) * exp2f(REVERSE ? G[t][k] : G[CHUNK - 1][k] - G[t][k]);
                const u16 x_hi = bf16_bits(x);
                hi[k][t] = x_hi;
                lo[k][t] = bf16_bits(x - __uint_as_float((u32)x_hi << 16));
                yt[k][t] = bf16_bits(quad_at(yq[u], e));
            }
        }
        __syncthreads();
        warp_mma<NT>(acc, &hi[rt * 16][0], LC, &yt[cs * NT * 8][0], LC, CHUNK);
        warp_mma<NT>(acc, &lo[rt * 16][0], LC, &yt[cs * NT * 8][0], LC, CHUNK);
    }
    float* out = REVERSE ? p.rstates : p.states;
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int i = 0; i < 4; i += 2) {
            const int r = rt * 16 + acc_row(i), col = cs * NT * 8 + acc_col(n, i);
            *(float2*)(out + (seg * D + r) * D + col) = make_float2(acc[n][i], acc[n][i + 1]);
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
template <int D, typename OutT> __device__ void chunk_output(const ChunkParams& p) {
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

    {
        float4 dq[QUADS(D)];
        load_quads<D>(dq, p.decay, p, b, t0, len, p.hkv, kvh);
        chunk_log_decays<D>(dq, len, G);
    }
    float4 qq[QUADS(D)], kq[QUADS(D)], vq[QUADS(D)];
    load_quads<D>(qq, p.qf, p, b, t0, len, hq, h);
    load_quads<D>(kq, p.kf, p, b, t0, len, p.hkv, kvh);
    load_quads<D>(vq, p.vf, p, b, t0, len, p.hkv, kvh);
#pragma unroll
    for (int u = 0; u < QUADS(D); ++u) {
        const int t = quad_row<D>(u), k = quad_col<D>(u), tb = t / SUB;
        const float4 q = qq[u], key = kq[u], gt = *(const float4*)&G[t][k];
        store_bf16x4(&qg[t][k], q.x * exp2f(gt.x), q.y * exp2f(gt.y), q.z * exp2f(gt.z), q.w * exp2f(gt.w));
        store_bf16x4(&qr[t][k], q.x, q.y, q.z, q.w);
        store_bf16x4(&kr[t][k], key.x, key.y, key.z, key.w);
        store_bf16x4(&vr[t][k], vq[u].x, vq[u].y, vq[u].z, vq[u].w);
        // Row blocks 1-3 against the tokens before them, decayed through their reference.
        if (tb > 0) {
            const float4 gr = *(const float4*)&G[tb * SUB - 1][k];
            store_bf16x4(&st[QUERY_STAGE + t - SUB][k], q.x * exp2f(gt.x - gr.x), q.y * exp2f(gt.y - gr.y), q.z * exp2f(gt.z - gr.z), q.w * exp2f(gt.w - gr.w));
        }
        for (int rb = tb + 1; rb < CHUNK / SUB; ++rb) {
            const float4 gr = *(const float4*)&G[rb * SUB - 1][k];
            store_bf16x4(&st[key_stage_offset(rb) + t][k], key.x * exp2f(gr.x - gt.x), key.y * exp2f(gr.y - gt.y), key.z * exp2f(gr.z - gt.z),
                         key.w * exp2f(gr.w - gt.w));
        }
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
        // The diagonal block: pair q of the 136 with j <= t is (a, c) with q = a (a + 1) / 2 + c.
        for (int q = lane; q < SUB * (SUB + 1) / 2; q += 32) {
            int a = (int)((sqrtf(8.0f * q + 1.0f) - 1.0f) * 0.5f);
            if (a * (a + 1) / 2 > q) --a;  // float rounding
            if ((a + 1) * (a + 2) / 2 <= q) ++a;
            const int t = I * SUB + a, j = I * SUB + q - a * (a + 1) / 2;
            float s = 0.0f;
            // Lanes start at different key dims: fewer shared-memory bank conflicts.
            for (int e = 0; e < D; ++e) {
                const int k = (e + lane) & (D - 1);
                s += __uint_as_float((u32)qr[t][k] << 16) * __uint_as_float((u32)kr[j][k] << 16) * exp2f(G[t][k] - G[j][k]);
            }
            am[t][j] = bf16_bits(s);
        }
        for (int q = lane; q < SUB * SUB; q += 32)
            if (q % SUB > q / SUB) am[I * SUB + q / SUB][I * SUB + q % SUB] = 0;
    }
    __syncthreads();  // the staging tiles are done: S_0 goes over them
    stage_state<D, LD>(p.states + (((size_t)b * p.chunks + c) * p.hkv + kvh) * D * D, st);
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
            if (t < len) {
                const size_t at = chunk_row<D>(p, b, t0, t, hq, h) + n0 + acc_col(n, i);
                if constexpr (sizeof(OutT) == 2) *(u32*)((bf16*)p.o + at) = pack_bf16(acc[n][i], acc[n][i + 1]);
                else *(float2*)((float*)p.o + at) = make_float2(acc[n][i], acc[n][i + 1]);
            }
        }
}

// ---- 4. backward ------------------------------------------------------------------------------
// With S_0 the chunk's start state and H the state gradient arriving from after the chunk
// (both from chunk_states and the carry; H runs from the last chunk, from zero):
//   dqf_t = exp(G_t) (do_t S_0^T) + sum_{j<=t} B_tj exp(G_t - G_j) kf_j,           B_tj = do_t . v_j
//   dkf_t = exp(G_last - G_t) (v_t H^T) + sum_h sum_{s>=t} B_h,st exp(G_s - G_t) qf_h,s
//   dvf_t = (kf_t exp(G_last - G_t)) H + sum_h sum_{s>=t} A_h,st do_h,s
// Row block I's products between sub-chunks go through a reference token r, as the forward's
// scores: the tensor-core products run on factors decayed to r (every factor <= 1), and the
// f32 accumulators are scaled per (row, key dim) afterwards; the diagonal blocks are in fp32.

// Scales accumulator values (row block I, columns n0 + ...) by exp2(f(t, k)).
#define SCALE_ACC(ACC, NT, EXPR)                                                  \
    _Pragma("unroll") for (int n = 0; n < NT; ++n) _Pragma("unroll") for (int i = 0; i < 4; ++i) { \
        const int t = I * SUB + acc_row(i), k = n0 + acc_col(n, i);               \
        (void)t;                                                                  \
        ACC[n][i] *= exp2f(EXPR);                                                 \
    }

// dqf: one CTA of 8 warps per (chunk, query head, sequence); row block I = warp % 4, value
// dims split in halves between warps w and w + 4.
template <int D> __device__ void chunk_dq(const ChunkParams& p) {
    constexpr int LD = D + 8, LC = CHUNK + 8, NT = D / 16;
    extern __shared__ float4 smem4[];
    float(*G)[D] = (float(*)[D])smem4;
    u16(*dr)[LD] = (u16(*)[LD])(G + CHUNK);  // [CHUNK][LD]: do
    u16(*vr)[LD] = dr + CHUNK;               // v
    u16(*ks)[LD] = vr + CHUNK;               // [6 SUB][LD]: keys decayed to each row block's reference (key_stage_offset)
    u16(*s0)[LD] = ks + 6 * SUB;             // [D][LD]: S_0 (key dims, value dims)
    u16(*bm)[LC] = (u16(*)[LC])(s0 + D);     // [CHUNK][LC]: B between sub-chunks
    float(*bd)[SUB] = (float(*)[SUB])(bm + CHUNK);  // [CHUNK][SUB]: B's diagonal blocks, f32, zero above
    const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, kvh = h / p.group, hq = p.hkv * p.group;
    const int t0 = c * CHUNK, len = min(CHUNK, p.tokens - t0), warp = threadIdx.x >> 5, I = warp & 3, n0 = (warp >> 2) * (D / 2);

    {
        float4 dq[QUADS(D)];
        load_quads<D>(dq, p.decay, p, b, t0, len, p.hkv, kvh);
        chunk_log_decays<D>(dq, len, G);
    }
    {
        float4 oq[QUADS(D)], kq[QUADS(D)], vq[QUADS(D)];
        load_quads<D>(oq, p.d_o, p, b, t0, len, hq, h);
        load_quads<D>(kq, p.kf, p, b, t0, len, p.hkv, kvh);
        load_quads<D>(vq, p.vf, p, b, t0, len, p.hkv, kvh);
#pragma unroll
        for (int u = 0; u < QUADS(D); ++u) {
            const int t = quad_row<D>(u), k = quad_col<D>(u), tb = t / SUB;
            const float4 key = kq[u], gt = *(const float4*)&G[t][k];
            store_bf16x4(&dr[t][k], oq[u].x, oq[u].y, oq[u].z, oq[u].w);
            store_bf16x4(&vr[t][k], vq[u].x, vq[u].y, vq[u].z, vq[u].w);
            for (int rb = tb + 1; rb < CHUNK / SUB; ++rb) {
                const float4 gr = *(const float4*)&G[rb * SUB - 1][k];
                store_bf16x4(&ks[key_stage_offset(rb) + t][k], key.x * exp2f(gr.x - gt.x), key.y * exp2f(gr.y - gt.y), key.z * exp2f(gr.z - gt.z),
                             key.w * exp2f(gr.w - gt.w));
            }
        }
    }
    stage_state<D, LD>(p.states + (((size_t)b * p.chunks + c) * p.hkv + kvh) * D * D, s0);
    __syncthreads();
    if (warp < 4) {
        // B for row block I against blocks 0..I (bf16 before the diagonal, f32 on it).
        float acc[8][4];
        zero_acc(acc);
        warp_mma<8>(acc, &dr[I * SUB][0], LD, &vr[0][0], LD, D, 2 * (I + 1));
#pragma unroll
        for (int n = 0; n < 8; ++n) {
            if (n >= 2 * (I + 1)) break;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int t = I * SUB + acc_row(i), j = acc_col(n, i);
                if (j < I * SUB) bm[t][j] = bf16_bits(acc[n][i]);
                else bd[t][j - I * SUB] = j <= t ? acc[n][i] : 0.0f;
            }
        }
    }
    __syncthreads();
    float acc[NT][4];
    zero_acc(acc);
    warp_mma<NT>(acc, &dr[I * SUB][0], LD, &s0[n0][0], LD, D);  // do S_0^T
    if (I > 0) {
        SCALE_ACC(acc, NT, G[I * SUB - 1][k])
        warp_mma_kn<NT>(acc, &bm[I * SUB][0], LC, &ks[key_stage_offset(I)][n0], LD, I * SUB);
    }
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int i = 0; i < 4; i += 2) {
            const int t = I * SUB + acc_row(i);
            float out[2];
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int k = n0 + acc_col(n, i + e);
                const float gt = G[t][k];
                float v = acc[n][i + e] * exp2f(gt - (I > 0 ? G[I * SUB - 1][k] : 0.0f));
                // kf in f32 here: the gate gradient needs qf . dqf and kf . dkf to cancel
                // exactly where they should (a token's own term first of all).
                for (int j = I * SUB; j <= min(t, len - 1); ++j) v += bd[t][j - I * SUB] * p.kf[chunk_row<D>(p, b, t0, j, p.hkv, kvh) + k] * exp2f(gt - G[j][k]);
                out[e] = v;
            }
            if (t < len) *(float2*)(p.dqf + chunk_row<D>(p, b, t0, t, hq, h) + n0 + acc_col(n, i)) = make_float2(out[0], out[1]);
        }
}

// Row block J's staging rows of the queries decayed from its reference (the end of block J),
// for the tokens after block J: blocks 0, 1, 2 take rows [0, 48), [48, 80), [80, 96).
__device__ __forceinline__ int query_stage_offset(int J) { return SUB * (J * (7 - J) / 2); }

// dkf and dvf: one CTA of 8 warps per (chunk, kv head, sequence), the query heads of the group
// in turn; row block J = warp % 4, key (value) dims split in halves between warps w and w + 4.
template <int D> __device__ void chunk_dkv(const ChunkParams& p) {
    constexpr int LD = D + 8, LC = CHUNK + 8, NT = D / 16;
    extern __shared__ float4 smem4[];
    float(*G)[D] = (float(*)[D])smem4;
    u16(*vr)[LD] = (u16(*)[LD])(G + CHUNK);  // [CHUNK][LD]: v
    u16(*kr)[LD] = vr + CHUNK;               // kf
    u16(*kd)[LD] = kr + CHUNK;               // kf exp(G_last - G)
    u16(*xs)[LD] = kd + CHUNK;               // kf decayed to the end of its own block
    u16(*qr)[LD] = xs + CHUNK;               // qf of the head in turn
    u16(*dr)[LD] = qr + CHUNK;               // do of the head in turn
    u16(*hm)[LD] = dr + CHUNK;               // [D][LD]: H (key dims, value dims)
    u16(*ys)[LD] = hm + D;                   // [6 SUB][LD]: queries decayed from each row block's reference
    u16(*am)[LC] = (u16(*)[LC])(ys + 6 * SUB);  // [CHUNK][LC]: A^T (rows t, columns s >= t)
    u16(*bm)[LC] = am + CHUNK;                  // B^T between sub-chunks
    float(*bd)[SUB] = (float(*)[SUB])(bm + CHUNK);  // B^T's diagonal blocks, f32, zero below
    const int c = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, hq = p.hkv * p.group;
    const int t0 = c * CHUNK, len = min(CHUNK, p.tokens - t0), warp = threadIdx.x >> 5, lane = threadIdx.x & 31, I = warp & 3, n0 = (warp >> 2) * (D / 2);

    {
        float4 dq[QUADS(D)];
        load_quads<D>(dq, p.decay, p, b, t0, len, p.hkv, kvh);
        chunk_log_decays<D>(dq, len, G);
    }
    {
        float4 kq[QUADS(D)], vq[QUADS(D)];
        load_quads<D>(kq, p.kf, p, b, t0, len, p.hkv, kvh);
        load_quads<D>(vq, p.vf, p, b, t0, len, p.hkv, kvh);
#pragma unroll
        for (int u = 0; u < QUADS(D); ++u) {
            const int t = quad_row<D>(u), k = quad_col<D>(u), tb = t / SUB;
            const float4 key = kq[u], gt = *(const float4*)&G[t][k], gl = *(const float4*)&G[CHUNK - 1][k], ge = *(const float4*)&G[tb * SUB + SUB - 1][k];
            store_bf16x4(&vr[t][k], vq[u].x, vq[u].y, vq[u].z, vq[u].w);
            store_bf16x4(&kr[t][k], key.x, key.y, key.z, key.w);
            store_bf16x4(&kd[t][k], key.x * exp2f(gl.x - gt.x), key.y * exp2f(gl.y - gt.y), key.z * exp2f(gl.z - gt.z), key.w * exp2f(gl.w - gt.w));
            store_bf16x4(&xs[t][k], key.x * exp2f(ge.x - gt.x), key.y * exp2f(ge.y - gt.y), key.z * exp2f(ge.z - gt.z), key.w * exp2f(ge.w - gt.w));
        }
        stage_state<D, LD>(p.rstates + (((size_t)b * p.chunks + c) * p.hkv + kvh) * D * D, hm);
    }
    __syncthreads();
    // The parts from H; dk's is kept decayed to the end of block J until the end.
    float acc_v[NT][4], acc_k[NT][4], acc_d[NT][4];
    zero_acc(acc_v);
    zero_acc(acc_k);
    zero_acc(acc_d);
    warp_mma_kn<NT>(acc_v, &kd[I * SUB][0], LD, &hm[0][n0], LD, D);  // (kf exp(G_last - G)) H
    warp_mma<NT>(acc_k, &vr[I * SUB][0], LD, &hm[n0][0], LD, D);     // v H^T
    SCALE_ACC(acc_k, NT, G[CHUNK - 1][k] - G[I * SUB + SUB - 1][k])

    for (int h = 0; h < p.group; ++h) {
        const int qh = kvh * p.group + h;
        float4 qq[QUADS(D)], oq[QUADS(D)];
        load_quads<D>(qq, p.qf, p, b, t0, len, hq, qh);
        load_quads<D>(oq, p.d_o, p, b, t0, len, hq, qh);
        __syncthreads();  // the previous head is done with the tiles
#pragma unroll
        for (int u = 0; u < QUADS(D); ++u) {
            const int s = quad_row<D>(u), k = quad_col<D>(u), sb = s / SUB;
            const float4 q = qq[u], gs = *(const float4*)&G[s][k];
            store_bf16x4(&qr[s][k], q.x, q.y, q.z, q.w);
            store_bf16x4(&dr[s][k], oq[u].x, oq[u].y, oq[u].z, oq[u].w);
            for (int J = 0; J < sb; ++J) {
                const float4 gr = *(const float4*)&G[J * SUB + SUB - 1][k];
                store_bf16x4(&ys[query_stage_offset(J) + s - SUB * (J + 1)][k], q.x * exp2f(gs.x - gr.x), q.y * exp2f(gs.y - gr.y), q.z * exp2f(gs.z - gr.z),
                             q.w * exp2f(gs.w - gr.w));
            }
        }
        __syncthreads();
        if (warp < 4) {
            const int J = I;
            if (J < 3) {
                // A^T against the later blocks: (kf_t exp(G_r - G_t)) . (qf_s exp(G_s - G_r)).
                float acc[6][4];
                zero_acc(acc);
                warp_mma<6>(acc, &xs[J * SUB][0], LD, &ys[query_stage_offset(J)][0], LD, D, 2 * (3 - J));
#pragma unroll
                for (int n = 0; n < 6; ++n) {
                    if (n >= 2 * (3 - J)) break;
#pragma unroll
                    for (int i = 0; i < 4; i += 2) *(u32*)&am[J * SUB + acc_row(i)][(J + 1) * SUB + acc_col(n, i)] = pack_bf16(acc[n][i], acc[n][i + 1]);
                }
            }
            // B^T = v_t . do_s for s in blocks J..3.
            float acc[8][4];
            zero_acc(acc);
            warp_mma<8>(acc, &vr[J * SUB][0], LD, &dr[0][0], LD, D);
#pragma unroll
            for (int n = 0; n < 8; ++n) {
                if (n < 2 * J) continue;
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int t = J * SUB + acc_row(i), s2 = acc_col(n, i);
                    if (s2 >= (J + 1) * SUB) bm[t][s2] = bf16_bits(acc[n][i]);
                    else bd[t][s2 - J * SUB] = s2 >= t ? acc[n][i] : 0.0f;
                }
            }
        } else {
            // A^T's diagonal block in fp32: pair q of the 136 with s >= t is (a, c), s = a, t = c.
            const int J = I;
            for (int q = lane; q < SUB * (SUB + 1) / 2; q += 32) {
                int a = (int)((sqrtf(8.0f * q + 1.0f) - 1.0f) * 0.5f);
                if (a * (a + 1) / 2 > q) --a;
                if ((a + 1) * (a + 2) / 2 <= q) ++a;
                const int s2 = J * SUB + a, t = J * SUB + q - a * (a + 1) / 2;
                float sum = 0.0f;
                for (int e = 0; e < D; ++e) {
                    const int k = (e + lane) & (D - 1);
                    sum += __uint_as_float((u32)kr[t][k] << 16) * __uint_as_float((u32)qr[s2][k] << 16) * exp2f(G[s2][k] - G[t][k]);
                }
                am[t][s2] = bf16_bits(sum);
            }
            for (int q = lane; q < SUB * SUB; q += 32)
                if (q % SUB < q / SUB) am[J * SUB + q / SUB][J * SUB + q % SUB] = 0;
        }
        __syncthreads();
        const int J = I;
        warp_mma_kn<NT>(acc_v, &am[J * SUB][J * SUB], LC, &dr[J * SUB][n0], LD, CHUNK - J * SUB);  // A^T do
        if (J < 3) warp_mma_kn<NT>(acc_k, &bm[J * SUB][(J + 1) * SUB], LC, &ys[query_stage_offset(J)][n0], LD, CHUNK - (J + 1) * SUB);
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int t = J * SUB + acc_row(i), k = n0 + acc_col(n, i);
                const float gt = G[t][k];
                float v = 0.0f;
                // qf in f32, as kf in chunk_dq.
                for (int s2 = t; s2 < min((J + 1) * SUB, len); ++s2) v += bd[t][s2 - J * SUB] * p.qf[chunk_row<D>(p, b, t0, s2, hq, qh) + k] * exp2f(G[s2][k] - gt);
                acc_d[n][i] += v;
            }
    }
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int i = 0; i < 4; i += 2) {
            const int t = I * SUB + acc_row(i);
            if (t >= len) continue;
            float dk[2];
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int k = n0 + acc_col(n, i + e);
                dk[e] = acc_k[n][i + e] * exp2f(G[I * SUB + SUB - 1][k] - G[t][k]) + acc_d[n][i + e];
            }
            const size_t row = chunk_row<D>(p, b, t0, t, p.hkv, kvh) + n0 + acc_col(n, i);
            *(float2*)(p.dkf + row) = make_float2(dk[0], dk[1]);
            *(float2*)(p.dvf + row) = make_float2(acc_v[n][i], acc_v[n][i + 1]);
        }
}

#define MIXER_CHUNK_KERNELS(D)                                                                                        \
    extern "C" __global__ void __launch_bounds__(CHUNK_THREADS) mixer_chunk_states_d##D(const ChunkParams p) { chunk_states<D, false>(p); } \
    extern "C" __global__ void __launch_bounds__(CHUNK_THREADS) mixer_chunk_output_d##D(const ChunkParams p) { chunk_output<D, bf16>(p); } \
    extern "C" __global__ void __launch_bounds__(CHUNK_THREADS) mixer_chunk_output_f32_d##D(const ChunkParams p) { chunk_output<D, float>(p); } \
    extern "C" __global__ void __launch_bounds__(CHUNK_THREADS) mixer_chunk_states_reverse_d##D(const ChunkParams p) { chunk_states<D, true>(p); } \
    extern "C" __global__ void __launch_bounds__(CHUNK_THREADS) mixer_chunk_dq_d##D(const ChunkParams p) { chunk_dq<D>(p); } \
    extern "C" __global__ void __launch_bounds__(CHUNK_THREADS) mixer_chunk_dkv_d##D(const ChunkParams p) { chunk_dkv<D>(p); }

MIXER_CHUNK_KERNELS(64)
MIXER_CHUNK_KERNELS(128)
