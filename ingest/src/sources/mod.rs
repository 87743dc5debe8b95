//! Dataset sources: each turns a layout on disk into an ordered stream of
//! [`Input`](crate::pipeline::Input)s (already sliced to the `--part`) and runs the pipeline.
//!
//! - [`imagenet`]: ILSVRC2012 train/val folders, label files, the train tar of class tars;
//! - [`cc12m`]: img2dataset webdataset tars and (path or url, caption) tables;
//! - [`tar`]: safe member names, brace patterns, streaming producers shared by both.

pub mod cc12m;
pub mod imagenet;
pub mod tar;

use std::path::PathBuf;

use crate::settings::Part;

/// Run options that do not change the output (not stored in the manifest, but `part`).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out: PathBuf,
    /// Worker threads (0: all cores).
    pub threads: usize,
    pub part: Option<Part>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl RunOptions {
    pub(crate) fn threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    pub(crate) fn owns(&self, unit: u64) -> bool {
        self.part.is_none_or(|p| p.owns(unit))
    }
}
