//! `crzarr log --graph`: the change DAG drawn in text, newest first, one lane per
//! line of descent, like `git log --graph`.

use crzarr::fold::ChangeInfo;
use crzarr::format::ids::ChangeHash;
use std::collections::HashSet;

/// Lines of the graph for `changes` (oldest first, as `Repo::log` gives them).
/// Deps outside `changes` (compacted into a snapshot) end their lane.
pub(crate) fn render(changes: &[&ChangeInfo]) -> Vec<String> {
    let shown: HashSet<ChangeHash> = changes.iter().map(|c| c.hash).collect();
    // The change each lane waits for next.
    let mut lanes: Vec<Option<ChangeHash>> = Vec::new();
    let mut out = Vec::new();
    let draw = |lanes: &[Option<ChangeHash>], mark: &dyn Fn(usize) -> Option<char>| {
        let s: String = lanes
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let c = mark(i).unwrap_or(if l.is_some() { '|' } else { ' ' });
                format!("{c} ")
            })
            .collect();
        s.trim_end().to_string()
    };
    for c in changes.iter().rev() {
        let waiting: Vec<usize> = (0..lanes.len())
            .filter(|&i| lanes[i] == Some(c.hash))
            .collect();
        let col = match waiting.first() {
            Some(&i) => i,
            None => match lanes.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    lanes.push(None);
                    lanes.len() - 1
                }
            },
        };
        // Lines of descent that meet here converge into `col`.
        if waiting.len() > 1 {
            out.push(connector(&lanes, &waiting[1..], '/'));
            for &i in &waiting[1..] {
                lanes[i] = None;
            }
        }
        let row = draw(&lanes, &|i| (i == col).then_some('*'));
        let mut row = if row.len() < 2 * col + 1 {
            format!("{row:<width$}", width = 2 * col + 1)
        } else {
            row
        };
        let pad = (2 * lanes.len()).max(2).saturating_sub(row.len());
        row.push_str(&" ".repeat(pad));
        out.push(
            format!(
                "{row} {} {}#{} {}",
                c.hash.short(),
                c.actor,
                c.seq,
                c.message.as_deref().unwrap_or("")
            )
            .trim_end()
            .to_string(),
        );
        let parents: Vec<ChangeHash> = c
            .deps
            .iter()
            .copied()
            .filter(|d| shown.contains(d))
            .collect();
        lanes[col] = parents.first().copied();
        let mut opened = Vec::new();
        for p in parents.iter().skip(1) {
            if lanes.contains(&Some(*p)) {
                continue;
            }
            let slot = match lanes.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    lanes.push(None);
                    lanes.len() - 1
                }
            };
            lanes[slot] = Some(*p);
            opened.push(slot);
        }
        if !opened.is_empty() {
            out.push(connector(&lanes, &opened, '\\'));
        }
        while lanes.last() == Some(&None) {
            lanes.pop();
        }
    }
    out
}

/// A line between rows: `|` for lanes that continue, and `ch` just left of each lane
/// in `moving` (a lane that branches off, `\`, or joins its left neighbour, `/`).
fn connector(lanes: &[Option<ChangeHash>], moving: &[usize], ch: char) -> String {
    let mut line = vec![' '; 2 * lanes.len()];
    for (i, l) in lanes.iter().enumerate() {
        if moving.contains(&i) {
            line[(2 * i).saturating_sub(1)] = ch;
        } else if l.is_some() {
            line[2 * i] = '|';
        }
    }
    line.into_iter().collect::<String>().trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crzarr::format::ids::{ActorId, Hlc};

    fn info(name: u8, deps: &[u8], hlc: u64) -> ChangeInfo {
        ChangeInfo {
            hash: ChangeHash([name; 32]),
            actor: ActorId("01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap()),
            seq: u64::from(name),
            hlc: Hlc(hlc),
            wall_ms: 0,
            message: Some(format!("m{name}")),
            deps: deps.iter().map(|d| ChangeHash([*d; 32])).collect(),
            ops: 1,
            compacted: false,
        }
    }

    #[test]
    fn draws_a_diamond_with_a_merge_and_a_convergence() {
        // 1 <- 2, 1 <- 3, (2, 3) <- 4.
        let v = [
            info(1, &[], 1),
            info(2, &[1], 2),
            info(3, &[1], 3),
            info(4, &[2, 3], 4),
        ];
        let refs: Vec<&ChangeInfo> = v.iter().collect();
        let lines = render(&refs);
        let shape: Vec<String> = lines
            .iter()
            .map(|l| l.split(" 0").next().unwrap_or("").trim_end().to_string())
            .collect();
        assert_eq!(shape, ["*", "|\\", "| *", "* |", "|/", "*"], "{lines:#?}");
        assert!(
            lines[0].ends_with("01ARZ3NDEKTSV4RRFFQ69G5FAV#4 m4"),
            "{lines:#?}"
        );
    }

    #[test]
    fn concurrent_heads_get_their_own_lanes_and_compacted_deps_end_them() {
        // Two heads on one root; the root's dep (9) is compacted away.
        let v = [info(1, &[9], 1), info(2, &[1], 2), info(3, &[1], 3)];
        let refs: Vec<&ChangeInfo> = v.iter().collect();
        let shape: Vec<String> = render(&refs)
            .iter()
            .map(|l| l.split(" 0").next().unwrap_or("").trim_end().to_string())
            .collect();
        assert_eq!(shape, ["*", "| *", "|/", "*"]);
    }
}
