//! [`LoaderState`]: the small serialisable cursor a loader resumes from.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{io, Error, Result};
use crate::order::Cursor;

const FORMAT: &str = "mdm-loader-state";
const VERSION: u32 = 1;

/// Where a loader stands, after the last batch it yielded. A loader built with
/// [`crate::LoaderBuilder::resume`] from it yields exactly the rest of the order, on any world
/// size and worker count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderState {
    pub format: String,
    pub version: u32,
    /// Hash of the settings that determine the order (seed, shard sets and weights, shuffle,
    /// resolution ratio, buckets, epoch end); a state only resumes a loader with the same one.
    pub fingerprint: String,
    /// Batches yielded so far, by this rank.
    pub steps: u64,
    pub cursor: Cursor,
}

impl LoaderState {
    pub(crate) fn new(fingerprint: String, cursor: Cursor) -> Self {
        LoaderState { format: FORMAT.into(), version: VERSION, fingerprint, steps: 0, cursor }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a state always serialises")
    }

    pub fn from_json(json: &str) -> Result<Self> {
        let s: LoaderState = serde_json::from_str(json).map_err(|e| Error::State(format!("not a loader state: {e}")))?;
        if s.format != FORMAT || s.version != VERSION {
            return Err(Error::State(format!("{:?} version {}, this build reads {FORMAT:?} version {VERSION}", s.format, s.version)));
        }
        Ok(s)
    }

    /// Writes the state durably ([`mdm_shards::durable::write_atomic`]).
    pub fn save(&self, path: &Path) -> Result<()> {
        Ok(mdm_shards::durable::write_atomic(path, self.to_json().as_bytes())?)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let json = std::fs::read_to_string(path).map_err(io(path))?;
        Self::from_json(&json).map_err(|e| Error::State(format!("{}: {e}", path.display())))
    }
}
