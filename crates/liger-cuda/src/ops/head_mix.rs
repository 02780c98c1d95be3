//! Learned branch weights per query head (`kernels/head_mix.cu`; CPU twins in
//! `liger_core::liger::head_mix`): the mix of a Liger layer's two branches with one
//! `(alpha, beta)` per head, the split of its gradient between them, and the weights' own
//! gradients. Tensors are rows of `[rows, heads, d]`; the window branch may be absent.

use crate::buffer::{GpuBuffer, GpuElement};
use crate::context::GpuContext;
use crate::kernels::HEAD_MIX;
use crate::launch::{as_int, elementwise, expect_len, rows_of};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use liger_core::liger::HeadMix;
use liger_core::Result;

/// One layer's branch weights on the device, `[heads]` each.
pub struct GpuHeadMix {
    pub alpha: GpuBuffer<f32>,
    pub beta: GpuBuffer<f32>,
}

impl GpuHeadMix {
    pub fn upload(ctx: &GpuContext, mix: &HeadMix) -> Result<Self> {
        Ok(GpuHeadMix { alpha: GpuBuffer::from_host(ctx, &mix.alpha)?, beta: GpuBuffer::from_host(ctx, &mix.beta)? })
    }

    /// Zero weights (gradient buffers).
    pub fn zeros(ctx: &GpuContext, heads: usize) -> Result<Self> {
        Ok(GpuHeadMix { alpha: GpuBuffer::zeros(ctx, heads)?, beta: GpuBuffer::zeros(ctx, heads)? })
    }

    /// Copies new values in place (the buffers a captured decoding step reads stay the same).
    pub fn refresh(&mut self, mix: &HeadMix) -> Result<()> {
        self.alpha.copy_from_host(&mix.alpha)?;
        self.beta.copy_from_host(&mix.beta)
    }

    pub fn to_host(&self) -> Result<HeadMix> {
        Ok(HeadMix { alpha: self.alpha.to_host()?, beta: self.beta.to_host()? })
    }

    fn heads(&self) -> usize {
        self.alpha.len()
    }

    /// Checks `n` values against whole rows of `[heads, d]`, and the two weight vectors.
    fn check(&self, what: &str, n: usize, d: usize) -> Result<(i32, i32)> {
        expect_len("head mix beta", self.beta.len(), self.heads())?;
        rows_of(what, n, self.heads() * d)?;
        Ok((as_int("heads", self.heads())?, as_int("head size", d)?))
    }
}

/// A null device pointer for a left-out buffer.
const NULL: u64 = 0;

/// `o = alpha_h · g + beta_h · a` (`a = None`: `alpha_h · g`), and o's copy in `T` into `o_t`
/// when given.
pub fn head_mix_to<T: GpuElement>(
    ctx: &GpuContext,
    mix: &GpuHeadMix,
    d: usize,
    g: &GpuBuffer<f32>,
    a: Option<&GpuBuffer<T>>,
    o: &mut GpuBuffer<f32>,
    o_t: Option<&mut GpuBuffer<T>>,
) -> Result<()> {
    let n = g.len();
    let (heads, d_arg) = mix.check("recurrent branch output", n, d)?;
    expect_len("mixed output", o.len(), n)?;
    if let Some(a) = a {
        expect_len("window branch output", a.len(), n)?;
    }
    if let Some(o_t) = &o_t {
        expect_len("mixed output copy", o_t.len(), n)?;
    }
    if n == 0 {
        return Ok(());
    }
    let name = super::variant::<T>("head_mix_to_f32", "head_mix_to_bf16");
    let f = ctx.function(&HEAD_MIX, name)?;
    let n_arg = n as u64;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(g.slice());
    match a {
        Some(a) => launch.arg(a.slice()),
        None => launch.arg(&NULL),
    };
    launch.arg(mix.alpha.slice()).arg(mix.beta.slice()).arg(&heads).arg(&d_arg).arg(o.slice_mut());
    match o_t {
        Some(o_t) => launch.arg(o_t.slice_mut()),
        None => launch.arg(&NULL),
    };
    launch.arg(&n_arg);
    // SAFETY: every buffer given holds n values, the weights `heads`; a null one is never touched.
    ctx.check_launch(unsafe { launch.launch(elementwise(n)) }, name)
}

/// The branches' shares of `d_o`: `d_g = alpha_h · d_o`, and `d_a = beta_h · d_o` (in `T`)
/// when given.
pub fn head_mix_split<T: GpuElement>(
    ctx: &GpuContext,
    mix: &GpuHeadMix,
    d: usize,
    d_o: &GpuBuffer<f32>,
    d_g: &mut GpuBuffer<f32>,
    d_a: Option<&mut GpuBuffer<T>>,
) -> Result<()> {
    let n = d_o.len();
    let (heads, d_arg) = mix.check("output gradient", n, d)?;
    expect_len("recurrent branch gradient", d_g.len(), n)?;
    if let Some(d_a) = &d_a {
        expect_len("window branch gradient", d_a.len(), n)?;
    }
    if n == 0 {
        return Ok(());
    }
    let name = super::variant::<T>("head_mix_split_f32", "head_mix_split_bf16");
    let f = ctx.function(&HEAD_MIX, name)?;
    let n_arg = n as u64;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(d_o.slice()).arg(mix.alpha.slice()).arg(mix.beta.slice()).arg(&heads).arg(&d_arg).arg(d_g.slice_mut());
    match d_a {
        Some(d_a) => launch.arg(d_a.slice_mut()),
        None => launch.arg(&NULL),
    };
    launch.arg(&n_arg);
    // SAFETY: every buffer given holds n values, the weights `heads`; a null one is never touched.
    ctx.check_launch(unsafe { launch.launch(elementwise(n)) }, name)
}

/// Threads per block of [`head_mix_grads`] (a whole number of warps, as `block_sum` needs).
const GRAD_BLOCK: u32 = 256;
/// Blocks per head: enough to fill the GPU at training sizes, few atomics per weight.
const GRAD_SLICES: usize = 64;

/// `grad.alpha[h] += Σ d_o · g` and `grad.beta[h] += Σ d_o · a` over head h's elements (`g`,
/// `a` the branches before the mix; `a = None`: beta takes nothing).
pub fn head_mix_grads<T: GpuElement>(
    ctx: &GpuContext,
    d: usize,
    d_o: &GpuBuffer<f32>,
    g: &GpuBuffer<f32>,
    a: Option<&GpuBuffer<T>>,
    grad: &mut GpuHeadMix,
) -> Result<()> {
    let n = d_o.len();
    let (heads, d_arg) = grad.check("output gradient", n, d)?;
    expect_len("recurrent branch output", g.len(), n)?;
    if let Some(a) = a {
        expect_len("window branch output", a.len(), n)?;
    }
    if n == 0 {
        return Ok(());
    }
    let rows = n / (grad.heads() * d);
    let slices = (rows * d).div_ceil(GRAD_BLOCK as usize).clamp(1, GRAD_SLICES) as u32;
    let name = super::variant::<T>("head_mix_grads_f32", "head_mix_grads_bf16");
    let f = ctx.function(&HEAD_MIX, name)?;
    let rows_arg = rows as i64;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(d_o.slice()).arg(g.slice());
    match a {
        Some(a) => launch.arg(a.slice()),
        None => launch.arg(&NULL),
    };
    launch.arg(&rows_arg).arg(&heads).arg(&d_arg).arg(grad.alpha.slice_mut()).arg(grad.beta.slice_mut());
    let cfg = LaunchConfig { grid_dim: (heads as u32, slices, 1), block_dim: (GRAD_BLOCK, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: d_o, g (and a) hold rows * heads * d values, the weights `heads`; a null `a` is
    // never read.
    ctx.check_launch(unsafe { launch.launch(cfg) }, name)
}
