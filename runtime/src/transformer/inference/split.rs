//! A stack of layers run on two threads for one batch, each thread running
//! every layer for half of the batch's tokens. Products, norms and GELU
//! work token by token, so each half runs them alone, with the same
//! arithmetic as on one thread; attention needs every token's keys and
//! values, so the halves exchange theirs once per layer. (A split of each
//! product by columns would meet four times per layer; a split by tokens
//! meets once.)

use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use ndarray::{Array2, Axis, s};

use super::InferenceLayer;

/// Fewer tokens than this run on one thread: the exchange would cost more
/// than half of their work.
const TOKENS_WORTH_SPLITTING: usize = 4;

/// `layers` one after another on a batch's token states (`[tokens, width]`,
/// texts one after another, `lengths` tokens each), on two threads when
/// `threads` allows it.
pub fn forward_layers(
    layers: &[InferenceLayer],
    states: Array2<f32>,
    lengths: &[usize],
    threads: usize,
) -> Array2<f32> {
    assert_eq!(lengths.iter().sum::<usize>(), states.nrows(), "the texts' lengths cover the batch");
    if threads < 2 || states.nrows() < TOKENS_WORTH_SPLITTING || layers.is_empty() {
        return layers.iter().fold(states, |states, layer| layer.forward(states.view(), lengths));
    }
    let (tokens, middle) = (states.nrows(), states.nrows() / 2);
    let (first_states, second_states) =
        (states.slice(s![..middle, ..]).to_owned(), states.slice(s![middle.., ..]).to_owned());
    let (to_second, from_first) = channel();
    let (to_first, from_second) = channel();
    let first = Half { rows: 0..middle, lengths, send: to_second, receive: from_second };
    let second = Half { rows: middle..tokens, lengths, send: to_first, receive: from_first };
    std::thread::scope(|scope| {
        let second = scope.spawn(move || second.forward(layers, second_states, Order::Second));
        let first = first.forward(layers, first_states, Order::First);
        let second = second.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        ndarray::concatenate(Axis(0), &[first.view(), second.view()]).expect("halves of one width")
    })
}

/// A half's keys and values for one layer.
type KeysValues = Arc<[Array2<f32>; 2]>;

/// One thread's half of the batch: its rows, and the way to the other half.
struct Half<'a> {
    rows: Range<usize>,
    lengths: &'a [usize],
    send: Sender<KeysValues>,
    receive: Receiver<KeysValues>,
}

/// Which half a thread runs: whose keys come first in the batch.
#[derive(Clone, Copy)]
enum Order {
    First,
    Second,
}

impl Half<'_> {
    fn forward(&self, layers: &[InferenceLayer], mut states: Array2<f32>, order: Order) -> Array2<f32> {
        for layer in layers {
            let [query, key, value] = layer.project(states.view());
            let mine: KeysValues = Arc::new([key, value]);
            // A send fails only when the other half has panicked, which
            // the scope reports; its keys are then not needed.
            let _ = self.send.send(Arc::clone(&mine));
            let theirs = self.receive.recv().expect("the other half runs until it has sent every layer's keys");
            let whole = |i: usize| {
                let parts = match order {
                    Order::First => [mine[i].view(), theirs[i].view()],
                    Order::Second => [theirs[i].view(), mine[i].view()],
                };
                ndarray::concatenate(Axis(0), &parts).expect("halves of one width")
            };
            let (key, value) = (whole(0), whole(1));
            states = layer.finish(states.view(), &query, [key.view(), value.view()], self.lengths, self.rows.clone());
        }
        states
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::fixtures::random_layer;

    fn layer(width: usize, seed: u64) -> InferenceLayer {
        InferenceLayer::of(&random_layer(width, 2 * width, seed))
    }

    /// Split across threads, every token's state is the one a single
    /// thread computes, to the bit, including texts cut by the split.
    #[test]
    fn two_threads_compute_what_one_does() {
        let layers = [layer(8, 1), layer(8, 21), layer(8, 41)];
        for lengths in [vec![5], vec![3, 4], vec![1, 6, 2], vec![2, 2]] {
            let tokens = lengths.iter().sum::<usize>();
            let states = Array2::from_shape_fn((tokens, 8), |(r, c)| ((r * 3 + c * 7) % 13) as f32 / 6.0 - 1.0);
            let alone = forward_layers(&layers, states.clone(), &lengths, 1);
            let split = forward_layers(&layers, states, &lengths, 2);
            assert_eq!(split, alone, "texts of {lengths:?} tokens");
        }
    }
}
