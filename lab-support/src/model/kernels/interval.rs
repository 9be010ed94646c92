//! The conv block on intervals, for interval bound propagation (`crate::certify`): the same
//! im2col, products and pooling as the plain block (`super`), on a box's centre and radius.

use super::{
    block_bwd, check_block, im2col, matmul, patches_to_image, pool_bound, slice, threads_for, with_data, BlockGrads,
    Float, Geom, GROUP, PASSED,
};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// A conv block on intervals, for interval bound propagation (`crate::certify`), in centre/radius
/// form: `x` is `(N, 2C, H, W)`, the centre `c` of each input box in its first `C` channels and
/// its radius `r` in the last `C`; `w` `(O, C, 3, 3)` and `b` `(O)` are the block's own weights.
/// The result is `(N, 2O, H', W')` in the same form, so blocks chain without splitting: the centre
/// and radius of the box between the block's lower and upper bounds, each pooled and relu'd bound
/// by bound (both are monotone).
///
/// The convolution on the box is `W c ± |W| r`: two products of the block's size per image. The
/// same bounds as one ordinary block of stacked weights `[[W, -|W|], [W, |W|]]` on `[c, r]`
/// (which this op replaced), whose product is twice as large, half of it on terms that cancel.
/// Its backward pass gives the gradient of `[c, r]` and of `w` (through `|W|`, whose derivative is
/// taken as +1 at 0, as candle's `abs` does) and `b`, each only when asked for.
pub fn interval_conv_relu_pool(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    check_block(x, w, b, 2, "interval_conv_relu_pool: input (centre and radius, 2C channels)")?;
    let op = IntervalConvReluPool { argmax: Mutex::new(Vec::new()) };
    x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, op)
}

float_op3!(IntervalConvReluPool, "interval-conv-relu-pool", "interval_conv_relu_pool");

struct IntervalConvReluPool {
    /// For each pooled output of each bound (lower, then upper, per image): which corner of its
    /// window was the maximum (bits 0-1), and whether it passed the relu (`PASSED`).
    argmax: Mutex<Vec<u8>>,
}

/// `g` is the geometry of one half: `g.c` input channels of the centre (or the radius).
fn interval_forward<T: Float>(x: &[T], w: &[T], b: &[T], g: Geom) -> (Vec<T>, Vec<u8>) {
    let (k, p, pooled) = (g.k(), g.p(), g.pooled());
    let zero = T::from_f64(0.0);
    let half = T::from_f64(0.5);
    let abs_w = abs(w);
    let mut out = vec![zero; g.n * 2 * pooled];
    let mut argmax = vec![0u8; g.n * 2 * pooled];
    let par = g.parallelism(1);
    let image = g.image();
    out.par_chunks_mut(2 * pooled).zip(argmax.par_chunks_mut(2 * pooled)).enumerate().for_each_init(
        || (vec![zero; k * p], vec![zero; g.o * p], vec![zero; g.o * p]),
        |(col, centre, spread), (i, (out, argmax))| {
            let x = &x[i * 2 * image..][..2 * image];
            im2col(&x[..image], &g, col);
            matmul((g.o, p, k), centre, (p, 1), false, w, (k, 1), col, (p, 1), par);
            im2col(&x[image..], &g, col);
            matmul((g.o, p, k), spread, (p, 1), false, &abs_w, (k, 1), col, (p, 1), par);
            // centre becomes the lower bound, spread the upper.
            for (c, s) in centre.iter_mut().zip(spread.iter_mut()) {
                (*c, *s) = (*c - *s, *c + *s);
            }
            let (out_c, out_r) = out.split_at_mut(pooled);
            let (am_lo, am_hi) = argmax.split_at_mut(pooled);
            pool_bound(centre, b, &g, out_c, am_lo);
            pool_bound(spread, b, &g, out_r, am_hi);
            // Lower and upper bound to centre and radius.
            for (c, r) in out_c.iter_mut().zip(out_r.iter_mut()) {
                (*c, *r) = ((*c + *r) * half, (*r - *c) * half);
            }
        },
    );
    (out, argmax)
}

/// Gradients of the interval block: `(dx, (dw, db))`, each only when asked for.
fn interval_backward<T: Float>(
    x: &[T],
    w: &[T],
    grad: &[T],
    argmax: &[u8],
    g: Geom,
    (want_x, want_w): (bool, bool),
) -> BlockGrads<T> {
    let (k, p, pooled) = (g.k(), g.p(), g.pooled());
    let zero = T::from_f64(0.0);
    let half = T::from_f64(0.5);
    let abs_w = abs(w);
    let group_size = if want_w { GROUP } else { 1 };
    let par = g.parallelism(group_size);
    let (starts, corners) = g.windows();
    let plane = g.hp * g.wp;
    let image = g.image();
    let groups = g.n.div_ceil(group_size);
    let mut dx = vec![zero; if want_x { g.n * 2 * image } else { groups }];
    let chunk = if want_x { group_size * 2 * image } else { 1 };
    // Per group of images: the weight gradient through the centre (`W c`), through the radius
    // (`|W| r`, before the sign of W), and the bias gradient.
    let partials: Vec<(Vec<T>, Vec<T>, Vec<T>)> = dx
        .par_chunks_mut(chunk)
        .enumerate()
        .map(|(group, dx_group)| {
            let mut col = vec![zero; if want_w { k * p } else { 0 }];
            let (mut d_centre, mut d_spread) = (vec![zero; g.o * p], vec![zero; g.o * p]);
            // The input gradient's patches, as one product each (`gemm`'s vector code): measured,
            // faster than adding a weight row per nonzero output as the plain block does.
            let mut dcol_t = vec![zero; if want_x { p * k } else { 0 }];
            let all = vec![true; p];
            let (mut dw_c, mut dw_r) =
                (vec![zero; if want_w { g.o * k } else { 0 }], vec![zero; if want_w { g.o * k } else { 0 }]);
            let mut db = vec![zero; if want_w { g.o } else { 0 }];
            for i in group * group_size..((group + 1) * group_size).min(g.n) {
                d_centre.fill(zero);
                d_spread.fill(zero);
                let at = i * 2 * pooled;
                let (g_c, g_r) = (&grad[at..][..pooled], &grad[at + pooled..][..pooled]);
                // The output's centre is (lo + hi) / 2 and its radius (hi - lo) / 2. The lower
                // bound `c' - s'` and the upper `c' + s'` each pass their gradient to one corner of
                // each window whose output passed the relu.
                for (bound, sign) in [(0, -1.0), (1, 1.0)] {
                    let record = &argmax[at + bound * pooled..][..pooled];
                    for (j, &start) in starts.iter().enumerate() {
                        if record[j] & PASSED != 0 {
                            let d = if bound == 0 { (g_c[j] - g_r[j]) * half } else { (g_c[j] + g_r[j]) * half };
                            let at_conv = start + corners[(record[j] & 3) as usize];
                            d_centre[at_conv] += d;
                            d_spread[at_conv] += d * T::from_f64(sign);
                            if want_w {
                                db[j / plane] += d;
                            }
                        }
                    }
                }
                if want_x {
                    let dx_image = &mut dx_group[(i - group * group_size) * 2 * image..][..2 * image];
                    let (dx_c, dx_r) = dx_image.split_at_mut(image);
                    // dcol^T (P x K) = d^T (P x O) * W (O x K), then back onto the image.
                    matmul((p, k, g.o), &mut dcol_t, (k, 1), false, &d_centre, (1, p), w, (k, 1), par);
                    patches_to_image(&dcol_t, &all, &g, dx_c);
                    matmul((p, k, g.o), &mut dcol_t, (k, 1), false, &d_spread, (1, p), &abs_w, (k, 1), par);
                    patches_to_image(&dcol_t, &all, &g, dx_r);
                }
                if want_w {
                    // dw (O x K) += d (O x P) * col^T (P x K), for the centre and the radius.
                    let x = &x[i * 2 * image..][..2 * image];
                    im2col(&x[..image], &g, &mut col);
                    matmul((g.o, k, p), &mut dw_c, (k, 1), true, &d_centre, (p, 1), &col, (1, p), par);
                    im2col(&x[image..], &g, &mut col);
                    matmul((g.o, k, p), &mut dw_r, (k, 1), true, &d_spread, (p, 1), &col, (1, p), par);
                }
            }
            (dw_c, dw_r, db)
        })
        .collect();
    let dwb = want_w.then(|| {
        let mut parts = partials.into_iter();
        let (mut dw_c, mut dw_r, mut db) = parts.next().unwrap_or_default();
        for (pc, pr, pb) in parts {
            dw_c.iter_mut().zip(&pc).for_each(|(a, b)| *a += *b);
            dw_r.iter_mut().zip(&pr).for_each(|(a, b)| *a += *b);
            db.iter_mut().zip(&pb).for_each(|(a, b)| *a += *b);
        }
        // d|W|/dW = +1 where W >= 0, -1 below (candle's `abs`).
        for ((dc, dr), &wv) in dw_c.iter_mut().zip(&dw_r).zip(w) {
            *dc = if wv >= zero { *dc + *dr } else { *dc - *dr };
        }
        (dw_c, db)
    });
    (want_x.then_some(dx), dwb)
}

impl IntervalConvReluPool {
    fn geom(x: &[usize], o: usize) -> Geom {
        Geom::new(&[x[0], x[1] / 2, x[2], x[3]], o)
    }

    fn fwd<T: Float>(&self, s: [(&CpuStorage, &Layout); 3]) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Self::geom(s[0].1.dims(), s[1].1.dims()[0]);
        let (out, argmax) =
            interval_forward::<T>(slice(s[0].0, s[0].1)?, slice(s[1].0, s[1].1)?, slice(s[2].0, s[2].1)?, g);
        *self.argmax.lock().map_err(|_| candle_core::Error::Msg("interval_conv_relu_pool: poisoned lock".into()))? =
            argmax;
        Ok((T::to_cpu_storage_owned(out), Shape::from((g.n, 2 * g.o, g.hp, g.wp))))
    }

    fn bwd_typed<T: Float>(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = Self::geom(x.dims(), w.dim(0)?);
        block_bwd(x, w, b, &self.argmax, |xs, ws, argmax, want| {
            with_data(grad, |grad: &[T]| Ok(interval_backward(xs, ws, grad, argmax, g, want)))
        })
    }
}

/// A linear layer on intervals in centre/radius form: `x` is `(N, 2F)`, each row the centre `c` of
/// a box and then its radius `r`; `w` `(H, F)` and `b` `(H)` are the layer's own weights. The
/// result is `(N, 2H)` in the same form: `W c + b` and `|W| r`, the box around the layer's image
/// of the input box.
///
/// As one op it takes the conv blocks' stacked output as it is (a reshape, no copy) and its
/// backward pass gives `W`'s gradient through `|W|` directly (+1 at 0, as candle's `abs`): built
/// from candle ops, the split, `|W|` and their backward passes cost several passes over the
/// weights and the activations.
pub fn interval_linear(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (_, width) = x.dims2()?;
    let (outputs, inputs) = w.dims2()?;
    if width != 2 * inputs || b.dims() != [outputs] {
        candle_core::bail!(
            "interval_linear: input (centre and radius, 2F columns) {:?}, weight {:?}, bias {:?} do not fit together",
            x.dims(),
            w.dims(),
            b.dims()
        );
    }
    x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, IntervalLinear)
}

struct IntervalLinear;

float_op3!(IntervalLinear, "interval-linear", "interval_linear");

fn abs<T: Float>(w: &[T]) -> Vec<T> {
    let zero = T::from_f64(0.0);
    w.iter().map(|&v| if v < zero { zero - v } else { v }).collect()
}

impl IntervalLinear {
    fn fwd<T: Float>(&self, s: [(&CpuStorage, &Layout); 3]) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (slice::<T>(s[0].0, s[0].1)?, slice::<T>(s[1].0, s[1].1)?, slice::<T>(s[2].0, s[2].1)?);
        let (n, outputs, inputs) = (s[0].1.dims()[0], b.len(), s[1].1.dims()[1]);
        let zero = T::from_f64(0.0);
        let mut y = vec![zero; n * 2 * outputs];
        for row in y.chunks_exact_mut(2 * outputs) {
            row[..outputs].copy_from_slice(b);
        }
        if n > 0 && outputs > 0 && inputs > 0 {
            let par = threads_for(n * inputs * outputs);
            // y_c (N x out) += c (N x in) * w^T (in x out), then y_r = r * |w|^T; rows 2 out apart.
            matmul((n, outputs, inputs), &mut y, (2 * outputs, 1), true, x, (2 * inputs, 1), w, (1, inputs), par);
            let (abs_w, r) = (abs(w), &x[inputs..]);
            let yr = &mut y[outputs..];
            matmul((n, outputs, inputs), yr, (2 * outputs, 1), false, r, (2 * inputs, 1), &abs_w, (1, inputs), par);
        }
        Ok((T::to_cpu_storage_owned(y), Shape::from((n, 2 * outputs))))
    }

    fn bwd_typed<T: Float>(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, (outputs, inputs)) = (x.dim(0)?, w.dims2()?);
        let zero = T::from_f64(0.0);
        if n == 0 || outputs == 0 || inputs == 0 {
            let none = |t: &Tensor| t.track_op().then(|| t.zeros_like()).transpose();
            return Ok((none(x)?, none(w)?, none(b)?));
        }
        let par = threads_for(n * inputs * outputs);
        with_data(grad, |g: &[T]| {
            with_data(w, |w_data: &[T]| {
                let abs_w = abs(w_data);
                let (gc, gr) = (g, &g[outputs..]);
                let dx = if x.track_op() {
                    let mut dx = vec![zero; n * 2 * inputs];
                    // dc (N x in) = g_c (N x out) * w (out x in), then dr = g_r * |w|; rows 2 in apart.
                    let rows = (2 * inputs, 1);
                    matmul((n, inputs, outputs), &mut dx, rows, false, gc, (2 * outputs, 1), w_data, (inputs, 1), par);
                    let dr = &mut dx[inputs..];
                    matmul((n, inputs, outputs), dr, rows, false, gr, (2 * outputs, 1), &abs_w, (inputs, 1), par);
                    Some(Tensor::from_vec(dx, x.shape(), x.device())?)
                } else {
                    None
                };
                if !(w.track_op() || b.track_op()) {
                    return Ok((dx, None, None));
                }
                let (mut dw, mut dw_r) = (vec![zero; outputs * inputs], vec![zero; outputs * inputs]);
                with_data(x, |x: &[T]| {
                    // dw (out x in) = g_c^T (out x N) * c (N x in), and through |w|: g_r^T * r.
                    let (g_cols, rows) = ((1, 2 * outputs), (2 * inputs, 1));
                    matmul((outputs, inputs, n), &mut dw, (inputs, 1), false, gc, g_cols, x, rows, par);
                    let r = &x[inputs..];
                    matmul((outputs, inputs, n), &mut dw_r, (inputs, 1), false, gr, g_cols, r, rows, par);
                    Ok(())
                })?;
                for ((d, dr), &wv) in dw.iter_mut().zip(&dw_r).zip(w_data) {
                    *d = if wv >= zero { *d + *dr } else { *d - *dr };
                }
                let mut db = vec![zero; outputs];
                for row in gc.chunks(2 * outputs) {
                    db.iter_mut().zip(row).for_each(|(d, v)| *d += *v);
                }
                Ok((
                    dx,
                    Some(Tensor::from_vec(dw, w.shape(), w.device())?),
                    Some(Tensor::from_vec(db, b.shape(), b.device())?),
                ))
            })
        })
    }
}
