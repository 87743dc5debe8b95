//! The JSON manifest of a shard set: written last and atomically, so a shard set exists
//! exactly when its manifest does. Partitioned builds write one manifest per part;
//! [`Manifest::merge`] joins them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io, Error, Result};
use crate::record::EmbeddingDType;
use crate::schema::{Layout, RecordKind, FORMAT_VERSION};

/// File name of a complete shard set's manifest.
pub const MANIFEST_FILE: &str = "manifest.json";
const FORMAT_NAME: &str = "mdm-shards";

/// Which text encoder produced the stored embeddings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderInfo {
    pub model_id: String,
    pub weights_sha256: String,
    pub tokenizer_sha256: String,
    pub dtype: EmbeddingDType,
    pub max_tokens: u32,
    pub dim: u32,
}

/// One shard file, path relative to the manifest's folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
    pub row_groups: u32,
    pub schema_fingerprint: String,
}

/// Inputs seen = written + rejected (by reason).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildStats {
    pub inputs: u64,
    pub written: u64,
    pub rejected: BTreeMap<String, u64>,
}

impl BuildStats {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// True when every input is accounted for.
    pub fn balanced(&self) -> bool {
        self.inputs == self.written + self.rejected_total()
    }

    /// Counts one rejected input (`inputs` too).
    pub fn reject(&mut self, reason: &str) {
        self.inputs += 1;
        *self.rejected.entry(reason.to_string()).or_default() += 1;
    }

    pub fn add(&mut self, other: &BuildStats) {
        self.inputs += other.inputs;
        self.written += other.written;
        for (k, v) in &other.rejected {
            *self.rejected.entry(k.clone()).or_default() += v;
        }
    }
}

/// A class of a labelled dataset (ImageNet: index in sorted-wnid order, wnid, names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassInfo {
    pub index: u32,
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub kind: RecordKind,
    pub resolutions: Vec<u32>,
    pub schema_fingerprint: String,
    pub text_encoder: Option<TextEncoderInfo>,
    pub shards: Vec<ShardEntry>,
    pub stats: BuildStats,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<ClassInfo>>,
    /// Resolved build settings as the producer recorded them (a `part` key is per part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Value>,
    pub created_by: String,
}

impl Manifest {
    pub fn new(layout: &Layout, text_encoder: Option<TextEncoderInfo>) -> Self {
        Manifest {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            kind: layout.kind,
            resolutions: layout.resolutions.clone(),
            schema_fingerprint: layout.fingerprint(),
            text_encoder,
            shards: Vec::new(),
            stats: BuildStats::default(),
            classes: None,
            settings: None,
            created_by: format!("mdm-shards {}", env!("CARGO_PKG_VERSION")),
        }
    }

    pub fn layout(&self) -> Layout {
        Layout { kind: self.kind, resolutions: self.resolutions.clone() }
    }

    pub fn rows(&self) -> u64 {
        self.shards.iter().map(|s| s.rows).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes).sum()
    }

    /// Checks internal consistency; `path` names the manifest in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::Invalid { path: path.to_path_buf(), msg });
        if self.format != FORMAT_NAME {
            return bad(format!("format {:?}, expected {FORMAT_NAME:?}", self.format));
        }
        if self.version != FORMAT_VERSION {
            return bad(format!("format version {}, this build reads {FORMAT_VERSION}", self.version));
        }
        let layout = Layout::new(self.kind, self.resolutions.clone()).map_err(|msg| Error::Invalid { path: path.to_path_buf(), msg })?;
        if self.schema_fingerprint != layout.fingerprint() {
            return bad(format!("schema fingerprint {} does not match its layout", self.schema_fingerprint));
        }
        if self.text_encoder.is_some() && !self.kind.has_text() {
            return bad(format!("{} shards cannot have a text encoder", self.kind));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.shards {
            if s.schema_fingerprint != self.schema_fingerprint {
                return bad(format!("shard {} has schema {}, the set {}", s.file, s.schema_fingerprint, self.schema_fingerprint));
            }
            if Path::new(&s.file).is_absolute() || !seen.insert(s.file.clone()) {
                return bad(format!("shard path {:?} is absolute or listed twice", s.file));
            }
        }
        if !self.stats.balanced() {
            return bad(format!(
                "stats do not balance: {} inputs != {} written + {} rejected",
                self.stats.inputs,
                self.stats.written,
                self.stats.rejected_total()
            ));
        }
        Ok(())
    }

    /// Reads and validates a manifest file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).map_err(io(path))?;
        let m: Manifest =
            serde_json::from_str(&text).map_err(|source| Error::ManifestJson { path: path.to_path_buf(), source })?;
        m.validate(path)?;
        Ok(m)
    }

    /// Writes `dir/name` atomically (temporary file, fsync, rename, fsync of the folder).
    pub fn write_as(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        let path = dir.join(name);
        self.validate(&path)?;
        let mut json = serde_json::to_vec_pretty(self).map_err(|source| Error::ManifestJson { path: path.clone(), source })?;
        json.push(b'\n');
        crate::durable::write_atomic(&path, &json)?;
        Ok(path)
    }

    /// Writes `dir/manifest.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        self.write_as(dir, MANIFEST_FILE)
    }

    /// Merges part manifests (each with the folder its shard paths are relative to) into one
    /// whose shard paths are relative to `out_dir`. Parts must agree on kind, resolutions,
    /// text encoder, classes and settings (but for a top-level `part` key).
    pub fn merge(parts: &[(PathBuf, Manifest)], out_dir: &Path) -> Result<Manifest> {
        let Some((_, first)) = parts.first() else {
            return Err(Error::Merge("no manifests given".into()));
        };
        let strip_part = |s: &Option<serde_json::Value>| {
            s.clone().map(|mut v| {
                if let Some(o) = v.as_object_mut() {
                    o.remove("part");
                }
                v
            })
        };
        let mut out = Manifest::new(&first.layout(), first.text_encoder.clone());
        out.classes = first.classes.clone();
        out.settings = strip_part(&first.settings);
        let out_abs = absolute(out_dir)?;
        let mut seen = std::collections::HashSet::new();
        for (dir, m) in parts {
            let what = dir.display();
            if m.kind != first.kind || m.resolutions != first.resolutions {
                return Err(Error::Merge(format!(
                    "{what}: {} {:?} differs from {} {:?}",
                    m.kind, m.resolutions, first.kind, first.resolutions
                )));
            }
            if m.text_encoder != first.text_encoder {
                return Err(Error::Merge(format!("{what}: text encoder differs from the first part's")));
            }
            if m.classes != first.classes {
                return Err(Error::Merge(format!("{what}: class list differs from the first part's")));
            }
            if strip_part(&m.settings) != out.settings {
                return Err(Error::Merge(format!("{what}: build settings differ from the first part's")));
            }
            let dir_abs = absolute(dir)?;
            for s in &m.shards {
                let file = relative_to(&dir_abs.join(&s.file), &out_abs);
                let key = normalize(&out_abs.join(&file));
                if !seen.insert(key) {
                    return Err(Error::Merge(format!("{what}: shard {} appears in two parts", s.file)));
                }
                out.shards.push(ShardEntry { file: file.to_string_lossy().into_owned(), ..s.clone() });
            }
            out.stats.add(&m.stats);
        }
        Ok(out)
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map(|p| normalize(&p)).map_err(io(p))
}

/// Lexical normalisation: drops `.` and resolves `..` against the preceding component.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// `path` relative to `base` (both absolute and normalised), with `..` where needed.
fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let path = normalize(path);
    let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    (common..b.len()).for_each(|_| out.push(".."));
    p[common..].iter().for_each(|c| out.push(c));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(relative_to(Path::new("/a/b/c.parquet"), Path::new("/a/b")), PathBuf::from("c.parquet"));
        assert_eq!(relative_to(Path::new("/a/p1/c.parquet"), Path::new("/a/out")), PathBuf::from("../p1/c.parquet"));
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }

    #[test]
    fn unbalanced_stats_are_invalid() {
        let layout = Layout::new(RecordKind::Image, vec![64]).unwrap();
        let mut m = Manifest::new(&layout, None);
        m.stats.inputs = 2;
        m.stats.written = 1;
        let err = m.validate(Path::new("x/manifest.json")).unwrap_err().to_string();
        assert!(err.contains("do not balance"), "{err}");
        // `reject` counts the input too.
        m.stats.inputs = 1;
        m.stats.reject("too-small");
        assert_eq!((m.stats.inputs, m.stats.rejected_total()), (2, 1));
        m.validate(Path::new("x/manifest.json")).unwrap();
    }
}
