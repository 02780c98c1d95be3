//! Matrix products on the CPU. Dense f32 products go through the `gemm` crate; products
//! with stored (possibly quantized) weights dequantize panels of rows on the fly.

use crate::tensor::{GgmlType, QTensor};
use rayon::prelude::*;

pub mod blocked;

/// A strided view of an f32 matrix: element (i, j) is at `i * row_stride + j * col_stride`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows x cols` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, row_stride: cols, col_stride: 1 }
    }
    /// The transpose, without copying.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(
                last < self.data.len(),
                "MatRef {}x{} does not fit in {} values",
                self.rows,
                self.cols,
                self.data.len()
            );
        }
    }
}

/// `c = a · b` (or `c += a · b` when `accumulate`), `c` row-major `a.rows x b.cols`.
pub fn matmul(a: MatRef, b: MatRef, c: &mut [f32], accumulate: bool) {
    assert_eq!(a.cols, b.rows, "matmul: inner sizes differ ({}x{} · {}x{})", a.rows, a.cols, b.rows, b.cols);
    assert_eq!(c.len(), a.rows * b.cols, "matmul: output has {} values, needs {}", c.len(), a.rows * b.cols);
    a.check();
    b.check();
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    #[cfg(target_arch = "wasm32")]
    {
        // The gemm crate has no SIMD128 kernels; its scalar one is slower than this.
        return blocked::matmul_dot_form(a, b, c, accumulate);
    }
    #[allow(unreachable_code)]
    let threads = rayon::current_num_threads();
    let parallelism =
        if m * n * k >= 1 << 18 && threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the shapes and strides were checked against the slices above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Values one rayon task should at least cover in `matvec`: below this, scheduling costs
/// about as much as the work (a row of the default model is 576 values).
const MATVEC_MIN_VALUES_PER_TASK: usize = 1 << 15;
/// Tasks per thread in `matvec` when the matrix is large: a few, so a thread slowed by
/// other work on the machine can hand rows to the others.
const MATVEC_TASKS_PER_THREAD: usize = 4;

/// `y = W x` for one vector: `x` has `w.cols` values, `y` has `w.rows`.
pub fn matvec(w: &QTensor, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), w.cols, "matvec: input has {} values, weight takes {}", x.len(), w.cols);
    assert_eq!(y.len(), w.rows, "matvec: output has {} values, weight gives {}", y.len(), w.rows);
    if w.rows == 0 {
        return;
    }
    // The fastest dot product is looked up once per matrix; the rows are then split into
    // tasks of whole rows, large enough to amortise scheduling.
    let dot = crate::quant::dot_fn(w.ty);
    let row_bytes = w.row_bytes();
    let data = w.data.as_slice();
    let rows_per_task = matvec_rows_per_task(w.rows, w.cols, rayon::current_num_threads());
    let run = |first_row: usize, ys: &mut [f32]| {
        let rows = &data[first_row * row_bytes..(first_row + ys.len()) * row_bytes];
        for (out, row) in ys.iter_mut().zip(rows.chunks_exact(row_bytes)) {
            *out = dot(row, x);
        }
    };
    if rows_per_task >= w.rows {
        run(0, y);
    } else {
        y.par_chunks_mut(rows_per_task).enumerate().for_each(|(task, ys)| run(task * rows_per_task, ys));
    }
}

/// Rows per rayon task for a `rows x cols` matrix-vector product on `threads` threads.
fn matvec_rows_per_task(rows: usize, cols: usize, threads: usize) -> usize {
    let min_rows = MATVEC_MIN_VALUES_PER_TASK.div_ceil(cols.max(1));
    let even_split = rows.div_ceil(threads.max(1) * MATVEC_TASKS_PER_THREAD);
    min_rows.max(even_split).clamp(1, rows.max(1))
}

/// `Y = X Wᵀ` for `n` row vectors: `x` is `n x w.cols`, `y` is `n x w.rows`, both row-major.
pub fn matmul_wt(w: &QTensor, x: &[f32], n: usize, y: &mut [f32]) {
    assert_eq!(x.len(), n * w.cols, "matmul_wt: input has {} values, needs {}x{}", x.len(), n, w.cols);
    assert_eq!(y.len(), n * w.rows, "matmul_wt: output has {} values, needs {}x{}", y.len(), n, w.rows);
    if n == 1 {
        return matvec(w, x, y);
    }
    #[cfg(target_arch = "wasm32")]
    {
        // wasm has no threads and the gemm crate no SIMD128 kernels: a blocked product with
        // its own SIMD128 inner loop is faster.
        return blocked::matmul_wt_blocked(w, x, n, y);
    }
    #[allow(unreachable_code)]
    if w.ty == GgmlType::F32 {
        let wf = w.to_f32();
        return matmul(MatRef::new(x, n, w.cols), MatRef::new(&wf, w.rows, w.cols).t(), y, false);
    }
    // Dequantize panels of weight rows and multiply each into its columns of Y.
    const PANEL: usize = 64;
    let y_addr = y.as_mut_ptr() as usize;
    (0..w.rows.div_ceil(PANEL)).into_par_iter().for_each_init(Vec::new, |panel, p| {
        let r0 = p * PANEL;
        let rows = PANEL.min(w.rows - r0);
        panel.resize(rows * w.cols, 0.0);
        for r in 0..rows {
            w.dequantize_row(r0 + r, &mut panel[r * w.cols..(r + 1) * w.cols]);
        }
        // SAFETY: each task writes only columns r0..r0+rows of Y, which no other task touches;
        // the bounds were checked above.
        unsafe {
            gemm::gemm(
                n,
                rows,
                w.cols,
                (y_addr as *mut f32).add(r0),
                1,
                w.rows as isize,
                false,
                x.as_ptr(),
                1,
                w.cols as isize,
                panel.as_ptr(),
                w.cols as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}
