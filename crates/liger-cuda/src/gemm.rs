//! Matrix products through cuBLAS, in the row-major convention of `liger_core::linalg`:
//! `C = op(A) · op(B)` (or `C += ...`) with `op(A)` `m x k`, `op(B)` `k x n`, `C` `m x n`.
//! Inputs are f32, or bf16 with fp32 accumulation; the output is always f32.

use crate::buffer::GpuElement;
use crate::context::GpuContext;
use crate::error::cublas_error;
use crate::launch::{as_int, expect_len};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
use cudarc::driver::{DevicePtr, DevicePtrMut};
use liger_core::Result;

/// Sizes of one product. `a_transposed`: A is stored `k x m` (row-major) and used transposed;
/// likewise `b_transposed`: B is stored `n x k`, as weights in the HF `[out, in]` layout are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmDims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_transposed: bool,
    pub b_transposed: bool,
}

/// The same product as cuBLAS sees it. cuBLAS is column-major, and a row-major matrix is its
/// transpose in column-major order, so row-major `C = op(A) op(B)` is column-major
/// `Cᵀ = op(B)ᵀ op(A)ᵀ`: B goes first, A second, and the sizes swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnMajorGemm {
    /// Transpose the first operand (our B).
    pub transa: bool,
    /// Transpose the second operand (our A).
    pub transb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
}

pub fn column_major(d: GemmDims) -> ColumnMajorGemm {
    ColumnMajorGemm {
        transa: d.b_transposed,
        transb: d.a_transposed,
        m: d.n,
        n: d.m,
        k: d.k,
        // Leading dimension = the row length of the row-major storage.
        lda: if d.b_transposed { d.k } else { d.n },
        ldb: if d.a_transposed { d.m } else { d.k },
        ldc: d.n,
    }
}

/// Element types cuBLAS multiplies with fp32 accumulation.
pub trait GemmInput: GpuElement {
    const CUDA_TYPE: cudaDataType_t;
}

impl GemmInput for f32 {
    const CUDA_TYPE: cudaDataType_t = cudaDataType_t::CUDA_R_32F;
}

impl GemmInput for half::bf16 {
    const CUDA_TYPE: cudaDataType_t = cudaDataType_t::CUDA_R_16BF;
}

/// `c = op(a) · op(b)`, or `c += op(a) · op(b)` when `accumulate`; see [`GemmDims`].
/// `a`, `b` and `c` must hold exactly `m*k`, `k*n` and `m*n` values.
pub fn gemm<T, A, B, C>(ctx: &GpuContext, dims: GemmDims, a: &A, b: &B, c: &mut C, accumulate: bool) -> Result<()>
where
    T: GemmInput,
    A: DevicePtr<T>,
    B: DevicePtr<T>,
    C: DevicePtrMut<f32>,
{
    gemm_with(ctx, dims, a, b, c, 1.0, accumulate, cublasComputeType_t::CUBLAS_COMPUTE_32F)
}

/// `c = alpha · op(a) · op(b)`, or `c += alpha · op(a) · op(b)` when `accumulate`.
pub fn gemm_scaled<T, A, B, C>(
    ctx: &GpuContext,
    dims: GemmDims,
    a: &A,
    b: &B,
    c: &mut C,
    alpha: f32,
    accumulate: bool,
) -> Result<()>
where
    T: GemmInput,
    A: DevicePtr<T>,
    B: DevicePtr<T>,
    C: DevicePtrMut<f32>,
{
    gemm_with(ctx, dims, a, b, c, alpha, accumulate, cublasComputeType_t::CUBLAS_COMPUTE_32F)
}

/// As [`gemm`] on f32 inputs, multiplied on tensor cores in TF32 (10-bit mantissas, fp32
/// accumulation): for products next to bf16 ones, where full f32 precision buys nothing.
pub fn gemm_tf32<A, B, C>(ctx: &GpuContext, dims: GemmDims, a: &A, b: &B, c: &mut C, accumulate: bool) -> Result<()>
where
    A: DevicePtr<f32>,
    B: DevicePtr<f32>,
    C: DevicePtrMut<f32>,
{
    gemm_tf32_scaled(ctx, dims, a, b, c, 1.0, accumulate)
}

/// As [`gemm_tf32`], the product multiplied by `alpha`.
pub fn gemm_tf32_scaled<A, B, C>(
    ctx: &GpuContext,
    dims: GemmDims,
    a: &A,
    b: &B,
    c: &mut C,
    alpha: f32,
    accumulate: bool,
) -> Result<()>
where
    A: DevicePtr<f32>,
    B: DevicePtr<f32>,
    C: DevicePtrMut<f32>,
{
    gemm_with(ctx, dims, a, b, c, alpha, accumulate, cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32)
}

#[allow(clippy::too_many_arguments)]
fn gemm_with<T, A, B, C>(
    ctx: &GpuContext,
    dims: GemmDims,
    a: &A,
    b: &B,
    c: &mut C,
    alpha: f32,
    accumulate: bool,
    compute: cublasComputeType_t,
) -> Result<()>
where
    T: GemmInput,
    A: DevicePtr<T>,
    B: DevicePtr<T>,
    C: DevicePtrMut<f32>,
{
    expect_len("gemm: A", a.len(), dims.m * dims.k)?;
    expect_len("gemm: B", b.len(), dims.k * dims.n)?;
    expect_len("gemm: C", c.len(), dims.m * dims.n)?;
    if dims.m == 0 || dims.n == 0 {
        return Ok(());
    }
    let cm = column_major(dims);
    let (m, n, k) = (as_int("gemm m", cm.m)?, as_int("gemm n", cm.n)?, as_int("gemm k", cm.k)?);
    let (lda, ldb, ldc) =
        (as_int("gemm lda", cm.lda.max(1))?, as_int("gemm ldb", cm.ldb.max(1))?, as_int("gemm ldc", cm.ldc)?);
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let blas = ctx.blas()?;
    let stream = ctx.stream();
    // cuBLAS works in the calling thread's current context.
    stream.context().bind_to_thread().map_err(|e| crate::error::driver_error(e, "binding the CUDA context"))?;
    let beta = if accumulate { 1.0f32 } else { 0.0 };
    let (a_ptr, _a_guard) = a.device_ptr(stream);
    let (b_ptr, _b_guard) = b.device_ptr(stream);
    let (c_ptr, _c_guard) = c.device_ptr_mut(stream);
    // SAFETY: the lengths were checked against the sizes above; the pointers stay valid
    // while the guards live, and the product is queued on the buffers' stream.
    let status = unsafe {
        cudarc::cublas::result::gemm_ex(
            *blas.handle(),
            op(cm.transa),
            op(cm.transb),
            m,
            n,
            k,
            (&alpha) as *const f32 as *const _,
            b_ptr as *const _,
            T::CUDA_TYPE,
            lda,
            a_ptr as *const _,
            T::CUDA_TYPE,
            ldb,
            (&beta) as *const f32 as *const _,
            c_ptr as *mut _,
            cudaDataType_t::CUDA_R_32F,
            ldc,
            compute,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    };
    status.map_err(|e| cublas_error(e, &format!("multiplying {}x{} by {}x{}", dims.m, dims.k, dims.k, dims.n)))?;
    let kind = if compute == cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32 { "tf32" } else { T::KERNEL_SUFFIX };
    ctx.profile_mark_with(|| format!("gemm {kind} {}x{}x{}", dims.m, dims.n, dims.k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use liger_core::linalg::{matmul, MatRef};
    use rand::{Rng, SeedableRng};

    /// What cuBLAS computes: column-major `C = op(A) op(B)` with leading dimensions.
    fn column_major_reference(g: &ColumnMajorGemm, a: &[f32], b: &[f32], c: &mut [f32]) {
        let at = |i: usize, p: usize| if g.transa { a[p + i * g.lda] } else { a[i + p * g.lda] };
        let bt = |p: usize, j: usize| if g.transb { b[j + p * g.ldb] } else { b[p + j * g.ldb] };
        for i in 0..g.m {
            for j in 0..g.n {
                c[i + j * g.ldc] = (0..g.k).map(|p| at(i, p) * bt(p, j)).sum();
            }
        }
    }

    #[test]
    fn row_major_products_map_to_column_major_calls() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
        let (m, n, k) = (5, 7, 3);
        for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let a_ref = if a_t { MatRef::new(&a, k, m).t() } else { MatRef::new(&a, m, k) };
            let b_ref = if b_t { MatRef::new(&b, n, k).t() } else { MatRef::new(&b, k, n) };
            let mut expected = vec![0.0f32; m * n];
            matmul(a_ref, b_ref, &mut expected, false);
            let call = column_major(GemmDims { m, n, k, a_transposed: a_t, b_transposed: b_t });
            let mut got = vec![f32::NAN; m * n];
            column_major_reference(&call, &b, &a, &mut got);
            let err = expected.iter().zip(&got).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(err < 1e-5, "a_t={a_t} b_t={b_t}: max error {err}");
        }
    }
}
