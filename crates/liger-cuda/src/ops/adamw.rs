//! AdamW and global-norm gradient clipping on the GPU (`kernels/adamw.cu`); CPU twins:
//! `liger_core::nn::optim::{AdamWState, clip_grad_norm}`.

use crate::buffer::GpuBuffer;
use crate::context::GpuContext;
use crate::kernels::ADAMW;
use crate::launch::{elementwise, expect_len};
use cudarc::driver::PushKernelArg;
use liger_core::nn::optim::AdamWConfig;
use liger_core::{Error, ErrorCode, Result};

/// Moment estimates on the GPU for a list of parameter tensors.
pub struct GpuAdamW {
    pub step: u64,
    m: Vec<GpuBuffer<f32>>,
    v: Vec<GpuBuffer<f32>>,
}

impl GpuAdamW {
    /// Zero moments for tensors of `sizes` values.
    pub fn new(ctx: &GpuContext, sizes: &[usize]) -> Result<Self> {
        let zeros = |n: &usize| GpuBuffer::zeros(ctx, *n);
        Ok(GpuAdamW {
            step: 0,
            m: sizes.iter().map(zeros).collect::<Result<_>>()?,
            v: sizes.iter().map(zeros).collect::<Result<_>>()?,
        })
    }

    /// The first and second moments of tensor `i`, e.g. to save them with a checkpoint.
    pub fn moments(&self, i: usize) -> Option<(&GpuBuffer<f32>, &GpuBuffer<f32>)> {
        Some((self.m.get(i)?, self.v.get(i)?))
    }

    /// One update of every parameter tensor with its gradient at learning rate `lr`.
    pub fn update(
        &mut self,
        ctx: &GpuContext,
        cfg: &AdamWConfig,
        lr: f32,
        params: &mut [&mut GpuBuffer<f32>],
        grads: &[&GpuBuffer<f32>],
    ) -> Result<()> {
        if params.len() != self.m.len() || grads.len() != self.m.len() {
            return Err(Error::shape(format!(
                "AdamW holds {} tensors but got {} parameters and {} gradients",
                self.m.len(),
                params.len(),
                grads.len()
            )));
        }
        for (i, ((p, g), m)) in params.iter().zip(grads).zip(&self.m).enumerate() {
            expect_len(&format!("parameter {i}"), p.len(), m.len())?;
            expect_len(&format!("gradient {i}"), g.len(), m.len())?;
        }
        self.step += 1;
        // The bias corrections in double precision, exactly as the CPU optimizer computes them.
        let bc1 = 1.0 - (cfg.beta1 as f64).powi(self.step as i32);
        let bc2 = 1.0 - (cfg.beta2 as f64).powi(self.step as i32);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let name = "adamw_step_f32";
        let f = ctx.function(&ADAMW, name)?;
        for ((p, g), (m, v)) in params.iter_mut().zip(grads).zip(self.m.iter_mut().zip(self.v.iter_mut())) {
            if p.is_empty() {
                continue;
            }
            let (n, cfg_launch) = (p.len() as u64, elementwise(p.len()));
            let mut launch = ctx.stream().launch_builder(&f);
            launch.arg(p.slice_mut()).arg(g.slice()).arg(m.slice_mut()).arg(v.slice_mut()).arg(&n);
            for x in [&lr, &cfg.beta1, &cfg.beta2, &cfg.eps, &cfg.weight_decay, &step_size, &bc2_sqrt] {
                launch.arg(x);
            }
            // SAFETY: the four buffers hold n values each (checked above).
            ctx.check_launch(unsafe { launch.launch(cfg_launch) }, name)?;
        }
        Ok(())
    }
}

/// The global L2 norm of all gradients (partial sums per block on the GPU, added in f64).
pub fn grad_norm(ctx: &GpuContext, grads: &[&GpuBuffer<f32>]) -> Result<f32> {
    let name = "sum_squares_f32";
    let f = ctx.function(&ADAMW, name)?;
    let mut total = 0.0f64;
    for g in grads.iter().filter(|g| !g.is_empty()) {
        let cfg = elementwise(g.len());
        let mut partial = GpuBuffer::<f32>::zeros(ctx, cfg.grid_dim.0 as usize)?;
        let n = g.len() as u64;
        let mut launch = ctx.stream().launch_builder(&f);
        launch.arg(g.slice()).arg(&n).arg(partial.slice_mut());
        // SAFETY: g holds n values; partial has one slot per block.
        ctx.check_launch(unsafe { launch.launch(cfg) }, name)?;
        total += partial.to_host()?.iter().map(|&x| x as f64).sum::<f64>();
    }
    Ok(total.sqrt() as f32)
}

/// Scales gradients so their global norm is at most `max_norm`; returns the norm before
/// clipping. A non-finite norm is an error, as on the CPU.
pub fn clip_grad_norm(ctx: &GpuContext, grads: &mut [&mut GpuBuffer<f32>], max_norm: f32) -> Result<f32> {
    let norm = grad_norm(ctx, &grads.iter().map(|g| &**g).collect::<Vec<_>>())?;
    if !norm.is_finite() {
        return Err(Error::new(
            ErrorCode::NonFiniteLoss,
            "the gradient norm is not finite; lower the learning rate or check the data",
        ));
    }
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        let name = "scale_f32";
        let f = ctx.function(&ADAMW, name)?;
        for g in grads.iter_mut().filter(|g| !g.is_empty()) {
            let n = g.len() as u64;
            let cfg = elementwise(g.len());
            let mut launch = ctx.stream().launch_builder(&f);
            launch.arg(g.slice_mut()).arg(&n).arg(&scale);
            // SAFETY: g holds n values.
            ctx.check_launch(unsafe { launch.launch(cfg) }, name)?;
        }
    }
    Ok(norm)
}
