//! What a bucket holds: the newest snapshot and its age, what it does not cover
//! yet, and object counts and bytes by kind. Read-only.

use crate::error::Result;
use crate::format::layout::ObjectKind;
use crate::repo::Repo;
use serde::Serialize;
use std::collections::BTreeMap;

/// Objects of one kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ObjectTotals {
    /// How many.
    pub count: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// What [`Repo::status`] reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Newest snapshot, if any.
    pub snapshot: Option<String>,
    /// Its age in seconds (this machine's clock against the store's timestamp).
    pub snapshot_age_secs: Option<u64>,
    /// Changes it covers.
    pub covered: u64,
    /// Applied changes it does not cover yet.
    pub uncovered_changes: usize,
    /// Changes waiting for dependencies.
    pub pending: usize,
    /// Writers that used one sequence number twice.
    pub forks: usize,
    /// Files skipped as damaged or foreign.
    pub problems: usize,
    /// Pending changes that need history neither in the bucket nor covered.
    pub missing_history: usize,
    /// Objects by kind.
    pub objects: BTreeMap<ObjectKind, ObjectTotals>,
}

impl Repo {
    /// Summarizes this handle's state and lists the bucket (five LISTs, in parallel).
    pub async fn status(&self) -> Result<Status> {
        let b = self.bucket();
        let lay = b.layout();
        let dirs = ObjectKind::ALL.map(|kind| (kind, lay.dir(kind)));
        let lists = futures::future::join_all(dirs.iter().map(|(_, d)| b.list_all(d))).await;
        let mut objects = BTreeMap::new();
        let mut newest: Option<(crate::format::layout::SnapshotName, u64)> = None;
        for ((kind, _), list) in dirs.iter().zip(lists) {
            let list = list?;
            let t: &mut ObjectTotals = objects.entry(*kind).or_default();
            for m in &list {
                t.count += 1;
                t.bytes += m.size;
                if *kind == ObjectKind::Snapshot
                    && let Ok(name) = lay.parse_snapshot_key(&m.location)
                    && newest.as_ref().is_none_or(|(n, _)| name > *n)
                {
                    let age = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                        .saturating_sub(m.last_modified.timestamp().max(0) as u64);
                    newest = Some((name, age));
                }
            }
        }
        Ok(Status {
            snapshot: newest.map(|(n, _)| n.file_name()),
            snapshot_age_secs: newest.map(|(_, a)| a),
            covered: newest.map_or(0, |(n, _)| n.covered),
            uncovered_changes: self.log().len(),
            pending: self.pending().len(),
            forks: self.forks().len(),
            problems: self.problems().len(),
            missing_history: self.missing_history().len(),
            objects,
        })
    }
}
