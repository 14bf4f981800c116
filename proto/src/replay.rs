//! Sliding anti-replay window over 64-bit counters (RFC 6479: a ring of bitmap words, so that
//! sliding forward clears whole words instead of shifting bits).

const WORD_BITS: u64 = 64;
const WORDS: usize = 32; // a ring of 2048 bits
const RING_BITS: u64 = WORDS as u64 * WORD_BITS;
/// Counters this far behind the newest one are still accepted once.
pub const WINDOW: u64 = RING_BITS - WORD_BITS;

/// The counters a tunnel's receiving side has accepted: any counter above the highest one,
/// or up to [`WINDOW`] below it once. Holds 2048 bits; no allocation.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// One past the highest counter accepted so far (0: nothing accepted yet).
    next: u64,
    ring: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: every counter but `u64::MAX` is acceptable.
    pub fn new() -> Self {
        Self { next: 0, ring: [0; WORDS] }
    }

    /// Would `counter` be accepted? (Check before decrypting, commit with `accept` after.)
    pub fn check(&self, counter: u64) -> bool {
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
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if counter >= self.next {
            let cur_word = if self.next == 0 { None } else { Some((self.next - 1) / WORD_BITS) };
            let new_word = counter / WORD_BITS;
            match cur_word {
                Some(cw) if new_word > cw => {
                    let steps = (new_word - cw).min(WORDS as u64);
                    for i in 1..=steps {
                        self.ring[((cw + i) % WORDS as u64) as usize] = 0;
                    }
                }
                None => self.ring = [0; WORDS],
                _ => {}
            }
            self.next = counter + 1;
        }
        let (word, bit) = Self::slot(counter);
        self.ring[word] |= 1 << bit;
        true
    }

    fn slot(counter: u64) -> (usize, u64) {
        (((counter / WORD_BITS) % WORDS as u64) as usize, counter % WORD_BITS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_replays() {
        let mut w = ReplayWindow::new();
        for c in 0..5000 {
            assert!(w.accept(c));
            assert!(!w.accept(c));
        }
    }

    #[test]
    fn reordering_within_window() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(100));
        assert!(w.accept(50));
        assert!(!w.accept(50));
        assert!(w.accept(99));
        assert!(w.accept(3000));
        assert!(!w.accept(100)); // slid out: 3000 - 100 > WINDOW
        assert!(w.accept(3001 - WINDOW)); // the oldest counter still inside
        assert!(!w.accept(3000 - WINDOW));
        assert!(!w.accept(u64::MAX));
    }

    #[test]
    fn big_jump_clears_ring() {
        let mut w = ReplayWindow::new();
        for c in 0..64 {
            assert!(w.accept(c));
        }
        assert!(w.accept(1_000_000));
        assert!(w.accept(1_000_000 - 64));
        assert!(w.accept(999_990));
    }
}
