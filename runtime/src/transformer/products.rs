//! Weight products for layers that only run forward (an adapted head's
//! layers at prediction), with each weight packed once for tract-linalg's
//! matrix kernels, the ones tract itself runs (AVX-512 or FMA on x86_64,
//! NEON on ARM, picked for the CPU at run time).
//!
//! ndarray's products (matrixmultiply) pack both operands on every call and
//! are slow when the activations have few rows, as a prediction's do; on
//! the many rows of a training batch they are as fast as tract-linalg's, so
//! training keeps them. They are also the fallback, and the only path in
//! builds without tract.

use ndarray::{Array2, ArrayView2};

/// A weight matrix `[k, m]` packed for products `x · weight`; the matrix
/// itself stays with its owner, which passes it along for the fallback.
pub(crate) struct PackedWeight {
    shape: (usize, usize),
    #[cfg(feature = "tract")]
    packed: Option<kernels::Packed>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeight").field("shape", &self.shape).field("kernel", &self.kernel()).finish()
    }
}

impl PackedWeight {
    pub fn new(weight: &Array2<f32>) -> Self {
        Self {
            shape: weight.dim(),
            #[cfg(feature = "tract")]
            packed: kernels::Packed::new(weight.view()),
        }
    }

    /// `x · weight`, `weight` being the matrix this was packed from.
    pub fn times(&self, x: ArrayView2<f32>, weight: &Array2<f32>) -> Array2<f32> {
        assert_eq!(weight.dim(), self.shape, "packed from another weight");
        assert_eq!(x.ncols(), self.shape.0, "the product's inner sizes differ");
        #[cfg(feature = "tract")]
        if let Some(product) = self.packed.as_ref().and_then(|packed| packed.times(x)) {
            return product;
        }
        x.dot(weight)
    }

    /// The name of the kernel products run on, when not ndarray's.
    pub fn kernel(&self) -> Option<&str> {
        #[cfg(feature = "tract")]
        if let Some(packed) = &self.packed {
            return Some(packed.kernel.name());
        }
        None
    }
}

#[cfg(feature = "tract")]
mod kernels {
    // tract-linalg's kernel interface is unsafe: `run` writes through the
    // output store's raw pointer. Its preconditions are kept here, and
    // nothing unsafe leaves this module.
    #![allow(unsafe_code)]

    use ndarray::{Array2, ArrayView2};
    use tract_core::internal::{DatumType, Tensor};
    use tract_linalg::MmmDispatch;
    use tract_linalg::mmm::{AsInputValue, FusedSpec, MMMInputValue, MatMatMul, Query};

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
        /// `None` when no kernel fits the weight or tract refuses it.
        pub fn new(weight: ArrayView2<f32>) -> Option<Self> {
            let (k, m) = weight.dim();
            if k == 0 || m == 0 {
                return None;
            }
            // The token count is left open, as tract's own plans leave it:
            // on the default model that picks `avx512_mmm_f32_64x3` here,
            // and six layers ran a sentence in 6.8 ms, against 8.8 ms on
            // the kernel picked for 16 tokens and 9.5 ms on the one for 12.
            let query = Query::plain(DatumType::F32, Some(m), Some(k), None);
            let (kernel, packing, extractor) = MmmDispatch::native().pick(&query)?;
            if extractor.is_some() {
                return None;
            }
            let contiguous = weight.as_standard_layout();
            let tensor = Tensor::from_shape(&[k, m], contiguous.as_slice()?).ok()?;
            let packed = kernel.packings()[packing].0.prepare_one(&tensor, 0, 1).ok()?;
            ((packed.k(), packed.mn()) == (k, m)).then_some(Self { kernel, packing, weight: packed, k, m })
        }

        /// `x · W`, `None` when tract refuses `x`.
        pub fn times(&self, x: ArrayView2<f32>) -> Option<Array2<f32>> {
            let n = x.nrows();
            if n == 0 || x.ncols() != self.k {
                return None;
            }
            let contiguous = x.as_standard_layout();
            let tokens = Tensor::from_shape(&[n, self.k], contiguous.as_slice()?).ok()?;
            let packed_tokens = self.kernel.packings()[self.packing].1.prepare_one(&tokens, 1, 0).ok()?;
            if (packed_tokens.k(), packed_tokens.mn()) != (self.k, n) {
                return None;
            }
            let mut output = Tensor::zero::<f32>(&[n, self.m]).ok()?;
            // SAFETY: the store wraps `output`, an f32 tensor of `n` rows by
            // `m` columns, whose axis 1 is the kernel's m and axis 0 its n;
            // both operands were packed by this kernel's own packing for
            // this k, m and n (checked above), so the kernel reads and
            // writes within them.
            let ran = unsafe {
                let store = self.kernel.c_view(Some(1), Some(0)).wrap(&output.view_mut());
                let operands = FusedSpec::AddMatMul {
                    a: AsInputValue::Borrowed(&*self.weight),
                    b: AsInputValue::Borrowed(&*packed_tokens),
                    packing: self.packing,
                };
                self.kernel.run(self.m, n, &[operands, FusedSpec::Store(store)])
            };
            ran.ok()?;
            let values = output.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.to_vec();
            Array2::from_shape_vec((n, self.m), values).ok()
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

    fn assert_close(found: &Array2<f32>, expected: &Array2<f32>) {
        assert_eq!(found.dim(), expected.dim());
        for (f, e) in found.iter().zip(expected) {
            assert!((f - e).abs() <= 1e-4 * (1.0 + e.abs()), "{f} against {e}");
        }
    }

    #[test]
    fn packed_products_match_the_definition() {
        for (n, k, m) in [(1, 3, 2), (12, 384, 40), (7, 33, 129), (130, 17, 5), (3, 1, 1)] {
            let (x, weight) = (matrix(n, k, 1), matrix(k, m, 2));
            let packed = PackedWeight::new(&weight);
            assert_close(&packed.times(x.view(), &weight), &naive(x.view(), weight.view()));
            // A view that is not contiguous is taken too.
            let wide = matrix(n, 2 * k, 3);
            let every_other = wide.slice(ndarray::s![.., ..;2]);
            assert_close(&packed.times(every_other, &weight), &naive(every_other, weight.view()));
        }
    }

    #[test]
    #[cfg(feature = "tract")]
    fn a_weight_is_packed_for_one_of_tracts_kernels() {
        let packed = PackedWeight::new(&matrix(384, 384, 0));
        let name = packed.kernel().expect("a kernel for an f32 product");
        assert!(name.contains("f32"), "{name}");
    }

    #[test]
    fn empty_products_are_zeros_of_the_right_shape() {
        let weight = matrix(4, 3, 0);
        assert_eq!(PackedWeight::new(&weight).times(matrix(0, 4, 0).view(), &weight).dim(), (0, 3));
        let empty_inner = matrix(0, 3, 0);
        let product = PackedWeight::new(&empty_inner).times(matrix(2, 0, 0).view(), &empty_inner);
        assert_eq!(product, Array2::<f32>::zeros((2, 3)));
    }
}
