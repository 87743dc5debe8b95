//! Dataset sources: each turns a layout on disk into an ordered stream of
//! [`Input`](crate::pipeline::Input)s (already sliced to the `--part`) and runs the pipeline.
//!
//! - [`imagenet`]: ILSVRC2012 train/val folders, label files, the train tar of class tars;
//! - [`cc12m`]: img2dataset webdataset tars and (path or url, caption) tables;
//! - [`webvid`]: WebVid-10M's CSV with a folder of downloaded videos, and video2dataset tars;
//! - [`tar`]: safe member names, brace patterns, webdataset samples, streaming producers;
//! - [`mat5`]: the ILSVRC2012 devkit's `meta.mat` (MATLAB 5 MAT-file) class order.

pub mod cc12m;
pub mod imagenet;
pub mod mat5;
pub mod tar;
pub mod webvid;

use std::path::PathBuf;

use mdm_shards::RecordKind;

use crate::pipeline::{Build, Media};
use crate::settings::Part;
use crate::text::TextSpec;

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

    /// A build of `media` into `kind` records; the manifest's settings are `settings` (an
    /// object: source, medium settings) plus this run's part.
    pub(crate) fn build(&self, kind: RecordKind, media: Media, mut settings: serde_json::Value, text: Option<TextSpec>) -> Build {
        if let (Some(p), Some(o)) = (self.part, settings.as_object_mut()) {
            o.insert("part".into(), serde_json::json!(p));
        }
        Build {
            out: self.out.clone(),
            kind,
            media,
            part: self.part,
            classes: None,
            manifest_settings: settings,
            threads: self.threads(),
            progress: self.progress,
            total: None,
            text,
        }
    }

    pub(crate) fn owns(&self, unit: u64) -> bool {
        self.part.is_none_or(|p| p.owns(unit))
    }
}
