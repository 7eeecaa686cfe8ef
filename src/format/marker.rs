//! The repository marker, `.crdt/repo.json`, and its settings, `.crdt/config.json`
//! (spec/format.md §2): small JSON objects, refused when they hold unknown fields.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Format version written into the repository marker.
pub const REPO_FORMAT_VERSION: u32 = 2;
/// The `format` field of every marker.
pub(crate) const MARKER_FORMAT: &str = "crzarr";

/// Contents of `.crdt/repo.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    /// Always `"crzarr"`.
    pub format: String,
    /// Format version of the bucket layout.
    pub format_version: u32,
    /// The repository id (a ULID).
    pub repo_id: String,
}

/// The garbage-collection window a repository asks for when it names none: a day,
/// far above any commit, import or compaction.
pub const DEFAULT_MIN_GC_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// A repository's settings, `.crdt/config.json` (format.md §2.1). Unknown fields are
/// refused rather than dropped: a newer build's setting must not be lost by an
/// older build rewriting the object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// The shortest window `gc` accepts without `force`, in seconds.
    pub min_gc_window_secs: u64,
}

impl Default for RepoConfig {
    fn default() -> Self {
        RepoConfig {
            min_gc_window_secs: DEFAULT_MIN_GC_WINDOW.as_secs(),
        }
    }
}

impl RepoConfig {
    /// The minimum garbage-collection window.
    pub fn min_gc_window(&self) -> Duration {
        Duration::from_secs(self.min_gc_window_secs)
    }
}
