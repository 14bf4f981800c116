// SPDX-License-Identifier: GPL-2.0

//! The sliding anti-replay window over 64-bit counters (RFC 6479: a ring of bitmap words, so
//! sliding forward clears whole words). The same rules as `proto/src/replay.rs`: 1984 counters
//! behind the newest are still accepted once, `u64::MAX` never is.

const WORD_BITS: u64 = 64;
const WORDS: usize = 32; // a ring of 2048 bits
const RING_BITS: u64 = WORDS as u64 * WORD_BITS;
/// Counters this far behind the newest one are still accepted once.
pub(crate) const WINDOW: u64 = RING_BITS - WORD_BITS;

pub(crate) struct ReplayWindow {
    /// One past the highest counter accepted so far (0: nothing accepted yet).
    next: u64,
    ring: [u64; WORDS],
}

impl ReplayWindow {
    pub(crate) const fn new() -> Self {
        Self {
            next: 0,
            ring: [0; WORDS],
        }
    }

    /// Would `counter` be accepted? (Check before decrypting, commit with `accept` after.)
    pub(crate) fn check(&self, counter: u64) -> bool {
        if counter == u64::MAX {
            return false;
        }
        if counter >= self.next {
            return true;
        }
        if self.next - counter > WINDOW {
            return false;
        }
        let (word, bit) = Self::slot(counter);
        self.ring[word] & (1 << bit) == 0
    }

    /// Marks `counter` as seen; false if it was a replay or too old.
    pub(crate) fn accept(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if counter >= self.next {
            let new_word = counter / WORD_BITS;
            if self.next == 0 {
                self.ring = [0; WORDS];
            } else {
                let cur_word = (self.next - 1) / WORD_BITS;
                if new_word > cur_word {
                    let steps = (new_word - cur_word).min(WORDS as u64);
                    for i in 1..=steps {
                        self.ring[((cur_word + i) % WORDS as u64) as usize] = 0;
                    }
                }
            }
            self.next = counter + 1;
        }
        let (word, bit) = Self::slot(counter);
        self.ring[word] |= 1 << bit;
        true
    }

    fn slot(counter: u64) -> (usize, u64) {
        (
            ((counter / WORD_BITS) % WORDS as u64) as usize,
            counter % WORD_BITS,
        )
    }

    /// The unit tests of `proto/src/replay.rs`, run at load.
    pub(crate) fn self_test() -> bool {
        let mut w = Self::new();
        for c in 0..5000 {
            if !w.accept(c) || w.accept(c) {
                return false;
            }
        }
        let mut w = Self::new();
        let reorder = w.accept(100)
            && w.accept(50)
            && !w.accept(50)
            && w.accept(99)
            && w.accept(3000)
            && !w.accept(100)
            && w.accept(3001 - WINDOW)
            && !w.accept(3000 - WINDOW)
            && !w.accept(u64::MAX);
        if !reorder {
            return false;
        }
        let mut w = Self::new();
        for c in 0..64 {
            if !w.accept(c) {
                return false;
            }
        }
        w.accept(1_000_000) && w.accept(1_000_000 - 64) && w.accept(999_990)
    }
}
