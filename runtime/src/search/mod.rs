//! Semantic search and ranking, on vectors alone: an exact top-k scan
//! (SIMD, on parked threads for large indexes, after an 8-bit first pass),
//! a task's documents over it, and the preference learned from feedback.
//! Where the vectors and documents come from is the `Personalizer`'s job.

mod coarse;
mod index;
mod ranker;
mod scan;
mod scan_pool;

pub(crate) use index::Index;
pub use index::{SearchHit, VectorIndex};
pub(crate) use ranker::{Preference, fit_preference};
