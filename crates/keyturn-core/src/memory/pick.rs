//! What keeps least-loaded and weighted picks from scanning every key: a tournament tree of
//! headroom per model (least-loaded) and a precomputed smooth weighted round-robin schedule
//! (weighted). Both are built off the hot path and kept up to date in O(log keys) and O(1).

/// A leaf's score when its key is known not to be pickable until the next rebuild.
const OUT: f64 = -1.0;

/// Least-loaded's index for one model: a tournament (winner) tree over the keys, each leaf the
/// headroom of the key's scope, ties to the key picked least recently (so keys of one project
/// alternate, like round-robin). Windows move by whole seconds, so headroom changes with time only
/// when the second does: the tree is rebuilt then (and when health, switch-offs or limits change:
/// `shape`), and between rebuilds every admission and every served answer updates its scope's
/// keys. A key whose cooldown or breaker ends mid-second is seen from the next rebuild, or at once
/// if nothing in the tree can take the request (the caller falls back to the full scan).
#[derive(Debug, Clone, Default)]
pub(super) struct HeadroomTree {
    /// Per key: headroom in [0, 1], or `OUT`.
    score: Vec<f64>,
    /// Per key: the pick sequence number of its last pick (0: never).
    last: Vec<u64>,
    /// Winner per node, 1-based heap layout; leaves at `width..2*width`; `u32::MAX`: none.
    node: Vec<u32>,
    width: usize,
    seq: u64,
    /// The second and the `shape` the tree was built for; `built` false: never built.
    built: bool,
    built_sec: i64,
    built_shape: u64,
}

impl HeadroomTree {
    /// Whether the tree describes second `sec` under state `shape`.
    pub(super) fn fresh(&self, sec: i64, shape: u64) -> bool {
        self.built && self.built_sec == sec && self.built_shape == shape
    }

    /// Rebuilds from every key's score (`score(k)`: its headroom, or `None` if it cannot be
    /// picked). Allocates only on the first build.
    pub(super) fn rebuild(
        &mut self,
        n: usize,
        sec: i64,
        shape: u64,
        mut score: impl FnMut(usize) -> Option<f64>,
    ) {
        if self.score.len() != n {
            self.width = n.next_power_of_two().max(1);
            self.score = vec![OUT; n];
            self.last = vec![0; n];
            self.node = vec![u32::MAX; 2 * self.width];
        }
        for k in 0..n {
            self.score[k] = score(k).unwrap_or(OUT);
            self.node[self.width + k] = k as u32;
        }
        for i in (1..self.width).rev() {
            self.node[i] = self.better(self.node[2 * i], self.node[2 * i + 1]);
        }
        self.built = true;
        self.built_sec = sec;
        self.built_shape = shape;
    }

    fn better(&self, a: u32, b: u32) -> u32 {
        if b == u32::MAX {
            return a;
        }
        if a == u32::MAX {
            return b;
        }
        let (sa, sb) = (self.score[a as usize], self.score[b as usize]);
        if sb > sa || (sb == sa && self.last[b as usize] < self.last[a as usize]) {
            b
        } else {
            a
        }
    }

    /// Sets key `k`'s score and replays its path to the root.
    pub(super) fn set(&mut self, k: usize, score: Option<f64>) {
        if k >= self.score.len() {
            return;
        }
        self.score[k] = score.unwrap_or(OUT);
        self.replay(k);
    }

    /// Key `k`'s score now.
    pub(super) fn score(&self, k: usize) -> f64 {
        self.score.get(k).copied().unwrap_or(OUT)
    }

    /// Sets key `k`'s score unless it is out until the next rebuild.
    pub(super) fn rescore(&mut self, k: usize, score: f64) {
        if self.score.get(k).is_some_and(|s| *s > OUT) {
            self.score[k] = score;
            self.replay(k);
        }
    }

    fn replay(&mut self, k: usize) {
        let mut i = (self.width + k) / 2;
        while i >= 1 {
            self.node[i] = self.better(self.node[2 * i], self.node[2 * i + 1]);
            i /= 2;
        }
    }

    /// The key with the most headroom, if any can be picked.
    pub(super) fn top(&self) -> Option<usize> {
        let w = *self.node.get(1)?;
        (w != u32::MAX && self.score[w as usize] > OUT).then_some(w as usize)
    }

    /// Records that `k` was picked (for the ties that follow) and its headroom since.
    pub(super) fn picked(&mut self, k: usize, score: f64) {
        if k < self.last.len() {
            self.seq += 1;
            self.last[k] = self.seq;
            self.score[k] = score;
            self.replay(k);
        }
    }
}

/// Smooth weighted round-robin's sequence (nginx's) over every key, as it runs when all of them
/// are eligible; a pick takes the next entry whose key is eligible, so among eligible keys each
/// one's share over a whole cycle is its weight over their total. `None` when the weights (divided
/// by their greatest common divisor) add up to more than `MAX_SCHEDULE`: the caller scans instead.
pub(super) fn weighted_schedule(weights: &[u32]) -> Option<Vec<u32>> {
    const MAX_SCHEDULE: u64 = 1 << 14;
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<i64> = weights.iter().map(|x| i64::from((*x).max(1) / g)).collect();
    let total: i64 = w.iter().sum();
    if w.is_empty() || total as u64 > MAX_SCHEDULE {
        return None;
    }
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for k in 0..w.len() {
            current[k] += w[k];
            if current[k] > current[best] {
                best = k;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_gives_each_key_its_weight_per_cycle_smoothly() {
        let s = weighted_schedule(&[3, 1, 1]).unwrap();
        assert_eq!(s, vec![0, 1, 0, 2, 0]);
        // Divided by the gcd: the same cycle.
        assert_eq!(weighted_schedule(&[6, 2, 2]).unwrap(), s);
        assert!(weighted_schedule(&[u32::MAX, 1]).is_none());
    }

    #[test]
    fn tree_picks_most_headroom_then_least_recent() {
        let mut t = HeadroomTree::default();
        let scores = [0.5, 0.9, 0.9, 0.1, 0.9];
        t.rebuild(5, 7, 0, |k| Some(scores[k]));
        assert!(t.fresh(7, 0) && !t.fresh(8, 0) && !t.fresh(7, 1));
        assert_eq!(t.top(), Some(1));
        t.picked(1, 0.9);
        assert_eq!(
            t.top(),
            Some(2),
            "a tie goes to the key picked least recently"
        );
        t.set(2, None);
        assert_eq!(t.top(), Some(4));
        t.set(4, Some(0.2));
        t.set(1, Some(0.3));
        assert_eq!(t.top(), Some(0));
        for k in 0..5 {
            t.set(k, None);
        }
        assert_eq!(t.top(), None);
    }
}
