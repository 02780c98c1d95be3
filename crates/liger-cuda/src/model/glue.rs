//! Rust entry points of `kernels/model.cu`: the elementwise glue between the model's big ops
//! (casts to and from the storage type, residual adds, biases, batched RoPE, random fills).

use crate::buffer::{GpuBuffer, GpuElement};
use crate::context::GpuContext;
use crate::kernels::MODEL;
use crate::launch::{as_int, elementwise, expect_len, rows_of};
use cudarc::driver::PushKernelArg;
use liger_core::liger::liger_attention::GRM_NORM_EPS;
use liger_core::{Error, Result};

/// The kernel variant for storage type `T`.
fn pick<T: GpuElement>(f32_name: &'static str, bf16_name: &'static str) -> &'static str {
    if T::KERNEL_SUFFIX == "bf16" {
        bf16_name
    } else {
        f32_name
    }
}

/// `y = s * x`, stored as `T` (a cast when `s` is 1).
pub fn scale_to<T: GpuElement>(ctx: &GpuContext, x: &GpuBuffer<f32>, y: &mut GpuBuffer<T>, s: f32) -> Result<()> {
    expect_len("scaled copy output", y.len(), x.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let name = pick::<T>("scale_to_f32", "scale_to_bf16");
    let f = ctx.function(&MODEL, name)?;
    let n = x.len() as u64;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(x.slice()).arg(y.slice_mut()).arg(&n).arg(&s);
    // SAFETY: x and y hold n values; the kernel takes four per thread.
    ctx.check_launch(unsafe { launch.launch(elementwise(x.len().div_ceil(4))) }, name)
}

/// A new buffer holding `s * x` as `T`.
pub fn scaled<T: GpuElement>(ctx: &GpuContext, x: &GpuBuffer<f32>, s: f32) -> Result<GpuBuffer<T>> {
    let mut y = GpuBuffer::zeros(ctx, x.len())?;
    scale_to(ctx, x, &mut y, s)?;
    Ok(y)
}

/// `y = s * x` (or `y += s * x` when `accumulate`), `x` stored as `T`, `y` f32.
pub fn widen<T: GpuElement>(
    ctx: &GpuContext,
    x: &GpuBuffer<T>,
    y: &mut GpuBuffer<f32>,
    s: f32,
    accumulate: bool,
) -> Result<()> {
    expect_len("widened output", y.len(), x.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let name = pick::<T>("widen_f32", "widen_bf16");
    let f = ctx.function(&MODEL, name)?;
    let (n, acc) = (x.len() as u64, accumulate as i32);
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(x.slice()).arg(y.slice_mut()).arg(&n).arg(&s).arg(&acc);
    // SAFETY: x and y hold n values.
    ctx.check_launch(unsafe { launch.launch(elementwise(x.len())) }, name)
}

/// The two branches of a Liger layer mixed in one pass: `o = alpha · g + beta · a` (`g` the
/// gated mixer's output, `a` the window attention's, stored as `T`), and `o_t`, o's copy in `T`
/// for the o projection.
pub fn liger_mix_to<T: GpuElement>(
    ctx: &GpuContext,
    g: &GpuBuffer<f32>,
    a: &GpuBuffer<T>,
    alpha: f32,
    beta: f32,
    o: &mut GpuBuffer<f32>,
    o_t: &mut GpuBuffer<T>,
) -> Result<()> {
    expect_len("window attention output", a.len(), g.len())?;
    expect_len("mixed output", o.len(), g.len())?;
    expect_len("mixed output copy", o_t.len(), g.len())?;
    if g.is_empty() {
        return Ok(());
    }
    let name = pick::<T>("liger_mix_to_f32", "liger_mix_to_bf16");
    let f = ctx.function(&MODEL, name)?;
    let n = g.len() as u64;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(g.slice()).arg(a.slice()).arg(o.slice_mut()).arg(o_t.slice_mut()).arg(&n).arg(&alpha).arg(&beta);
    // SAFETY: the four buffers hold n values; the kernel takes four per thread.
    ctx.check_launch(unsafe { launch.launch(elementwise(g.len().div_ceil(4))) }, name)
}

/// `y = s · x` (f32) and `z = t · x` (stored as `T`) in one pass: a gradient split between
/// the two branches of a Liger layer.
pub fn scale_pair<T: GpuElement>(
    ctx: &GpuContext,
    x: &GpuBuffer<f32>,
    s: f32,
    t: f32,
    y: &mut GpuBuffer<f32>,
    z: &mut GpuBuffer<T>,
) -> Result<()> {
    expect_len("scaled output", y.len(), x.len())?;
    expect_len("scaled output copy", z.len(), x.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let name = pick::<T>("scale_pair_f32", "scale_pair_bf16");
    let f = ctx.function(&MODEL, name)?;
    let n = x.len() as u64;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(x.slice()).arg(y.slice_mut()).arg(z.slice_mut()).arg(&n).arg(&s).arg(&t);
    // SAFETY: the three buffers hold n values; the kernel takes four per thread.
    ctx.check_launch(unsafe { launch.launch(elementwise(x.len().div_ceil(4))) }, name)
}

/// `y += x`.
pub fn add_into(ctx: &GpuContext, x: &GpuBuffer<f32>, y: &mut GpuBuffer<f32>) -> Result<()> {
    widen(ctx, x, y, 1.0, true)
}

/// `x *= s`, in place.
pub fn scale_in_place(ctx: &GpuContext, x: &mut GpuBuffer<f32>, s: f32) -> Result<()> {
    if x.is_empty() {
        return Ok(());
    }
    let name = "scale_in_place_f32";
    let f = ctx.function(&MODEL, name)?;
    let (n, cfg) = (x.len() as u64, elementwise(x.len()));
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(x.slice_mut()).arg(&n).arg(&s);
    // SAFETY: x holds n values.
    ctx.check_launch(unsafe { launch.launch(cfg) }, name)
}

/// `x = value` everywhere.
pub fn fill(ctx: &GpuContext, x: &mut GpuBuffer<f32>, value: f32) -> Result<()> {
    if x.is_empty() {
        return Ok(());
    }
    let name = "fill_f32";
    let f = ctx.function(&MODEL, name)?;
    let (n, cfg) = (x.len() as u64, elementwise(x.len()));
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(x.slice_mut()).arg(&n).arg(&value);
    // SAFETY: x holds n values.
    ctx.check_launch(unsafe { launch.launch(cfg) }, name)
}

/// The normalised recurrent branch: `n = n / (den + eps)`, in place (CPU twin:
/// `liger_core::liger::liger_attention::grm_normalize`).
pub fn grm_normalize(ctx: &GpuContext, n: &mut GpuBuffer<f32>, den: &GpuBuffer<f32>) -> Result<()> {
    expect_len("normaliser", den.len(), n.len())?;
    if n.is_empty() {
        return Ok(());
    }
    let name = "grm_normalize_f32";
    let f = ctx.function(&MODEL, name)?;
    let (count, eps, cfg) = (n.len() as u64, GRM_NORM_EPS, elementwise(n.len()));
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(n.slice_mut()).arg(den.slice()).arg(&count).arg(&eps);
    // SAFETY: both buffers hold count values.
    ctx.check_launch(unsafe { launch.launch(cfg) }, name)
}

/// Gradients through [`grm_normalize`], given the normalised output `o`: returns
/// `(d_n, d_den)` (CPU twin: `liger_core::liger::liger_attention::grm_normalize_backward`).
pub fn grm_normalize_backward(
    ctx: &GpuContext,
    d_o: &GpuBuffer<f32>,
    den: &GpuBuffer<f32>,
    o: &GpuBuffer<f32>,
) -> Result<(GpuBuffer<f32>, GpuBuffer<f32>)> {
    expect_len("normaliser", den.len(), d_o.len())?;
    expect_len("normalised output", o.len(), d_o.len())?;
    let (mut d_n, mut d_den) = (GpuBuffer::zeros(ctx, d_o.len())?, GpuBuffer::zeros(ctx, d_o.len())?);
    if d_o.is_empty() {
        return Ok((d_n, d_den));
    }
    let name = "grm_normalize_backward_f32";
    let f = ctx.function(&MODEL, name)?;
    let (count, eps) = (d_o.len() as u64, GRM_NORM_EPS);
    let mut launch = ctx.stream().launch_builder(&f);
    launch
        .arg(d_o.slice())
        .arg(den.slice())
        .arg(o.slice())
        .arg(d_n.slice_mut())
        .arg(d_den.slice_mut())
        .arg(&count)
        .arg(&eps);
    // SAFETY: the five buffers hold count values.
    ctx.check_launch(unsafe { launch.launch(elementwise(d_o.len())) }, name)?;
    Ok((d_n, d_den))
}

/// Adds `bias` to every row of `y`.
pub fn add_bias_rows(ctx: &GpuContext, y: &mut GpuBuffer<f32>, bias: &GpuBuffer<f32>) -> Result<()> {
    rows_of("biased rows", y.len(), bias.len())?;
    if y.is_empty() {
        return Ok(());
    }
    let name = "add_bias_rows_f32";
    let f = ctx.function(&MODEL, name)?;
    let (n, cols, cfg) = (y.len() as u64, as_int("bias length", bias.len())?, elementwise(y.len()));
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(y.slice_mut()).arg(bias.slice()).arg(&n).arg(&cols);
    // SAFETY: y holds a whole number of rows of bias.len() values.
    ctx.check_launch(unsafe { launch.launch(cfg) }, name)
}

/// Where RoPE puts each token: `batch` sequences of `tokens` tokens, token t of sequence b at
/// position `start[b] + t`; rows of `heads` heads of `head_dim` values.
pub struct RopeLayout<'a> {
    pub inv_freq: &'a GpuBuffer<f32>,
    pub start: &'a GpuBuffer<u32>,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl RopeLayout<'_> {
    /// Checks the sizes against a buffer of `len` values; returns the kernel's int arguments.
    fn args(&self, len: usize) -> Result<[i32; 4]> {
        let d = self.head_dim;
        if d == 0 || !d.is_multiple_of(2) || self.inv_freq.len() != d / 2 {
            return Err(Error::shape(format!(
                "RoPE needs an even head size and head_size/2 frequencies; got {d} and {}",
                self.inv_freq.len()
            )));
        }
        let rows = rows_of("rope input", len, self.heads * d)?;
        let seqs = rows_of("rope rows", rows, self.tokens.max(1))?;
        expect_len("rope start positions", self.start.len(), seqs)?;
        Ok([
            as_int("rows", rows)?,
            as_int("tokens", self.tokens)?,
            as_int("heads", self.heads)?,
            as_int("head_dim", d)?,
        ])
    }
}

/// `y` (stored as `T`) = `x` rotated.
pub fn rope_forward_to<T: GpuElement>(
    ctx: &GpuContext,
    layout: &RopeLayout,
    x: &GpuBuffer<f32>,
    y: &mut GpuBuffer<T>,
) -> Result<()> {
    let args = layout.args(x.len())?;
    expect_len("rope output", y.len(), x.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let name = pick::<T>("rope_forward_to_f32", "rope_forward_to_bf16");
    let f = ctx.function(&MODEL, name)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(x.slice()).arg(y.slice_mut()).arg(layout.inv_freq.slice()).arg(layout.start.slice());
    for a in &args {
        launch.arg(a);
    }
    // SAFETY: sizes checked above; one thread per rotated pair.
    ctx.check_launch(unsafe { launch.launch(elementwise(x.len() / 2)) }, name)
}

/// `dx += scale * rotate_back(dy)`, `dy` stored as `T`: the backward of [`rope_forward_to`].
pub fn rope_backward_add<T: GpuElement>(
    ctx: &GpuContext,
    layout: &RopeLayout,
    dy: &GpuBuffer<T>,
    dx: &mut GpuBuffer<f32>,
    scale: f32,
) -> Result<()> {
    let args = layout.args(dy.len())?;
    expect_len("rope gradient", dx.len(), dy.len())?;
    if dy.is_empty() {
        return Ok(());
    }
    let name = pick::<T>("rope_backward_add_f32", "rope_backward_add_bf16");
    let f = ctx.function(&MODEL, name)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(dy.slice()).arg(dx.slice_mut()).arg(layout.inv_freq.slice()).arg(layout.start.slice());
    for a in &args {
        launch.arg(a);
    }
    launch.arg(&scale);
    // SAFETY: as in the forward.
    ctx.check_launch(unsafe { launch.launch(elementwise(dy.len() / 2)) }, name)
}

/// Fills `y` with values uniform in `[center - spread, center + spread)`, from `seed`.
pub fn fill_uniform<T: GpuElement>(
    ctx: &GpuContext,
    y: &mut GpuBuffer<T>,
    seed: u64,
    center: f32,
    spread: f32,
) -> Result<()> {
    if y.is_empty() {
        return Ok(());
    }
    let name = pick::<T>("fill_uniform_f32", "fill_uniform_bf16");
    let f = ctx.function(&MODEL, name)?;
    let (n, cfg) = (y.len() as u64, elementwise(y.len()));
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(y.slice_mut()).arg(&n).arg(&seed).arg(&center).arg(&spread);
    // SAFETY: y holds n values.
    ctx.check_launch(unsafe { launch.launch(cfg) }, name)
}
