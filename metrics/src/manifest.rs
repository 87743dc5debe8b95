//! The JSON Lines caption/class manifest that `mdm sample --manifest` samples from and
//! `mdm eval clip` scores (what `mdm eval coco-prep` and `mdm eval class-manifest` write).
//!
//! One object per line: `id` (required, unique; a non-empty string or a number), `caption`
//! (text models) or `class` (class models), and optional `file` (a plain `.png` file name,
//! default `<id>.png`, unique). Other keys are kept for other tools and ignored here; blank lines
//! are skipped.
//!
//! An error in a line is an [`Error::Invalid`] whose `path` is `FILE:LINE` (1-based), so that it
//! reads `FILE:LINE: what is wrong`.
//!
//! ```no_run
//! # fn main() -> mdm_metrics::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("captions.jsonl");
//! std::fs::write(&path, "{\"id\": 1, \"caption\": \"a cat\"}\n").unwrap();
//! let rows = mdm_metrics::manifest::read_manifest(&path)?;
//! assert_eq!(rows[0].file, "1.png");
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{io, Error, Result};

/// One manifest row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub caption: Option<String>,
    pub class: Option<i64>,
    /// Output file name inside the out folder.
    pub file: String,
}

/// The error of line `line` (1-based) of `path`: its `path` is `FILE:LINE`, so it reads
/// `FILE:LINE: msg`.
pub(crate) fn at_line(path: &Path, line: usize, msg: String) -> Error {
    Error::Invalid { path: PathBuf::from(format!("{}:{line}", path.display())), msg }
}

/// The values of a JSON Lines file with their line numbers (1-based); blank lines are skipped.
/// A line that is not JSON is an error naming `FILE:LINE`.
pub(crate) fn json_lines(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut values = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(line).map_err(|e| at_line(path, i + 1, format!("not a JSON object: {e}")))?;
        values.push((i + 1, v));
    }
    Ok(values)
}

/// Reads a JSONL manifest; every error names the file and line.
pub fn read_manifest(path: &Path) -> Result<Vec<Row>> {
    let (mut rows, mut ids, mut files) = (vec![], HashSet::new(), HashSet::new());
    for (line, v) in json_lines(path)? {
        let at = |msg: String| at_line(path, line, msg);
        let obj = v.as_object().ok_or_else(|| at("not a JSON object".into()))?;
        let id = match obj.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(at("needs an \"id\" (a non-empty string or a number)".into())),
        };
        let caption = match obj.get("caption") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(at("\"caption\" must be a string".into())),
        };
        let class = match obj.get("class") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().ok_or_else(|| at("\"class\" must be an integer".into()))?),
        };
        let file = match obj.get("file") {
            None | Some(Value::Null) => format!("{id}.png"),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(at("\"file\" must be a string".into())),
        };
        let plain = Path::new(&file).file_name().is_some_and(|n| n == file.as_str()) && !file.starts_with('.');
        if !plain || !file.to_ascii_lowercase().ends_with(".png") {
            return Err(at(format!("output file {file:?} must be a plain file name ending in .png (no folders)")));
        }
        if !ids.insert(id.clone()) {
            return Err(at(format!("id {id:?} appears twice")));
        }
        if !files.insert(file.clone()) {
            return Err(at(format!("output file {file:?} appears twice")));
        }
        rows.push(Row { id, caption, class, file });
    }
    if rows.is_empty() {
        return Err(Error::Invalid { path: path.to_path_buf(), msg: "the manifest has no rows".into() });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.jsonl");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn reads_rows_and_names_bad_lines() {
        let (_d, p) = manifest("{\"id\": \"a\", \"caption\": \"a cat\"}\n\n{\"id\": 7, \"class\": 3, \"file\": \"x.png\", \"extra\": 1}\n");
        let rows = read_manifest(&p).unwrap();
        assert_eq!(rows[0], Row { id: "a".into(), caption: Some("a cat".into()), class: None, file: "a.png".into() });
        assert_eq!(rows[1], Row { id: "7".into(), caption: None, class: Some(3), file: "x.png".into() });
        for (text, what) in [
            ("{\"id\": \"a\"}\n{\"id\": \"a\"}\n", "m.jsonl:2: id \"a\" appears twice"),
            ("{\"caption\": \"x\"}\n", "m.jsonl:1: needs an \"id\""),
            ("{\"id\": \"a\", \"file\": \"../b.png\"}\n", "m.jsonl:1: output file \"../b.png\" must be a plain file name"),
            ("{\"id\": \"a\", \"class\": \"x\"}\n", "m.jsonl:1: \"class\" must be an integer"),
            ("[1]\n", "m.jsonl:1: not a JSON object"),
        ] {
            let (_d, p) = manifest(text);
            let e = read_manifest(&p).unwrap_err().to_string();
            assert!(e.contains(what), "{e:?} lacks {what:?}");
        }
    }
}
