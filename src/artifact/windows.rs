//! SHA-256 of byte windows (partitions, block-map ranges) of a stream that arrives in order:
//! used by the builder to measure what it writes and by `verify` to check what it reads.

use sha2::{Digest, Sha256};

/// Hashes byte windows (partitions or block ranges) of a stream that arrives in order.
pub struct WindowHasher {
    /// `(start, end)`, sorted by start; may overlap each other (partitions vs. nothing).
    windows: Vec<(u64, u64)>,
    hashers: Vec<Sha256>,
    /// First window not yet finished.
    next: usize,
}

impl WindowHasher {
    pub fn new(windows: Vec<(u64, u64)>) -> Self {
        let hashers = windows.iter().map(|_| Sha256::new()).collect();
        WindowHasher {
            windows,
            hashers,
            next: 0,
        }
    }

    /// Feed `data`, which sits at byte `pos` of the stream.
    pub fn update(&mut self, pos: u64, data: &[u8]) {
        let end = pos + data.len() as u64;
        while self.next < self.windows.len() && self.windows[self.next].1 <= pos {
            self.next += 1;
        }
        for i in self.next..self.windows.len() {
            let (a, b) = self.windows[i];
            if a >= end {
                break;
            }
            let from = a.max(pos);
            let to = b.min(end);
            if from < to {
                self.hashers[i].update(&data[(from - pos) as usize..(to - pos) as usize]);
            }
        }
    }

    pub fn finish(self) -> Vec<String> {
        self.hashers
            .into_iter()
            .map(|h| hex::encode(h.finalize()))
            .collect()
    }
}
