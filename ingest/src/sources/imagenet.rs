//! ImageNet ILSVRC2012 as users have it: `train/<wnid>/*.JPEG`; `val/` flat with
//! `LOC_val_solution.csv` or `ILSVRC2012_validation_ground_truth.txt`, or sorted into
//! `<wnid>/` folders; `LOC_synset_mapping.txt` for class names; or the original train tar of
//! per-class tars (`ILSVRC2012_img_train.tar`). The Kaggle layout (`ILSVRC/Data/CLS-LOC/…`)
//! is found too.
//!
//! Class index = position of the wnid in sorted order (the standard 0..999), recorded in the
//! manifest with the names. The devkit's ground-truth file numbers classes by ILSVRC2012_ID,
//! a different order: its lines are mapped through the devkit's `meta.mat` (found beside the
//! ground-truth file, or given as `synset_order`, which may also be a text file of one wnid per
//! line in ILSVRC2012_ID order); a ground-truth file of one wnid per line needs no mapping. Inputs are sorted by (wnid, file name) — train — or file
//! name — flat val — and `--part I/N` takes every N-th image (class tar for the tar form).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use mdm_shards::{ClassInfo, RecordKind};
use serde::{Deserialize, Serialize};

use super::tar::{is_safe_name, member_name, open, produced};
use super::RunOptions;
use crate::error::{io, Error};
use crate::pipeline::{self, Build, Input, Media, Payload, Summary};
use crate::rejects::{Reject, RejectReason};
use crate::settings::{ImageSettings, Validated};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// Where the data is.
#[derive(Debug, Clone)]
pub struct ImagenetOptions {
    /// Dataset root (or the split folder itself, or the train tar).
    pub src: PathBuf,
    pub split: Split,
    /// Validation labels file (default: found next to the data).
    pub val_labels: Option<PathBuf>,
    /// wnids in ILSVRC2012_ID order, for a ground-truth file of integers.
    pub synset_order: Option<PathBuf>,
}

const SYNSET_MAPPING: &str = "LOC_synset_mapping.txt";
const VAL_CSV: &str = "LOC_val_solution.csv";
const VAL_GT: &str = "ILSVRC2012_validation_ground_truth.txt";
const META_MAT: &str = "meta.mat";
const NOT_IMAGES: [&str; 7] = ["txt", "csv", "json", "md", "tar", "mat", "xml"];

fn is_wnid(s: &str) -> bool {
    s.len() == 9 && s.starts_with('n') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

/// Looks for `name` in `dirs` and their parents (three levels up).
fn find_near(dirs: &[&Path], name: &str) -> Option<PathBuf> {
    for d in dirs {
        for a in d.ancestors().take(4) {
            let p = a.join(name);
            if p.is_file() {
                return Some(p);
            }
            let p = a.join("ILSVRC2012_devkit_t12").join("data").join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// `LOC_synset_mapping.txt`: `n01440764 tench, Tinca tinca` per line.
pub fn read_synset_mapping(path: &Path) -> Result<BTreeMap<String, String>, Error> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (wnid, name) = line.split_once(char::is_whitespace).unwrap_or((line, line));
        if !is_wnid(wnid) {
            return Err(Error::Labels { path: path.into(), line: i + 1, msg: format!("{wnid:?} is not a wnid") });
        }
        out.insert(wnid.to_string(), name.trim().to_string());
    }
    Ok(out)
}

fn classes_from(wnids: &BTreeSet<String>, names: &BTreeMap<String, String>) -> Vec<ClassInfo> {
    wnids
        .iter()
        .enumerate()
        .map(|(i, w)| ClassInfo { index: i as u32, id: w.clone(), name: names.get(w).cloned().unwrap_or_else(|| w.clone()) })
        .collect()
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    v.sort();
    Ok(v)
}

fn is_candidate_file(p: &Path) -> bool {
    p.is_file() && !p.extension().is_some_and(|e| NOT_IMAGES.contains(&e.to_string_lossy().to_lowercase().as_str()))
}

/// The devkit's class order: wnids by ILSVRC2012_ID, from its `meta.mat` (MATLAB 5 MAT-file) or
/// from a text file of one wnid per line.
fn read_synset_order(path: &Path) -> Result<Vec<String>, Error> {
    let bytes = fs::read(path).map_err(io(path))?;
    let order = if bytes.starts_with(b"MATLAB") {
        super::mat5::synset_order(&bytes).map_err(|msg| Error::Source { path: path.into(), msg })?
    } else {
        String::from_utf8_lossy(&bytes).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
    };
    if let Some((i, w)) = order.iter().enumerate().find(|(_, w)| !is_wnid(w)) {
        return Err(Error::Labels { path: path.into(), line: i + 1, msg: format!("{w:?} is not a wnid") });
    }
    Ok(order)
}

/// Validation labels: image stem → wnid.
fn read_val_labels(path: &Path, synset_order: Option<&Path>) -> Result<HashMap<String, String>, Error> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    let mut out = HashMap::new();
    let is_csv = path.extension().is_some_and(|e| e == "csv");
    // The class order of integer ids: `--synset-order`, else the devkit's meta.mat beside the
    // ground-truth file (both sit in ILSVRC2012_devkit_t12/data/); read at the first integer.
    let beside = path.with_file_name(META_MAT);
    let order_file = synset_order.map(Path::to_path_buf).or_else(|| (!is_csv && beside.is_file()).then_some(beside));
    let mut order: Option<Vec<String>> = None;
    let mut n = 0usize;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        let bad = |msg: String| Error::Labels { path: path.into(), line: i + 1, msg };
        if line.is_empty() {
            continue;
        }
        if is_csv {
            if i == 0 && line.to_lowercase().starts_with("imageid") {
                continue;
            }
            let (id, pred) = line.split_once(',').ok_or_else(|| bad("expected ImageId,PredictionString".into()))?;
            let wnid = pred.split_whitespace().next().unwrap_or("");
            if !is_wnid(wnid) {
                return Err(bad(format!("{wnid:?} is not a wnid")));
            }
            out.insert(id.trim().to_string(), wnid.to_string());
        } else {
            n += 1;
            let stem = format!("ILSVRC2012_val_{n:08}");
            let wnid = if is_wnid(line) {
                line.to_string()
            } else {
                let id: usize = line.parse().map_err(|_| bad(format!("{line:?} is neither a wnid nor a class id")))?;
                if order.is_none() {
                    let file = order_file.as_deref().ok_or_else(|| {
                        bad(format!(
                            "integer ILSVRC2012_IDs follow the devkit's meta.mat order, not sorted wnids: put {META_MAT} beside \
                             this file or give --synset-order (meta.mat, or wnids in ILSVRC2012_ID order)"
                        ))
                    })?;
                    order = Some(read_synset_order(file)?);
                }
                let order = order.as_ref().expect("read above");
                order.get(id.wrapping_sub(1)).cloned().ok_or_else(|| bad(format!("class id {id} outside 1..={}", order.len())))?
            };
            out.insert(stem, wnid);
        }
    }
    Ok(out)
}

/// One image file with its label (or the reason it has none).
struct FileInput {
    path: PathBuf,
    id: String,
    label: Result<i32, Reject>,
}

/// Scans and ingests.
pub fn ingest(opts: &ImagenetOptions, settings: &Validated<ImageSettings>, run: &RunOptions) -> Result<Summary, Error> {
    let src = &opts.src;
    if src.is_file() && src.extension().is_some_and(|e| e == "tar") {
        if opts.split != Split::Train {
            return Err(Error::Source { path: src.clone(), msg: "a tar source is the train tar of class tars".into() });
        }
        return ingest_train_tar(opts, settings, run);
    }
    let split = opts.split.name();
    let dir = [src.join(split), src.join("Data/CLS-LOC").join(split), src.join("ILSVRC/Data/CLS-LOC").join(split)]
        .into_iter()
        .find(|d| d.is_dir())
        .unwrap_or_else(|| src.clone());
    if !dir.is_dir() {
        return Err(Error::Source { path: src.clone(), msg: format!("no {split} folder found") });
    }
    let names = match find_near(&[src.as_path(), dir.as_path()], SYNSET_MAPPING) {
        Some(p) => read_synset_mapping(&p)?,
        None => BTreeMap::new(),
    };
    let entries = sorted_entries(&dir)?;
    let class_dirs: Vec<&PathBuf> =
        entries.iter().filter(|p| p.is_dir() && p.file_name().is_some_and(|n| is_wnid(&n.to_string_lossy()))).collect();
    let mut files = Vec::new();
    let wnids: BTreeSet<String>;
    if !class_dirs.is_empty() {
        wnids = if names.is_empty() {
            class_dirs.iter().filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned())).collect()
        } else {
            names.keys().cloned().collect()
        };
        let index: HashMap<&str, i32> = wnids.iter().enumerate().map(|(i, w)| (w.as_str(), i as i32)).collect();
        for d in class_dirs {
            let wnid = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            for p in sorted_entries(d)?.into_iter().filter(|p| is_candidate_file(p)) {
                let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let label = index
                    .get(wnid.as_str())
                    .copied()
                    .ok_or_else(|| Reject::new(RejectReason::NoLabel, format!("{wnid} is not in {SYNSET_MAPPING}")));
                files.push(FileInput { id: format!("{wnid}/{stem}"), path: p, label });
            }
        }
    } else {
        if opts.split != Split::Val {
            return Err(Error::Source { path: dir, msg: "no <wnid>/ class folders".into() });
        }
        let labels_path = match &opts.val_labels {
            Some(p) => p.clone(),
            None => find_near(&[src.as_path(), dir.as_path()], VAL_CSV).or_else(|| find_near(&[src.as_path(), dir.as_path()], VAL_GT)).ok_or_else(|| {
                Error::Source { path: dir.clone(), msg: format!("flat val folder without {VAL_CSV} or {VAL_GT}") }
            })?,
        };
        let labels = read_val_labels(&labels_path, opts.synset_order.as_deref())?;
        wnids = if names.is_empty() { labels.values().cloned().collect() } else { names.keys().cloned().collect() };
        let index: HashMap<&str, i32> = wnids.iter().enumerate().map(|(i, w)| (w.as_str(), i as i32)).collect();
        for p in entries.into_iter().filter(|p| is_candidate_file(p)) {
            let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let label = match labels.get(&stem) {
                None => Err(Reject::new(RejectReason::NoLabel, format!("{stem} is not in {}", labels_path.display()))),
                Some(w) => index
                    .get(w.as_str())
                    .copied()
                    .ok_or_else(|| Reject::new(RejectReason::NoLabel, format!("{w} is not in {SYNSET_MAPPING}"))),
            };
            files.push(FileInput { id: stem, path: p, label });
        }
    }
    let classes = classes_from(&wnids, &names);
    let mine: Vec<FileInput> = files.into_iter().enumerate().filter(|(u, _)| run.owns(*u as u64)).map(|(_, f)| f).collect();
    let build = build_for(opts, settings, run, classes, Some(mine.len() as u64));
    let inputs = mine.into_iter().map(move |f| {
        let source = f.path.strip_prefix(&opts.src).unwrap_or(&f.path).to_string_lossy().into_owned();
        Ok::<Input, Error>(Input {
            id: f.id,
            source,
            label: f.label.as_ref().ok().copied(),
            caption: None,
            payload: match f.label {
                Ok(_) => Payload::Path(f.path),
                Err(r) => Payload::Rejected(r),
            },
        })
    });
    pipeline::run(&build, inputs)
}

fn build_for(
    opts: &ImagenetOptions,
    settings: &Validated<ImageSettings>,
    run: &RunOptions,
    classes: Vec<ClassInfo>,
    total: Option<u64>,
) -> Build {
    let ms = serde_json::json!({ "source": "imagenet", "split": opts.split, "image": settings });
    let build = run.build(RecordKind::Image, Media::Image(settings.clone()), ms, None);
    Build { classes: Some(classes), total, ..build }
}

/// The original `ILSVRC2012_img_train.tar`: a tar of `<wnid>.tar`, each a tar of JPEGs.
fn ingest_train_tar(opts: &ImagenetOptions, settings: &Validated<ImageSettings>, run: &RunOptions) -> Result<Summary, Error> {
    let tar_path = opts.src.clone();
    let parent = tar_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let names = match find_near(&[parent.as_path()], SYNSET_MAPPING) {
        Some(p) => read_synset_mapping(&p)?,
        None => BTreeMap::new(),
    };
    // Without the mapping, the class list comes from a first pass over the outer headers.
    let wnids: BTreeSet<String> = if names.is_empty() {
        let mut a = open(&tar_path)?;
        let mut set = BTreeSet::new();
        for e in a.entries().map_err(io(&tar_path))? {
            let e = e.map_err(io(&tar_path))?;
            let name = member_name(&e);
            let stem = name.rsplit('/').next().unwrap_or(&name).trim_end_matches(".tar").to_string();
            if is_wnid(&stem) {
                set.insert(stem);
            }
        }
        set
    } else {
        names.keys().cloned().collect()
    };
    let classes = classes_from(&wnids, &names);
    let index: HashMap<String, i32> = wnids.iter().enumerate().map(|(i, w)| (w.clone(), i as i32)).collect();
    let build = build_for(opts, settings, run, classes, None);
    let run2 = run.clone();
    let path = tar_path.clone();
    let inputs = produced(move |tx| {
        let mut outer = open(&path)?;
        let entries = outer.entries().map_err(io(&path))?;
        for (u, e) in entries.enumerate() {
            let e = e.map_err(io(&path))?;
            let outer_name = member_name(&e);
            if !run2.owns(u as u64) {
                continue;
            }
            let src_of = |m: &str| format!("{}:{outer_name}/{m}", path.display());
            if !is_safe_name(&outer_name) {
                let r = Reject::new(RejectReason::UnsafePath, "absolute or .. member name");
                let _ = tx.send(Ok(Input { id: outer_name.clone(), source: src_of(""), label: None, caption: None, payload: Payload::Rejected(r) }));
                continue;
            }
            let wnid = outer_name.rsplit('/').next().unwrap_or(&outer_name).trim_end_matches(".tar").to_string();
            let label = index.get(&wnid).copied();
            let mut inner = ::tar::Archive::new(e);
            let inner_entries = inner.entries().map_err(|err| Error::Tar { path: path.clone(), member: outer_name.clone(), msg: err.to_string() })?;
            for m in inner_entries {
                let mut m = match m {
                    Ok(m) => m,
                    Err(err) => {
                        let r = Reject::new(RejectReason::ReadError, format!("inner tar: {err}"));
                        let _ = tx.send(Ok(Input { id: format!("{wnid}/?"), source: src_of("?"), label, caption: None, payload: Payload::Rejected(r) }));
                        break;
                    }
                };
                if !m.header().entry_type().is_file() {
                    continue;
                }
                let name = member_name(&m);
                let stem = name.rsplit('/').next().unwrap_or(&name).split('.').next().unwrap_or("").to_string();
                let id = format!("{wnid}/{stem}");
                let payload = if !is_safe_name(&name) {
                    Payload::Rejected(Reject::new(RejectReason::UnsafePath, "absolute or .. member name"))
                } else if label.is_none() {
                    Payload::Rejected(Reject::new(RejectReason::NoLabel, format!("{wnid} is not a known class")))
                } else {
                    let mut buf = Vec::with_capacity(m.size() as usize);
                    match m.read_to_end(&mut buf) {
                        Ok(_) => Payload::Bytes(buf),
                        Err(err) => Payload::Rejected(Reject::new(RejectReason::ReadError, err.to_string())),
                    }
                };
                if tx.send(Ok(Input { id, source: src_of(&name), label, caption: None, payload })).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    });
    pipeline::run(&build, inputs)
}
