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
///
/// Each node holds its winner's whole rank as one integer, so a match is a compare of
/// neighbouring words, with no look-up through the winners' keys and no branch on its result
/// (the profile had `better`, which read four per-key arrays through the winners' indices and
/// branched on ties that went either way, as the pick's largest cost after the scopes' own cache
/// misses). The tree is 4-ary, four siblings' ranks to one cache line: half a binary tree's
/// levels for each pick to replay (5 at 1,000 keys), one line read a level.
#[derive(Debug, Clone, Default)]
pub(super) struct HeadroomTree {
    /// Winner's rank per node, by position: four siblings to a `Quad`. The root is at position
    /// 3, a node at position `a` has its children at group `a - 2` (positions `4(a - 2)..`), the
    /// leaves start at `leaves` (key `k` at `leaves + k`); positions 0..3 hold nothing.
    ///
    /// A rank orders keys as the pick does: the headroom's bits plus one in the high half (0:
    /// `OUT`; an f64 in [0, 1] orders like its bits, so the order is exact), the complement of
    /// the sequence number of the key's last pick in the low half (0: never picked, the largest
    /// complement). A larger rank wins; equal ranks keep the leftmost, so the root is the key a
    /// full scan in key order would pick. Padding (no key) is rank 0, below every key.
    rank: Vec<Quad>,
    /// Winner's key per node, same positions; `u32::MAX` for padding.
    key: Vec<[u32; 4]>,
    /// Position of the first leaf.
    leaves: usize,
    /// Keys in the tree: `0..n`.
    n: usize,
    seq: u64,
    /// The second and the `shape` the tree was built for; `built` false: never built.
    built: bool,
    built_sec: i64,
    built_shape: u64,
}

/// The ranks of four sibling nodes, one cache line.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct Quad([u128; 4]);

/// Position of the root.
const ROOT: usize = 3;

/// The winner among four siblings, by rank then leftmost.
#[inline(always)]
fn winner(r: &Quad, k: &[u32; 4]) -> (u128, u32) {
    let r = &r.0;
    // Indices, not branches: which child wins a tie on headroom is as good as random.
    let left = usize::from(r[1] > r[0]);
    let right = 2 + usize::from(r[3] > r[2]);
    let w = if r[right] > r[left] { right } else { left };
    (r[w], k[w])
}

/// A score's half of a rank: order-preserving for scores in [0, 1], `OUT` (or anything below 0)
/// lowest.
#[inline]
fn score_bits(score: Option<f64>) -> u64 {
    match score {
        Some(s) if s >= 0.0 => s.to_bits() + 1,
        _ => 0,
    }
}

#[inline]
fn rank_of(score_bits: u64, last: u64) -> u128 {
    (u128::from(score_bits) << 64) | u128::from(!last)
}

impl HeadroomTree {
    /// Whether the tree describes second `sec` under state `shape`.
    pub(super) fn fresh(&self, sec: i64, shape: u64) -> bool {
        self.built && self.built_sec == sec && self.built_shape == shape
    }

    /// Rebuilds from every key's score (`score(k)`: its headroom, or `None` if it cannot be
    /// picked), keeping when each key was last picked. Allocates only on the first build or when
    /// the keys outgrow the tree's width (a power of 4).
    pub(super) fn rebuild(
        &mut self,
        n: usize,
        sec: i64,
        shape: u64,
        mut score: impl FnMut(usize) -> Option<f64>,
    ) {
        let mut width = 1usize;
        while width < n {
            width *= 4;
        }
        // Internal nodes of a complete 4-ary tree with `width` leaves.
        let leaves = ROOT + (width - 1) / 3;
        let groups = (leaves + width).div_ceil(4);
        if self.leaves != leaves || self.rank.len() != groups {
            let last: Vec<u64> = (0..self.n.min(n)).map(|k| self.last(k)).collect();
            self.rank = vec![Quad::default(); groups];
            self.key = vec![[u32::MAX; 4]; groups];
            self.leaves = leaves;
            self.n = last.len();
            for (k, l) in last.into_iter().enumerate() {
                self.write(leaves + k, rank_of(0, l), k as u32);
            }
        }
        // A key new to the tree (after a reload) has never been picked.
        for k in self.n.min(n)..n {
            self.write(leaves + k, rank_of(0, 0), k as u32);
        }
        self.n = n;
        for k in 0..n {
            let last = self.last(k);
            self.write(leaves + k, rank_of(score_bits(score(k)), last), k as u32);
        }
        for k in n..width {
            self.write(leaves + k, 0, u32::MAX);
        }
        for a in (ROOT..leaves).rev() {
            self.play(a);
        }
        self.built = true;
        self.built_sec = sec;
        self.built_shape = shape;
    }

    #[inline]
    fn node(&self, a: usize) -> (u128, u32) {
        (self.rank[a / 4].0[a % 4], self.key[a / 4][a % 4])
    }

    #[inline]
    fn write(&mut self, a: usize, rank: u128, key: u32) {
        self.rank[a / 4].0[a % 4] = rank;
        self.key[a / 4][a % 4] = key;
    }

    /// The pick sequence number of key `k`'s last pick (0: never), from its leaf.
    fn last(&self, k: usize) -> u64 {
        if k < self.n {
            !(self.node(self.leaves + k).0 as u64)
        } else {
            0
        }
    }

    /// The match at position `a` between its four children.
    fn play(&mut self, a: usize) {
        let (rank, key) = winner(&self.rank[a - 2], &self.key[a - 2]);
        self.write(a, rank, key);
    }

    /// Sets key `k`'s leaf and replays its path to the root, stopping where a winner stays as it
    /// was (nothing above it can change then).
    fn put(&mut self, k: usize, rank: u128) {
        // Local slices: the loop's stores cannot move the vectors, so their bounds stay in
        // registers.
        let (ranks, keys) = (&mut self.rank[..], &mut self.key[..]);
        let mut b = self.leaves + k;
        let (Some(leaf), Some(leaf_key)) = (ranks.get_mut(b / 4), keys.get_mut(b / 4)) else {
            return;
        };
        if leaf.0[b % 4] == rank {
            return;
        }
        leaf.0[b % 4] = rank;
        leaf_key[b % 4] = k as u32;
        while b > ROOT {
            // The group `b` is in holds the children of position `a`.
            let (g, a) = (b / 4, b / 4 + 2);
            let (rank, key) = winner(&ranks[g], &keys[g]);
            let (r, x) = (&mut ranks[a / 4].0[a % 4], &mut keys[a / 4][a % 4]);
            if *r == rank && *x == key {
                break;
            }
            *r = rank;
            *x = key;
            b = a;
        }
    }

    /// Sets key `k`'s score.
    pub(super) fn set(&mut self, k: usize, score: Option<f64>) {
        if k < self.n {
            self.put(k, rank_of(score_bits(score), self.last(k)));
        }
    }

    /// Key `k`'s score now.
    pub(super) fn score(&self, k: usize) -> f64 {
        if k >= self.n {
            return OUT;
        }
        match (self.node(self.leaves + k).0 >> 64) as u64 {
            0 => OUT,
            bits => f64::from_bits(bits - 1),
        }
    }

    /// Sets key `k`'s score unless it is out until the next rebuild (a score the key already
    /// has changes nothing).
    pub(super) fn rescore(&mut self, k: usize, score: f64) {
        if k < self.n && (self.node(self.leaves + k).0 >> 64) != 0 {
            self.put(k, rank_of(score_bits(Some(score)), self.last(k)));
        }
    }

    /// The key with the most headroom, if any can be picked.
    pub(super) fn top(&self) -> Option<usize> {
        if self.rank.is_empty() {
            return None;
        }
        let (rank, key) = self.node(ROOT);
        ((rank >> 64) != 0).then_some(key as usize)
    }

    /// Records that `k` was picked (for the ties that follow) and its headroom since.
    pub(super) fn picked(&mut self, k: usize, score: f64) {
        if k < self.n {
            self.seq += 1;
            self.put(k, rank_of(score_bits(Some(score)), self.seq));
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

    /// What the tree is an index for: the key with the most headroom among those not out, ties
    /// to the one picked least recently (never-picked first), then to the lowest index — found
    /// by looking at every key.
    #[derive(Debug, Clone, Copy)]
    enum TreeOp {
        Rebuild(u8),
        Set(u8, Option<u8>),
        Rescore(u8, u8),
        Picked(u8, u8),
        PickTop(u8),
    }

    fn tree_op(n: u8) -> impl Strategy<Value = TreeOp> {
        // Few distinct scores, so ties are common.
        let score = 0u8..4;
        prop_oneof![
            any::<u8>().prop_map(TreeOp::Rebuild),
            (0..n, prop::option::of(score.clone())).prop_map(|(k, s)| TreeOp::Set(k, s)),
            (0..n, score.clone()).prop_map(|(k, s)| TreeOp::Rescore(k, s)),
            (0..n, score.clone()).prop_map(|(k, s)| TreeOp::Picked(k, s)),
            score.prop_map(TreeOp::PickTop),
        ]
    }

    fn headroom(s: u8) -> f64 {
        f64::from(s) / 3.0
    }

    fn reference_top(score: &[f64], last: &[u64]) -> Option<usize> {
        (0..score.len())
            .filter(|&k| score[k] > OUT)
            .min_by(|&a, &b| {
                score[b]
                    .total_cmp(&score[a])
                    .then(last[a].cmp(&last[b]))
                    .then(a.cmp(&b))
            })
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// The tree's pick equals a full scan's after any mix of rebuilds (with any scores,
        /// some keys out), score changes, rescores, picks of any key and picks of the top.
        #[test]
        fn tree_top_equals_a_full_scan(
            n in 1usize..40,
            init in prop::collection::vec(prop::option::of(0u8..4), 40),
            ops in prop::collection::vec(tree_op(40), 0..200),
        ) {
            let mut t = HeadroomTree::default();
            let mut score: Vec<f64> = (0..n).map(|k| init[k].map_or(OUT, headroom)).collect();
            let mut last = vec![0u64; n];
            let mut seq = 0u64;
            t.rebuild(n, 0, 0, |k| init[k].map(headroom));
            prop_assert_eq!(t.top(), reference_top(&score, &last));
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    TreeOp::Rebuild(salt) => {
                        for (k, s) in score.iter_mut().enumerate() {
                            let x = (k as u8).wrapping_mul(7).wrapping_add(salt) % 5;
                            *s = if x == 4 { OUT } else { headroom(x) };
                        }
                        let fresh = score.clone();
                        t.rebuild(n, i as i64 + 1, 0, |k| (fresh[k] > OUT).then_some(fresh[k]));
                    }
                    TreeOp::Set(k, s) => {
                        let k = usize::from(k) % n;
                        score[k] = s.map_or(OUT, headroom);
                        t.set(k, s.map(headroom));
                    }
                    TreeOp::Rescore(k, s) => {
                        let k = usize::from(k) % n;
                        if score[k] > OUT {
                            score[k] = headroom(s);
                        }
                        t.rescore(k, headroom(s));
                    }
                    TreeOp::Picked(k, s) => {
                        let k = usize::from(k) % n;
                        seq += 1;
                        last[k] = seq;
                        score[k] = headroom(s);
                        t.picked(k, headroom(s));
                    }
                    TreeOp::PickTop(s) => {
                        if let Some(k) = t.top() {
                            seq += 1;
                            last[k] = seq;
                            score[k] = headroom(s);
                            t.picked(k, headroom(s));
                        }
                    }
                }
                prop_assert_eq!(t.top(), reference_top(&score, &last), "after {:?}", op);
                for (k, s) in score.iter().enumerate() {
                    prop_assert_eq!(t.score(k), *s);
                }
            }
        }

        /// Keys added between builds (a reload) join never picked, and the keys already there
        /// keep when they were last picked.
        #[test]
        fn tree_keeps_last_picks_across_a_growing_rebuild(
            n in 1usize..20, more in 1usize..40, picks in prop::collection::vec(0usize..20, 0..30),
        ) {
            let mut t = HeadroomTree::default();
            t.rebuild(n, 0, 0, |_| Some(1.0));
            let mut last = vec![0u64; n + more];
            for (i, k) in picks.into_iter().enumerate() {
                let k = k % n;
                t.picked(k, 1.0);
                last[k] = i as u64 + 1;
            }
            t.rebuild(n + more, 1, 0, |_| Some(1.0));
            // Drain the tree in pick order.
            let mut score = vec![1.0; n + more];
            for _ in 0..(n + more) {
                let top = t.top();
                prop_assert_eq!(top, reference_top(&score, &last));
                let k = top.unwrap();
                score[k] = OUT;
                t.set(k, None);
            }
            prop_assert_eq!(t.top(), None);
        }
    }
}
