//! The fast path of the lab CNN on the CPU: each conv block (3x3 convolution, bias, relu, 2x2 max
//! pooling) is one candle custom op with its own backward pass.
//!
//! Plain candle runs a conv block as five ops and its backward pass as many more, each allocating
//! full-size tensors; the backward of `conv2d` alone costs several forward passes. Here one op
//! does the block image by image on all cores: `im2col` plus one matrix product (the `gemm` crate
//! candle itself uses) forward, and in the backward pass only what is asked for:
//!
//! - the input gradient, when the input takes part in autograd (an attack's `Var` image);
//! - the weight and bias gradients, when the weights do (training), summed in a fixed order so a
//!   seeded run gives the same weights bit for bit.
//!
//! Frozen weights (plain tensors) get no gradient, and a constant input (a training batch) gets
//! none either. The op keeps the pooling choice of each window (one byte per output) for its
//! backward pass; a window's first maximum wins, as in PyTorch.
//!
//! Nothing changes for the student: the input is still a `Var`, `backward()` still fills its
//! gradient. [`crate::model::Classifier::forward_reference`] runs the same network on plain
//! candle ops, and the tests compare the two.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, WithDType};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;
use std::sync::Mutex;

/// Images per partial sum of the weight gradient. Fixed (not the thread count) so the sum's order,
/// and so its rounding, is the same on every run.
const GROUP: usize = 8;

/// 3x3 convolution (no padding, stride 1), plus bias, relu, then 2x2 max pooling with stride 2
/// (an odd last row or column dropped), as one op.
///
/// `x` is `(N, C, H, W)`, `w` is `(O, C, 3, 3)`, `b` is `(O)`; the result is
/// `(N, O, (H - 2) / 2, (W - 2) / 2)`. CPU only, f32 or f64.
pub fn conv_relu_pool(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    check_block(x, w, b, 1, "conv_relu_pool: input")?;
    let op = ConvReluPool { argmax: Mutex::new(Vec::new()) };
    x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, op)
}

/// That `x` has `halves` times the input channels of `w` and `w`, `b` are a 3x3 convolution of
/// an image at least 4x4.
fn check_block(x: &Tensor, w: &Tensor, b: &Tensor, halves: usize, what: &str) -> candle_core::Result<()> {
    let (_, c, h, wd) = x.dims4()?;
    let (o, wc, kh, kw) = w.dims4()?;
    if c != halves * wc || kh != 3 || kw != 3 || b.dims() != [o] || h < 4 || wd < 4 {
        candle_core::bail!(
            "{what} {:?}, weight {:?}, bias {:?} do not fit a 3x3 convolution of an image at least 4x4",
            x.dims(),
            w.dims(),
            b.dims()
        );
    }
    Ok(())
}

/// `x w^T + b` for `x (N, in)`, `w (out, in)`, `b (out)`, as one op whose backward pass skips the
/// weight gradient of frozen weights. CPU only, f32 or f64.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (_, inputs) = x.dims2()?;
    let (outputs, w_in) = w.dims2()?;
    if w_in != inputs || b.dims() != [outputs] {
        candle_core::bail!(
            "linear: input {:?}, weight {:?}, bias {:?} do not fit together",
            x.dims(),
            w.dims(),
            b.dims()
        );
    }
    x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, Linear)
}

/// The `CustomOp3` of a kernel type with `fwd::<T>` and `bwd_typed::<T>` for both float types.
macro_rules! float_op3 {
    ($op:ty, $name:literal, $label:literal) => {
        impl CustomOp3 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                s1: &CpuStorage,
                l1: &Layout,
                s2: &CpuStorage,
                l2: &Layout,
                s3: &CpuStorage,
                l3: &Layout,
            ) -> candle_core::Result<(CpuStorage, Shape)> {
                let args = [(s1, l1), (s2, l2), (s3, l3)];
                match (s1.dtype(), s2.dtype(), s3.dtype()) {
                    (DType::F32, DType::F32, DType::F32) => self.fwd::<f32>(args),
                    (DType::F64, DType::F64, DType::F64) => self.fwd::<f64>(args),
                    other => {
                        candle_core::bail!(concat!($label, " runs on f32 or f64, all three alike; got {:?}"), other)
                    }
                }
            }

            fn bwd(
                &self,
                x: &Tensor,
                w: &Tensor,
                b: &Tensor,
                res: &Tensor,
                grad: &Tensor,
            ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
                match x.dtype() {
                    DType::F32 => self.bwd_typed::<f32>(x, w, b, res, grad),
                    DType::F64 => self.bwd_typed::<f64>(x, w, b, res, grad),
                    other => candle_core::bail!(concat!($label, " runs on f32 or f64, got {:?}"), other),
                }
            }
        }
    };
}

// After the macro, which it uses.
mod interval;
pub use interval::{interval_conv_relu_pool, interval_linear};

struct Linear;

float_op3!(Linear, "linear", "linear");

/// `gemm` threads for a product of `macs` multiply-adds: small ones stay on one thread.
fn threads_for(macs: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && macs >= 1 << 20 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

impl Linear {
    fn fwd<T: Float>(&self, s: [(&CpuStorage, &Layout); 3]) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (slice::<T>(s[0].0, s[0].1)?, slice::<T>(s[1].0, s[1].1)?, slice::<T>(s[2].0, s[2].1)?);
        let (n, inputs, outputs) = (s[0].1.dims()[0], s[0].1.dims()[1], b.len());
        let mut y: Vec<T> = b.iter().copied().cycle().take(n * outputs).collect();
        if n > 0 {
            // y (N x out) += x (N x in) * w^T (in x out)
            matmul(
                (n, outputs, inputs),
                &mut y,
                (outputs, 1),
                true,
                x,
                (inputs, 1),
                w,
                (1, inputs),
                threads_for(n * inputs * outputs),
            );
        }
        Ok((T::to_cpu_storage_owned(y), Shape::from((n, outputs))))
    }

    fn bwd_typed<T: Float>(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let ((n, inputs), outputs) = (x.dims2()?, w.dim(0)?);
        let par = threads_for(n * inputs * outputs);
        with_data(grad, |g: &[T]| {
            let dx = if x.track_op() && n > 0 {
                let mut dx = vec![T::from_f64(0.0); n * inputs];
                // dx (N x in) = g (N x out) * w (out x in)
                with_data(w, |w: &[T]| {
                    matmul((n, inputs, outputs), &mut dx, (inputs, 1), false, g, (outputs, 1), w, (inputs, 1), par);
                    Ok(())
                })?;
                Some(Tensor::from_vec(dx, x.shape(), x.device())?)
            } else {
                None
            };
            if !(w.track_op() || b.track_op()) || n == 0 {
                return Ok((dx, None, None));
            }
            let mut dw = vec![T::from_f64(0.0); outputs * inputs];
            // dw (out x in) = g^T (out x N) * x (N x in)
            with_data(x, |x: &[T]| {
                matmul((outputs, inputs, n), &mut dw, (inputs, 1), false, g, (1, outputs), x, (inputs, 1), par);
                Ok(())
            })?;
            let mut db = vec![T::from_f64(0.0); outputs];
            for row in g.chunks(outputs) {
                db.iter_mut().zip(row).for_each(|(d, v)| *d += *v);
            }
            Ok((
                dx,
                Some(Tensor::from_vec(dw, w.shape(), w.device())?),
                Some(Tensor::from_vec(db, b.shape(), b.device())?),
            ))
        })
    }
}

/// The sizes of one conv block.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    /// Convolution output height and width.
    ho: usize,
    wo: usize,
    /// Pooled height and width.
    hp: usize,
    wp: usize,
}

impl Geom {
    fn new(x: &[usize], o: usize) -> Self {
        let (n, c, h, w) = (x[0], x[1], x[2], x[3]);
        // Only the outputs that 2x2 pooling reads: an odd last row or column (11x11 after conv2)
        // would be computed and then dropped.
        let (ho, wo) = ((h - 2) / 2 * 2, (w - 2) / 2 * 2);
        Geom { n, c, h, w, o, ho, wo, hp: ho / 2, wp: wo / 2 }
    }
    /// im2col rows: one per input channel and kernel position.
    fn k(&self) -> usize {
        self.c * 9
    }
    fn p(&self) -> usize {
        self.ho * self.wo
    }
    fn pooled(&self) -> usize {
        self.o * self.hp * self.wp
    }
    fn image(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Where each pooling window (in `o * hp * wp` order) starts in the convolution output, and
    /// the offsets of its four corners, row-major.
    fn windows(&self) -> (Vec<usize>, [usize; 4]) {
        let mut starts = Vec::with_capacity(self.pooled());
        for oc in 0..self.o {
            for py in 0..self.hp {
                starts.extend((0..self.wp).map(|px| oc * self.p() + 2 * py * self.wo + 2 * px));
            }
        }
        (starts, [0, 1, self.wo, self.wo + 1])
    }
    /// Inner `gemm` threads when images go `group` at a time to the threads: none, unless there are
    /// fewer groups than threads.
    fn parallelism(&self, group: usize) -> Parallelism {
        let threads = rayon::current_num_threads();
        if self.n.div_ceil(group) >= threads || threads == 1 {
            Parallelism::None
        } else {
            Parallelism::Rayon(threads)
        }
    }
}

/// Element types the kernels run on.
trait Float: WithDType {}
impl Float for f32 {}
impl Float for f64 {}

float_op3!(ConvReluPool, "conv-relu-pool", "conv_relu_pool");

struct ConvReluPool {
    /// For each pooled output, which corner of its window was the maximum (0..4, row-major, in
    /// bits 0-1; see `pool_bound`).
    argmax: Mutex<Vec<u8>>,
}

/// `col` (K x P) holds, for each input channel and kernel offset, the shifted image.
fn im2col<T: Copy>(x: &[T], g: &Geom, col: &mut [T]) {
    let p = g.p();
    for c in 0..g.c {
        for ky in 0..3 {
            for kx in 0..3 {
                let row = &mut col[(c * 9 + ky * 3 + kx) * p..][..p];
                for oy in 0..g.ho {
                    let src = &x[c * g.h * g.w + (oy + ky) * g.w + kx..][..g.wo];
                    row[oy * g.wo..][..g.wo].copy_from_slice(src);
                }
            }
        }
    }
}

/// The input gradient of one image from the rows of `dcol_t` (P x K) marked in `touched`: each row
/// holds the gradient of the 3x3 patch under one convolution output position.
fn patches_to_image<T: Float>(dcol_t: &[T], touched: &[bool], g: &Geom, x: &mut [T]) {
    let k = g.k();
    x.fill(T::from_f64(0.0));
    for (pos, _) in touched.iter().enumerate().filter(|(_, &t)| t) {
        let (oy, ox) = (pos / g.wo, pos % g.wo);
        for c in 0..g.c {
            let patch = &dcol_t[pos * k + c * 9..][..9];
            let at = c * g.h * g.w + oy * g.w + ox;
            for ky in 0..3 {
                let dst = &mut x[at + ky * g.w..][..3];
                for (d, s) in dst.iter_mut().zip(&patch[ky * 3..][..3]) {
                    *d += *s;
                }
            }
        }
    }
}

/// `dst (m x n) = [dst +] lhs (m x k) * rhs (k x n)`, each given with its row and column strides.
#[allow(clippy::too_many_arguments)]
fn matmul<T: Float>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: &[T],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[T],
    (rhs_rs, rhs_cs): (usize, usize),
    par: Parallelism,
) {
    let last = |rs: usize, cs: usize, rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        last(dst_rs, dst_cs, m, n) < dst.len()
            && last(lhs_rs, lhs_cs, m, k) < lhs.len()
            && last(rhs_rs, rhs_cs, k, n) < rhs.len()
    );
    let one = T::from_f64(1.0);
    // SAFETY: the assert above keeps every access inside the three slices; `dst` is borrowed mutably.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            one,
            one,
            false,
            false,
            false,
            par,
        )
    }
}

fn forward<T: Float>(x: &[T], w: &[T], b: &[T], g: Geom) -> (Vec<T>, Vec<u8>) {
    let (k, p, pooled) = (g.k(), g.p(), g.pooled());
    let mut out = vec![T::from_f64(0.0); g.n * pooled];
    let mut argmax = vec![0u8; g.n * pooled];
    let par = g.parallelism(1);
    let zero = T::from_f64(0.0);
    out.par_chunks_mut(pooled).zip(argmax.par_chunks_mut(pooled)).enumerate().for_each_init(
        || (vec![zero; k * p], vec![zero; g.o * p]),
        |(col, pre), (i, (out, argmax))| {
            im2col(&x[i * g.image()..][..g.image()], &g, col);
            matmul((g.o, p, k), pre, (p, 1), false, w, (k, 1), col, (p, 1), par);
            pool_bound(pre, b, &g, out, argmax);
        },
    );
    (out, argmax)
}

/// Gradients of the block: `(dx, dw, db)`, each only when asked for.
fn backward<T: Float>(
    x: &[T],
    w: &[T],
    res: &[T],
    grad: &[T],
    argmax: &[u8],
    g: Geom,
    (want_x, want_w): (bool, bool),
) -> BlockGrads<T> {
    let (k, p, pooled) = (g.k(), g.p(), g.pooled());
    let zero = T::from_f64(0.0);
    // Weight gradients are summed over fixed groups of images; an input gradient alone is
    // computed image by image, which spreads more evenly over the threads.
    let group_size = if want_w { GROUP } else { 1 };
    let par = g.parallelism(group_size);
    let (starts, corners) = g.windows();
    let plane = g.hp * g.wp;
    // Without an input gradient, `dx` is a placeholder with one entry per group of images.
    let groups = g.n.div_ceil(group_size);
    let mut dx = vec![zero; if want_x { g.n * g.image() } else { groups }];
    let chunk = if want_x { group_size * g.image() } else { 1 };
    // One (dw, db) partial sum per group of images, in group order.
    let partials: Vec<(Vec<T>, Vec<T>)> = dx
        .par_chunks_mut(chunk)
        .enumerate()
        .map(|(group, dx_group)| {
            let (mut col, mut dpre) =
                (vec![zero; if want_w { k * p } else { 0 }], vec![zero; if want_w { g.o * p } else { 0 }]);
            let (mut dcol_t, mut touched) = (vec![zero; if want_x { p * k } else { 0 }], vec![false; p]);
            let mut dw = vec![zero; if want_w { g.o * k } else { 0 }];
            let mut db = vec![zero; if want_w { g.o } else { 0 }];
            for i in group * group_size..((group + 1) * group_size).min(g.n) {
                dpre.fill(zero);
                dcol_t.fill(zero);
                touched.fill(false);
                let at = i * pooled;
                // The gradient reaches one corner of each window whose output passed the relu: at
                // most a quarter of the convolution outputs, so the input gradient is built from
                // those alone, one weight row per nonzero (dense, it would be w^T * dpre).
                for (j, &start) in starts.iter().enumerate() {
                    if res[at + j] > zero {
                        let (d, oc) = (grad[at + j], j / plane);
                        let at_conv = start + corners[(argmax[at + j] & 3) as usize];
                        if want_w {
                            dpre[at_conv] = d;
                            db[oc] += d;
                        }
                        if want_x {
                            let pos = at_conv - oc * p;
                            touched[pos] = true;
                            for (r, &wv) in dcol_t[pos * k..][..k].iter_mut().zip(&w[oc * k..][..k]) {
                                *r += d * wv;
                            }
                        }
                    }
                }
                if want_x {
                    patches_to_image(
                        &dcol_t,
                        &touched,
                        &g,
                        &mut dx_group[(i - group * group_size) * g.image()..][..g.image()],
                    );
                }
                if want_w {
                    // dw (O x K) += dpre (O x P) * col^T (P x K)
                    im2col(&x[i * g.image()..][..g.image()], &g, &mut col);
                    matmul((g.o, k, p), &mut dw, (k, 1), true, &dpre, (p, 1), &col, (1, p), par);
                }
            }
            (dw, db)
        })
        .collect();
    let dwb = want_w.then(|| {
        let mut parts = partials.into_iter();
        let (mut dw, mut db) = parts.next().unwrap_or_default();
        for (pw, pb) in parts {
            dw.iter_mut().zip(&pw).for_each(|(a, b)| *a += *b);
            db.iter_mut().zip(&pb).for_each(|(a, b)| *a += *b);
        }
        (dw, db)
    });
    (want_x.then_some(dx), dwb)
}

/// The gradients a conv block's backward pass returns: the input's, and the weights' and bias's.
type BlockGrads<T> = (Option<Vec<T>>, Option<(Vec<T>, Vec<T>)>);

/// The frame of a conv block's backward pass: what is asked for (the input's gradient, the
/// weights'), the input (only when the weights' gradient needs it) and the weights as vectors, the
/// pooling choices the forward pass recorded, and the gradients back as tensors.
#[allow(clippy::type_complexity)]
fn block_bwd<T: Float>(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    record: &Mutex<Vec<u8>>,
    run: impl FnOnce(&[T], &[T], &[u8], (bool, bool)) -> candle_core::Result<BlockGrads<T>>,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let want = (x.track_op(), w.track_op() || b.track_op());
    if !want.0 && !want.1 {
        return Ok((None, None, None));
    }
    let argmax = record.lock().map_err(|_| candle_core::Error::Msg("conv block: poisoned lock".into()))?;
    let (dx, dwb) = with_data(w, |ws: &[T]| {
        if want.1 {
            with_data(x, |xs: &[T]| run(xs, ws, &argmax, want))
        } else {
            run(&[], ws, &argmax, want)
        }
    })?;
    let dx = dx.map(|d| Tensor::from_vec(d, x.shape(), x.device())).transpose()?;
    let (dw, db) = match dwb {
        Some((dw, db)) => {
            (Some(Tensor::from_vec(dw, w.shape(), w.device())?), Some(Tensor::from_vec(db, b.shape(), b.device())?))
        }
        None => (None, None),
    };
    Ok((dx, dw, db))
}

fn slice<'a, T: Float>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("conv_relu_pool: a non-contiguous argument".into()))?;
    Ok(&T::cpu_storage_as_slice(s)?[start..end])
}

/// `f` of `t`'s elements, borrowed where they lie contiguous in CPU memory (measured: copying the
/// backward passes' inputs took 3% of an IBP training step, all of it on one thread), copied
/// otherwise.
fn with_data<T: Float, R>(t: &Tensor, f: impl FnOnce(&[T]) -> candle_core::Result<R>) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    if let (candle_core::Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
        return f(&T::cpu_storage_as_slice(cpu)?[start..end]);
    }
    drop(storage);
    f(&t.flatten_all()?.to_vec1::<T>()?)
}

impl ConvReluPool {
    fn fwd<T: Float>(&self, s: [(&CpuStorage, &Layout); 3]) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(s[0].1.dims(), s[1].1.dims()[0]);
        let (out, argmax) = forward::<T>(slice(s[0].0, s[0].1)?, slice(s[1].0, s[1].1)?, slice(s[2].0, s[2].1)?, g);
        *self.argmax.lock().map_err(|_| candle_core::Error::Msg("conv_relu_pool: poisoned lock".into()))? = argmax;
        Ok((T::to_cpu_storage_owned(out), Shape::from((g.n, g.o, g.hp, g.wp))))
    }

    fn bwd_typed<T: Float>(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = Geom::new(x.dims(), w.dim(0)?);
        block_bwd(x, w, b, &self.argmax, |xs, ws, argmax, want| {
            with_data(res, |res: &[T]| with_data(grad, |grad: &[T]| Ok(backward(xs, ws, res, grad, argmax, g, want))))
        })
    }
}

/// In the op's record of a pooled bound: it was above 0, so its gradient goes through.
const PASSED: u8 = 4;

/// Max-pools the pre-activations (of a block, or of one bound of an interval block), adds the bias
/// and applies relu; records each window's maximum's corner and whether it passed. Channel by
/// channel and row pair by row pair (measured: looking each window up in `Geom::windows` and
/// dividing for its channel took twice as long).
fn pool_bound<T: Float>(pre: &[T], b: &[T], g: &Geom, out: &mut [T], argmax: &mut [u8]) {
    let zero = T::from_f64(0.0);
    let plane = g.hp * g.wp;
    for (oc, (out, argmax)) in out.chunks_exact_mut(plane).zip(argmax.chunks_exact_mut(plane)).enumerate() {
        let bias = b[oc];
        let conv = &pre[oc * g.p()..][..g.p()];
        for (py, (out, argmax)) in out.chunks_exact_mut(g.wp).zip(argmax.chunks_exact_mut(g.wp)).enumerate() {
            let top = &conv[2 * py * g.wo..][..2 * g.wp];
            let bottom = &conv[(2 * py + 1) * g.wo..][..2 * g.wp];
            for (px, (out, am)) in out.iter_mut().zip(argmax.iter_mut()).enumerate() {
                // Corners in row-major order; the first of equal maxima wins.
                let (mut best, mut pick) = (top[2 * px], 0u8);
                for (corner, v) in [(1u8, top[2 * px + 1]), (2, bottom[2 * px]), (3, bottom[2 * px + 1])] {
                    if v > best {
                        (best, pick) = (v, corner);
                    }
                }
                let v = best + bias;
                (*out, *am) = if v > zero { (v, pick | PASSED) } else { (zero, pick) };
            }
        }
    }
}
