//! Weight products `x · W + b` for layers that only run forward (the
//! encoder's own forward, an adapted head's layers at prediction), with
//! each weight packed once for tract-linalg's matrix kernels, the ones
//! tract itself runs (AVX-512, FMA or VNNI on x86_64, NEON or the dot
//! product instructions on ARM, picked for the CPU at run time).
//!
//! A product is f32, or int8 as the int8 compiled graph runs it (see
//! `encoder/int8.rs`): each activation row scaled per channel
//! (`unsmooth`), quantised symmetrically with a step of its own, multiplied
//! by the weight's int8 levels into i32, and scaled back by the row's step
//! and the column's scale.
//!
//! ndarray's products (matrixmultiply) pack both operands on every call and
//! are slow when the activations have few rows, as a prediction's do; on
//! the many rows of a training batch they are as fast as tract-linalg's, so
//! training keeps them. They are also the fallback, and the only path in
//! builds without tract.

use ndarray::{Array1, Array2, ArrayView2, Axis};

#[cfg(feature = "tract")]
use super::quantise::{quantise_rows, scale_sums};

/// A weight product's weight `[k, m]`, as the model stores it.
#[derive(Debug, Clone)]
pub enum Weight {
    F32(Array2<f32>),
    Int8(Int8Weight),
}

/// An int8 product's weight: `W ≈ diag(unsmooth) · levels · diag(column_scales)`
/// (the smoothing moved part of each activation channel's range into the
/// levels; activations are multiplied by `unsmooth` before quantisation).
#[derive(Debug, Clone)]
pub struct Int8Weight {
    pub levels: Array2<i8>,
    pub column_scales: Array1<f32>,
    /// What each activation channel is multiplied by before quantisation.
    pub unsmooth: Array1<f32>,
}

impl Weight {
    /// `[k, m]`.
    pub fn dim(&self) -> (usize, usize) {
        match self {
            Weight::F32(weight) => weight.dim(),
            Weight::Int8(weight) => weight.levels.dim(),
        }
    }
}

/// `x · W + b`, ready to run forward.
pub(crate) struct Projection {
    shape: (usize, usize),
    bias: Array1<f32>,
    multiply: Multiply,
}

enum Multiply {
    #[cfg(feature = "tract")]
    F32(kernels::Packed),
    #[cfg(feature = "tract")]
    Int8 { levels: kernels::Packed, column_scales: Vec<f32>, unsmooth: Vec<f32> },
    /// ndarray's product, on f32 weights (an int8 weight dequantised).
    Plain(Array2<f32>),
}

impl std::fmt::Debug for Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projection").field("shape", &self.shape).field("kernel", &self.kernel()).finish()
    }
}

impl Projection {
    pub fn new(weight: &Weight, bias: &Array1<f32>) -> Self {
        match weight {
            Weight::F32(matrix) => Self::f32(matrix, bias),
            Weight::Int8(int8) => Self::with(int8.levels.dim(), bias, Multiply::int8(int8)),
        }
    }

    /// For an f32 weight held elsewhere (an adapted head's layers).
    pub fn f32(weight: &Array2<f32>, bias: &Array1<f32>) -> Self {
        Self::with(weight.dim(), bias, Multiply::f32(weight))
    }

    fn with(shape: (usize, usize), bias: &Array1<f32>, multiply: Multiply) -> Self {
        assert_eq!(bias.len(), shape.1, "a bias per output");
        Self { shape, bias: bias.clone(), multiply }
    }

    /// `x · W + b` for `x` of `[n, k]`.
    pub fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        assert_eq!(x.ncols(), self.shape.0, "the product's inner sizes differ");
        if x.nrows() == 0 || self.shape.0 == 0 {
            return Array2::zeros((x.nrows(), self.shape.1)) + &self.bias;
        }
        match &self.multiply {
            #[cfg(feature = "tract")]
            Multiply::F32(packed) => packed.times_f32(x, &self.bias),
            #[cfg(feature = "tract")]
            Multiply::Int8 { levels, column_scales, unsmooth } => {
                let (quantised, steps) = quantise(x, unsmooth);
                let sums = levels.times_i8(&quantised, x.nrows());
                rescale(&sums, &steps, column_scales, &self.bias)
            }
            Multiply::Plain(weight) => x.dot(weight) + &self.bias,
        }
    }

    /// The name of the kernel the product runs on, when not ndarray's.
    pub fn kernel(&self) -> Option<&str> {
        match &self.multiply {
            #[cfg(feature = "tract")]
            Multiply::F32(packed) | Multiply::Int8 { levels: packed, .. } => Some(packed.kernel.name()),
            Multiply::Plain(_) => None,
        }
    }
}

impl Multiply {
    fn f32(weight: &Array2<f32>) -> Self {
        #[cfg(feature = "tract")]
        if let Some(packed) = kernels::Packed::f32(weight) {
            return Multiply::F32(packed);
        }
        Multiply::Plain(weight.clone())
    }

    fn int8(weight: &Int8Weight) -> Self {
        #[cfg(feature = "tract")]
        if let Some(levels) = kernels::Packed::i8(&weight.levels) {
            let (column_scales, unsmooth) = (weight.column_scales.to_vec(), weight.unsmooth.to_vec());
            return Multiply::Int8 { levels, column_scales, unsmooth };
        }
        Multiply::Plain(dequantised(weight))
    }
}

/// The f32 weight an int8 weight stands for.
fn dequantised(weight: &Int8Weight) -> Array2<f32> {
    let levels = weight.levels.mapv(f32::from);
    let unsmooth = weight.unsmooth.view().insert_axis(Axis(1));
    levels * &weight.column_scales * unsmooth
}

/// `x`'s rows scaled by `unsmooth` and quantised: levels `[n, k]` row after
/// row, and each row's step.
#[cfg(feature = "tract")]
fn quantise(x: ArrayView2<f32>, unsmooth: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let contiguous = x.as_standard_layout();
    let values = contiguous.as_slice().expect("standard layout");
    let (mut levels, mut steps) = (vec![0i8; values.len()], vec![0f32; x.nrows()]);
    quantise_rows(values, unsmooth, &mut levels, &mut steps);
    (levels, steps)
}

/// `sums[r][c] × steps[r] × column_scales[c] + bias[c]`, `[n, m]`.
#[cfg(feature = "tract")]
fn rescale(sums: &[i32], steps: &[f32], column_scales: &[f32], bias: &Array1<f32>) -> Array2<f32> {
    let values = scale_sums(sums, steps, column_scales, Some(bias.as_slice().expect("a bias is contiguous")));
    Array2::from_shape_vec((steps.len(), column_scales.len()), values).expect("a sum per row and column")
}

#[cfg(feature = "tract")]
mod kernels {
    // tract-linalg's kernel interface is unsafe: `run` writes through the
    // output store's raw pointer. Its preconditions are kept here, and
    // nothing unsafe leaves this module.
    #![allow(unsafe_code)]

    use ndarray::{Array1, Array2, ArrayView2};
    use tract_core::internal::{Datum, DatumType, Tensor};
    use tract_linalg::mmm::{AsInputValue, FusedSpec, MMMInputValue, MatMatMul, Query};
    use tract_linalg::{BinOp, MmmDispatch};

    /// A weight `[k, m]` packed as the kernel's `A` operand (`m × k`): a
    /// product `x · W` runs as `(Wᵀ · xᵀ)ᵀ`, so the kernel's `m` is the
    /// layer's width and its `n` the tokens, the split its tiles are cut for.
    pub(super) struct Packed {
        pub kernel: Box<dyn MatMatMul>,
        packing: usize,
        weight: Box<dyn MMMInputValue>,
        k: usize,
        m: usize,
    }

    impl Packed {
        /// For an f32 product; `None` when no kernel fits or tract refuses it.
        pub fn f32(weight: &Array2<f32>) -> Option<Self> {
            Self::new(weight.view(), DatumType::F32)
        }

        /// For an int8 × int8 → i32 product.
        pub fn i8(levels: &Array2<i8>) -> Option<Self> {
            Self::new(levels.view(), DatumType::I32)
        }

        fn new<T: Datum + Copy>(weight: ArrayView2<T>, accumulator: DatumType) -> Option<Self> {
            let (k, m) = weight.dim();
            if k == 0 || m == 0 {
                return None;
            }
            // The token count is left open, as tract's own plans leave it:
            // a kernel picked for one token count runs the others slower
            // (docs/benchmarks/encoder.md).
            let query = Query::plain(accumulator, Some(m), Some(k), None);
            let (kernel, packing, extractor) = MmmDispatch::native().pick(&query)?;
            if extractor.is_some() {
                return None;
            }
            let contiguous = weight.as_standard_layout();
            let tensor = Tensor::from_shape(&[k, m], contiguous.as_slice()?).ok()?;
            let packed = kernel.packings()[packing].0.prepare_one(&tensor, 0, 1).ok()?;
            ((packed.k(), packed.mn()) == (k, m)).then_some(Self { kernel, packing, weight: packed, k, m })
        }

        /// `x · W + bias`, on an f32 kernel.
        pub fn times_f32(&self, x: ArrayView2<f32>, bias: &Array1<f32>) -> Array2<f32> {
            let n = x.nrows();
            let tokens = Tensor::from(x.as_standard_layout().into_owned());
            let bias = Tensor::from(bias.clone());
            let mut output = Tensor::zero::<f32>(&[n, self.m]).expect("an f32 tensor");
            self.run(&tokens, &mut output, Some(&bias));
            let values = output.into_plain_array::<f32>().expect("an f32 tensor");
            values.into_dimensionality().expect("two axes")
        }

        /// The i32 sums of `levels` (`[n, k]`, row after row) times the
        /// weight's levels, `[n, m]` row after row, on an integer kernel.
        pub fn times_i8(&self, levels: &[i8], n: usize) -> Vec<i32> {
            let tokens = Tensor::from_shape(&[n, self.k], levels).expect("a level per token and channel");
            let mut output = Tensor::zero::<i32>(&[n, self.m]).expect("an i32 tensor");
            self.run(&tokens, &mut output, None);
            output.try_as_plain_ram().and_then(|plain| plain.as_slice::<i32>().map(<[i32]>::to_vec)).expect("i32")
        }

        /// Runs the kernel on `tokens` (`[n, k]`, the weight's operand type)
        /// into `output` (`[n, m]`, the accumulator's type), adding `bias`
        /// per output column when given.
        fn run(&self, tokens: &Tensor, output: &mut Tensor, bias: Option<&Tensor>) {
            let n = tokens.shape()[0];
            assert_eq!(tokens.shape(), [n, self.k], "tokens of the weight's k");
            assert_eq!(output.shape(), [n, self.m], "an output per token and column");
            assert!(bias.is_none_or(|b| b.shape() == [self.m] && b.datum_type() == output.datum_type()));
            let packed_tokens = self.kernel.packings()[self.packing].1.prepare_one(tokens, 1, 0).expect("packable");
            assert_eq!((packed_tokens.k(), packed_tokens.mn()), (self.k, n), "packed for this product");
            // SAFETY: the store wraps `output`, a tensor of the kernel's
            // accumulator type with `n` rows by `m` columns, whose axis 1
            // is the kernel's m and axis 0 its n; the bias has one value
            // of that type per m; both operands were packed by this
            // kernel's own packing for this k, m and n (asserted above),
            // so the kernel reads and writes within them.
            let ran = unsafe {
                let store = self.kernel.c_view(Some(1), Some(0)).wrap(&output.view_mut());
                let product = FusedSpec::AddMatMul {
                    a: AsInputValue::Borrowed(&*self.weight),
                    b: AsInputValue::Borrowed(&*packed_tokens),
                    packing: self.packing,
                };
                match bias {
                    Some(bias) => self.kernel.run(
                        self.m,
                        n,
                        &[product, FusedSpec::BinPerRow(bias.view(), BinOp::Add), FusedSpec::Store(store)],
                    ),
                    None => self.kernel.run(self.m, n, &[product, FusedSpec::Store(store)]),
                }
            };
            ran.expect("the kernel runs on operands it packed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, columns: usize, seed: usize) -> Array2<f32> {
        Array2::from_shape_fn((rows, columns), |(r, c)| ((r * 31 + c * 17 + seed) % 23) as f32 / 7.0 - 1.5)
    }

    fn naive(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
        Array2::from_shape_fn((a.nrows(), b.ncols()), |(r, c)| {
            (0..a.ncols()).map(|i| a[[r, i]] as f64 * b[[i, c]] as f64).sum::<f64>() as f32
        })
    }

    fn bias(columns: usize) -> Array1<f32> {
        Array1::from_shape_fn(columns, |c| c as f32 * 0.25 - 1.0)
    }

    fn assert_close(found: &Array2<f32>, expected: &Array2<f32>, tolerance: f32) {
        assert_eq!(found.dim(), expected.dim());
        for (f, e) in found.iter().zip(expected) {
            assert!((f - e).abs() <= tolerance * (1.0 + e.abs()), "{f} against {e}");
        }
    }

    #[test]
    fn f32_products_match_the_definition() {
        for (n, k, m) in [(1, 3, 2), (12, 384, 40), (7, 33, 129), (130, 17, 5), (3, 1, 1)] {
            let (x, weight, bias) = (matrix(n, k, 1), matrix(k, m, 2), bias(m));
            let projection = Projection::new(&Weight::F32(weight.clone()), &bias);
            assert_close(&projection.apply(x.view()), &(naive(x.view(), weight.view()) + &bias), 1e-4);
            // A view that is not contiguous is taken too.
            let wide = matrix(n, 2 * k, 3);
            let every_other = wide.slice(ndarray::s![.., ..;2]);
            assert_close(&projection.apply(every_other), &(naive(every_other, weight.view()) + &bias), 1e-4);
        }
    }

    /// The int8 product is exact on the levels: with rows whose values are
    /// already whole multiples of their step (1 here), it is the integer
    /// product scaled.
    #[test]
    fn int8_products_are_exact_on_their_levels() {
        for (n, k, m) in [(1, 4, 3), (12, 384, 40), (7, 33, 129), (130, 17, 5)] {
            let levels = Array2::from_shape_fn((k, m), |(r, c)| (((r * 7 + c * 13) % 255) as i32 - 127) as i8);
            let column_scales = Array1::from_shape_fn(m, |c| 0.01 + c as f32 * 1e-3);
            let unsmooth = Array1::from_shape_fn(k, |c| [0.5f32, 1.0, 2.0][c % 3]);
            let weight = Int8Weight { levels, column_scales, unsmooth };
            // Each row holds -127 and 127 (after unsmoothing) so its step is 1.
            let x = Array2::from_shape_fn((n, k), |(r, c)| {
                let level = match c {
                    0 => 127.0,
                    1 => -127.0,
                    _ => ((r * 5 + c * 3) % 200) as f32 - 100.0,
                };
                level / weight.unsmooth[c]
            });
            let bias = bias(m);
            let expected = Array2::from_shape_fn((n, m), |(r, c)| {
                let level = |i: usize| (x[[r, i]] * weight.unsmooth[i]).round() as i64;
                let sum: i64 = (0..k).map(|i| level(i) * i64::from(weight.levels[[i, c]])).sum();
                (sum as f64 * f64::from(weight.column_scales[c]) + f64::from(bias[c])) as f32
            });
            let projection = Projection::new(&Weight::Int8(weight), &bias);
            assert_close(&projection.apply(x.view()), &expected, 1e-5);
        }
    }

    /// The fallback's f32 weight is the one the int8 weight stands for:
    /// `unsmooth[k] × levels[k][c] × column_scales[c]`.
    #[test]
    fn an_int8_weight_dequantises_as_the_graph_defines_it() {
        let weight = Int8Weight {
            levels: ndarray::array![[1i8, -2], [127, 0], [-127, 5]],
            column_scales: ndarray::array![0.5f32, 2.0],
            unsmooth: ndarray::array![1.0f32, 0.25, 4.0],
        };
        let expected = ndarray::array![[0.5f32, -4.0], [15.875, 0.0], [-254.0, 40.0]];
        assert_eq!(dequantised(&weight), expected);
    }

    #[test]
    #[cfg(feature = "tract")]
    fn weights_are_packed_for_tracts_kernels() {
        let f32_kernel = Projection::new(&Weight::F32(matrix(384, 384, 0)), &bias(384));
        let name = f32_kernel.kernel().expect("a kernel for an f32 product").to_string();
        assert!(name.contains("f32"), "{name}");
        let int8 = Int8Weight {
            levels: Array2::ones((384, 384)),
            column_scales: Array1::ones(384),
            unsmooth: Array1::ones(384),
        };
        let name = Projection::new(&Weight::Int8(int8), &bias(384)).kernel().expect("an int8 kernel").to_string();
        assert!(name.contains("i32"), "{name}");
    }

    #[test]
    fn empty_products_are_the_bias_in_the_right_shape() {
        let projection = Projection::new(&Weight::F32(matrix(4, 3, 0)), &bias(3));
        assert_eq!(projection.apply(matrix(0, 4, 0).view()).dim(), (0, 3));
        let empty_inner = Projection::new(&Weight::F32(matrix(0, 3, 0)), &bias(3));
        assert_eq!(empty_inner.apply(matrix(2, 0, 0).view()), Array2::<f32>::zeros((2, 3)) + &bias(3));
    }
}
