//! One mixer problem for the GPU mixer tests: raw inputs, a random initial state and an output
//! gradient; the CPU twin's results, and the GPU's under a time plan.

use super::{host, poison, poisoned, random, to_f64, up, upload};
use liger_core::liger::{
    chunk_backward, chunk_forward, HeadShape, MixerConfig, MixerKind, MixerState, DEFAULT_CHUNK_SIZE,
};
use liger_cuda::ops::mixer::{
    mixer_chunk_backward_in_segments, mixer_chunk_forward_in_segments, mixer_state_len, MixerDims, TimeSegments,
};
use liger_cuda::{GpuContext, GpuElement};
use rand::rngs::StdRng;

/// The results' names, in the order [`MixerProblem::cpu`] and [`MixerProblem::gpu`] give them.
pub const OUTPUTS: [&str; 5] = ["o", "final state", "dq", "dk", "dv"];

pub struct MixerProblem {
    pub cfg: MixerConfig,
    pub dims: MixerDims,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub d_o: Vec<f32>,
    pub initial: Vec<f32>,
}

/// `x` rounded to `T` and back.
pub fn round<T: GpuElement>(x: Vec<f32>) -> Vec<f32> {
    x.into_iter().map(|v| T::from_f32(v).to_f32()).collect()
}

impl MixerProblem {
    /// Raw inputs rounded to `T`; `k_scale` sets how strong the gates are.
    pub fn new<T: GpuElement>(
        rng: &mut StdRng,
        kind: MixerKind,
        batch: usize,
        tokens: usize,
        shape: HeadShape,
        k_scale: f32,
    ) -> Self {
        let cfg = MixerConfig::new(kind);
        let (nq, nkv) = (batch * tokens * shape.hq * shape.d, batch * tokens * shape.hkv * shape.d);
        MixerProblem {
            cfg,
            dims: MixerDims { batch, tokens, shape },
            q: round::<T>(random(rng, nq, 2.0)),
            k: round::<T>(random(rng, nkv, k_scale)),
            v: round::<T>(random(rng, nkv, 1.0)),
            d_o: round::<T>(random(rng, nq, 1.0)),
            initial: random(rng, batch * mixer_state_len(&cfg, shape), 0.5),
        }
    }

    /// Sequence `b`'s part of a `[B, ...]` tensor.
    pub fn seq<'a>(&self, x: &'a [f32], b: usize) -> &'a [f32] {
        let per = x.len() / self.dims.batch;
        &x[b * per..(b + 1) * per]
    }

    /// CPU forward from the initial state and backward from a zero state: (o, final, dq, dk, dv).
    pub fn cpu(&self) -> [Vec<f64>; 5] {
        let mut r: [Vec<f64>; 5] = Default::default();
        let shape = self.dims.shape;
        for b in 0..self.dims.batch {
            let mut init = MixerState::zeros(&self.cfg, shape);
            init.data.copy_from_slice(self.seq(&self.initial, b));
            let (q, k, v) = (self.seq(&self.q, b), self.seq(&self.k, b), self.seq(&self.v, b));
            let (o, fin) = chunk_forward(&self.cfg, shape, q, k, v, Some(&init), DEFAULT_CHUNK_SIZE).unwrap();
            let g = chunk_backward(&self.cfg, shape, q, k, v, self.seq(&self.d_o, b), DEFAULT_CHUNK_SIZE).unwrap();
            for (out, x) in r.iter_mut().zip([&o, &fin.data, &g.dq, &g.dk, &g.dv]) {
                out.extend(to_f64(x));
            }
        }
        r
    }

    /// The GPU's o, final state, dq, dk, dv under `segments`, every output poisoned first.
    pub fn gpu<T: GpuElement>(&self, ctx: &GpuContext, segments: TimeSegments) -> [Vec<f32>; 5] {
        let (q, k, v) = (up::<T>(ctx, &self.q), up::<T>(ctx, &self.k), up::<T>(ctx, &self.v));
        let mut o = poison::<T>(ctx, self.q.len());
        let mut fin = poisoned(ctx, self.initial.len());
        mixer_chunk_forward_in_segments(
            ctx,
            &self.cfg,
            self.dims,
            &q,
            &k,
            &v,
            &mut o,
            Some(&upload(ctx, &self.initial)),
            Some(&mut fin),
            segments,
        )
        .unwrap();
        let (mut dq, mut dk, mut dv) =
            (poison::<T>(ctx, self.q.len()), poison::<T>(ctx, self.k.len()), poison::<T>(ctx, self.v.len()));
        mixer_chunk_backward_in_segments(
            ctx,
            &self.cfg,
            self.dims,
            &q,
            &k,
            &v,
            &up::<T>(ctx, &self.d_o),
            &mut dq,
            &mut dk,
            &mut dv,
            segments,
        )
        .unwrap();
        [host(&o), fin.to_host().unwrap(), host(&dq), host(&dk), host(&dv)]
    }

    /// Kind, sizes and element type, for messages.
    pub fn label<T: GpuElement>(&self) -> String {
        let s = self.dims.shape;
        format!(
            "{} B={} T={} {}/{} d={} {}",
            self.cfg.kind.name(),
            self.dims.batch,
            self.dims.tokens,
            s.hq,
            s.hkv,
            s.d,
            T::KERNEL_SUFFIX
        )
    }
}
