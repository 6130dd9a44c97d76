//! Planning a prune: from the points of a volume (their parent links, times and sizes)
//! and the retention decisions to what happens to each point. Pure: no IO.
//!
//! Kept points are visited in seq order. A kept point X gets as new parent its
//! nearest kept ancestor P (following parent links, not seq order: a repository may
//! hold several chains). X's archive is rewritten when:
//!
//! - a dropped point lies between P and X: the dropped points and X are merged in one
//!   pass into a delta on P (`merge`), or into a full archive when X has no kept
//!   ancestor (`fold`: the base is folded into the next kept point);
//! - X's parent is rewritten and X, a version 1.0 archive, lacks `parent.image` (its
//!   link would break): X alone is rewritten on its parent (`relink`);
//! - X's kept chain would hold more than `--max-chain-length` archives: X becomes a
//!   full archive of its point (`consolidate`).

use serde::Serialize;

use super::Decision;

/// One point of a volume as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Sequence number.
    pub seq: u64,
    /// The parent's seq (`None`: a full archive).
    pub parent: Option<u64>,
    /// Whether the archive names its parent's image digest (format 1.1).
    pub parent_image: bool,
    /// Size of the archive object.
    pub stored: u64,
}

/// Why a point's archive is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rewrite {
    /// Dropped points before it are merged into it (a delta on its nearest kept
    /// ancestor).
    Merge,
    /// It has no kept ancestor: the chain up to it becomes a full archive.
    Fold,
    /// Its parent is rewritten and it cannot follow by image digest (format 1.0).
    Relink,
    /// `--max-chain-length`: it becomes a full archive.
    Consolidate,
}

/// What happens to one point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PointPlan {
    /// Sequence number.
    pub seq: u64,
    /// Whether the point stays listed.
    pub keep: bool,
    /// The retention rules keeping it (empty: dropped).
    pub reasons: Vec<String>,
    /// Set when the point's archive is rewritten.
    pub rewrite: Option<Rewrite>,
    /// The new parent's seq when rewritten (`None`: a full archive).
    pub new_parent: Option<u64>,
    /// Seqs whose archives are merged into the rewritten archive, oldest first (the
    /// point itself last).
    pub merged: Vec<u64>,
    /// Archives in the point's chain after the prune.
    pub chain_length: u32,
}

/// The plan for one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Every point, in seq order.
    pub points: Vec<PointPlan>,
    /// Bytes of archives the rewrites read at most (their blocks that survive are read).
    pub read_estimate: u64,
    /// Bytes the rewrites write at most (an estimate: the merged archives' sizes).
    pub write_estimate: u64,
    /// Bytes of archive objects deleted (dropped points and replaced archives) after
    /// the grace period.
    pub delete_bytes: u64,
}

impl Plan {
    /// The points rewritten, in seq order.
    pub fn rewrites(&self) -> impl Iterator<Item = &PointPlan> {
        self.points.iter().filter(|p| p.rewrite.is_some())
    }

    /// The points dropped.
    pub fn dropped(&self) -> impl Iterator<Item = &PointPlan> {
        self.points.iter().filter(|p| !p.keep)
    }
}

/// Plans the prune of `nodes` (any order) given `decisions` for the same points.
/// `max_chain` limits the archives of a kept chain.
pub fn plan(nodes: &[Node], decisions: &[Decision], max_chain: Option<u32>) -> Plan {
    let mut nodes = nodes.to_vec();
    nodes.sort_by_key(|n| n.seq);
    let node = |seq: u64| nodes.iter().find(|n| n.seq == seq);
    let keep = |seq: u64| decisions.iter().any(|d| d.seq == seq && d.keep);
    let mut points: Vec<PointPlan> = Vec::with_capacity(nodes.len());
    let (mut read, mut write, mut delete) = (0u64, 0u64, 0u64);
    for n in &nodes {
        let reasons = decisions
            .iter()
            .find(|d| d.seq == n.seq)
            .map(|d| d.reasons.clone())
            .unwrap_or_default();
        let mut p = PointPlan {
            seq: n.seq,
            keep: keep(n.seq),
            reasons,
            rewrite: None,
            new_parent: None,
            merged: Vec::new(),
            chain_length: 0,
        };
        if !p.keep {
            delete += n.stored;
            points.push(p);
            continue;
        }
        // Walk up to the nearest kept ancestor; the dropped ones are merged.
        let mut merged = vec![n.seq];
        let mut up = n.parent;
        while let Some(s) = up.filter(|&s| !keep(s)) {
            merged.push(s);
            up = node(s).and_then(|a| a.parent);
        }
        merged.reverse();
        let parent_plan = up.and_then(|s| points.iter().find(|q| q.seq == s));
        let depth = parent_plan.map_or(0, |q| q.chain_length) + 1;
        p.new_parent = up;
        p.rewrite = if max_chain.is_some_and(|m| depth > m) {
            Some(Rewrite::Consolidate)
        } else if merged.len() > 1 {
            Some(if up.is_some() {
                Rewrite::Merge
            } else {
                Rewrite::Fold
            })
        } else if parent_plan.is_some_and(|q| q.rewrite.is_some()) && !n.parent_image {
            Some(Rewrite::Relink)
        } else {
            None
        };
        p.chain_length = depth;
        if p.rewrite == Some(Rewrite::Consolidate) {
            // The whole chain up to the point, as it will be after the earlier
            // rewrites, is read.
            p.new_parent = None;
            p.chain_length = 1;
            let mut s = up;
            while let Some(q) = s.and_then(|s| points.iter().find(|q| q.seq == s)) {
                merged.insert(0, q.seq);
                s = q.new_parent;
            }
        }
        if p.rewrite.is_some() {
            let bytes: u64 = merged
                .iter()
                .filter_map(|&s| node(s))
                .map(|a| a.stored)
                .sum();
            read += bytes;
            write += bytes;
            delete += n.stored;
            p.merged = merged;
        }
        points.push(p);
    }
    Plan {
        points,
        read_estimate: read,
        write_estimate: write,
        delete_bytes: delete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(parents: &[Option<u64>]) -> Vec<Node> {
        parents
            .iter()
            .enumerate()
            .map(|(i, &parent)| Node {
                seq: i as u64 + 1,
                parent,
                parent_image: true,
                stored: 100 * (i as u64 + 1),
            })
            .collect()
    }

    fn keep(seqs: &[u64], all: u64) -> Vec<Decision> {
        (1..=all)
            .map(|seq| Decision {
                seq,
                keep: seqs.contains(&seq),
                reasons: if seqs.contains(&seq) {
                    vec!["test".into()]
                } else {
                    vec![]
                },
            })
            .collect()
    }

    fn linear(n: u64) -> Vec<Node> {
        let parents: Vec<Option<u64>> = (1..=n).map(|s| (s > 1).then(|| s - 1)).collect();
        chain(&parents)
    }

    #[test]
    fn dropped_deltas_merge_into_the_next_kept_point() {
        let p = plan(&linear(6), &keep(&[1, 4, 6], 6), None);
        let r: Vec<_> = p
            .rewrites()
            .map(|q| (q.seq, q.rewrite, q.new_parent, q.merged.clone()))
            .collect();
        assert_eq!(
            r,
            vec![
                (4, Some(Rewrite::Merge), Some(1), vec![2, 3, 4]),
                (6, Some(Rewrite::Merge), Some(4), vec![5, 6]),
            ]
        );
        assert_eq!(
            p.dropped().map(|q| q.seq).collect::<Vec<_>>(),
            vec![2, 3, 5]
        );
        assert_eq!(p.read_estimate, 200 + 300 + 400 + 500 + 600);
        // Dropped archives plus the replaced ones.
        assert_eq!(p.delete_bytes, (200 + 300 + 500) + (400 + 600));
        assert_eq!(p.points[5].chain_length, 3);
    }

    #[test]
    fn dropping_the_base_folds_it_into_the_next_kept_point() {
        let p = plan(&linear(4), &keep(&[3, 4], 4), None);
        let r: Vec<_> = p
            .rewrites()
            .map(|q| (q.seq, q.rewrite, q.new_parent, q.merged.clone()))
            .collect();
        assert_eq!(r, vec![(3, Some(Rewrite::Fold), None, vec![1, 2, 3])]);
        assert_eq!(p.points[3].chain_length, 2);
    }

    #[test]
    fn nothing_to_do_when_everything_is_kept() {
        let p = plan(&linear(3), &keep(&[1, 2, 3], 3), None);
        assert_eq!(p.rewrites().count(), 0);
        assert_eq!(
            (p.read_estimate, p.write_estimate, p.delete_bytes),
            (0, 0, 0)
        );
    }

    #[test]
    fn a_1_0_child_of_a_rewritten_point_is_relinked() {
        let mut nodes = linear(4);
        nodes[3].parent_image = false;
        let p = plan(&nodes, &keep(&[1, 3, 4], 4), None);
        let r: Vec<_> = p
            .rewrites()
            .map(|q| (q.seq, q.rewrite, q.merged.clone()))
            .collect();
        assert_eq!(
            r,
            vec![
                (3, Some(Rewrite::Merge), vec![2, 3]),
                (4, Some(Rewrite::Relink), vec![4])
            ]
        );
    }

    #[test]
    fn max_chain_length_consolidates() {
        let p = plan(&linear(7), &keep(&[1, 2, 3, 4, 5, 6, 7], 7), Some(3));
        let r: Vec<_> = p
            .rewrites()
            .map(|q| (q.seq, q.rewrite, q.new_parent, q.merged.clone()))
            .collect();
        assert_eq!(
            r,
            vec![
                (4, Some(Rewrite::Consolidate), None, vec![1, 2, 3, 4]),
                (7, Some(Rewrite::Consolidate), None, vec![4, 5, 6, 7])
            ]
        );
        let lengths: Vec<u32> = p.points.iter().map(|q| q.chain_length).collect();
        assert_eq!(lengths, vec![1, 2, 3, 1, 2, 3, 1]);
    }

    #[test]
    fn several_chains_follow_links_not_seq_order() {
        // Two fulls (1 and 3, e.g. after copies), 2 on 1, 4 on 3, 5 on 2.
        let nodes = chain(&[None, Some(1), None, Some(3), Some(2)]);
        let p = plan(&nodes, &keep(&[1, 4, 5], 5), None);
        let r: Vec<_> = p
            .rewrites()
            .map(|q| (q.seq, q.rewrite, q.new_parent, q.merged.clone()))
            .collect();
        assert_eq!(
            r,
            vec![
                (4, Some(Rewrite::Fold), None, vec![3, 4]),
                (5, Some(Rewrite::Merge), Some(1), vec![2, 5]),
            ]
        );
    }
}
