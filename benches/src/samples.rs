//! Samples recorded during a timed run, kept without ever moving what was recorded.
//!
//! A `Vec` that grows copies everything it holds into new memory. The load generator's 256
//! sending tasks fill their vectors at the same pace, so all of them grew at the same
//! moment (at 2.1, 4.2 and 8.4 million records in total). On these VMs touching tens of MiB
//! of new memory at once stalled every sender for 10–50 ms: latency spikes the broker never
//! caused (docs/benchmarks.md). Chunks of a fixed size are added one at a time instead, and
//! joined only after the run.

/// Samples in one chunk: 32 KiB of `u64`.
const CHUNK: usize = 4096;

/// An append-only list of samples stored in fixed-size chunks.
#[derive(Debug)]
pub struct Samples<T> {
    chunks: Vec<Vec<T>>,
}

impl<T> Default for Samples<T> {
    fn default() -> Self {
        Self { chunks: Vec::new() }
    }
}

impl<T> Samples<T> {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one sample; allocates at most one chunk, copies nothing already stored.
    pub fn push(&mut self, sample: T) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push(sample),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(sample);
                self.chunks.push(chunk);
            }
        }
    }

    /// Samples stored.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    /// Whether none is stored.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Appends every sample of `other`, after the run.
    pub fn append(&mut self, other: Samples<T>) {
        self.chunks.extend(other.chunks);
    }

    /// All samples in the order they were pushed, as one vector (after the run).
    pub fn into_vec(self) -> Vec<T> {
        let mut all = Vec::with_capacity(self.len());
        for chunk in self.chunks {
            all.extend(chunk);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::{CHUNK, Samples};

    #[test]
    fn keeps_every_sample_in_push_order_across_chunks() {
        let mut samples = Samples::new();
        assert!(samples.is_empty());
        let n = 3 * CHUNK + 17;
        for i in 0..n {
            samples.push(i);
        }
        assert_eq!(samples.len(), n);
        let mut more = Samples::new();
        more.push(n);
        samples.append(more);
        assert_eq!(samples.into_vec(), (0..=n).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_chunk_is_never_reallocated() {
        let mut samples = Samples::new();
        for i in 0..CHUNK {
            samples.push(i);
        }
        let first = samples.chunks[0].as_ptr();
        for i in 0..CHUNK {
            samples.push(i);
        }
        assert_eq!(
            samples.chunks[0].as_ptr(),
            first,
            "stored samples did not move"
        );
        assert_eq!(samples.chunks.len(), 2);
    }
}
