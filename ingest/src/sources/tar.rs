//! Tar helpers: member-name safety, webdataset brace patterns, and a producer thread that
//! turns a streaming tar walk into an iterator for the pipeline (bounded, so memory stays
//! bounded). Members are only ever read into memory: nothing from a tar is written to disk,
//! and a member whose name is absolute or contains `..` is rejected as `unsafe-path`.

use std::path::{Component, Path, PathBuf};

use crossbeam_channel::{bounded, Sender};

use crate::error::Error;
use crate::pipeline::Input;

/// Whether a member name is a plain relative path (no root, no `..`, no drive prefix).
pub fn is_safe_member(name: &Path) -> bool {
    !name.as_os_str().is_empty() && name.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Raw member name as stored in the header (the `tar` crate refuses `..` in `path()`,
/// which would hide the member instead of rejecting it).
pub fn member_name<R: std::io::Read>(entry: &::tar::Entry<'_, R>) -> String {
    String::from_utf8_lossy(&entry.path_bytes()).into_owned()
}

/// Whether a raw member name is safe (checks the bytes, so `..` is seen).
pub fn is_safe_name(name: &str) -> bool {
    !name.starts_with('/') && !name.contains('\\') && is_safe_member(Path::new(name)) && !name.split('/').any(|s| s == "..")
}

/// Expands one `{A..B}` range (zero padding kept from A), as webdataset users write shard lists:
/// `cc12m/{00000..01242}.tar`. Patterns without braces come back as they are.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, Error> {
    let bad = |msg: &str| Error::Settings(format!("pattern {pattern:?}: {msg}"));
    let Some(open) = pattern.find('{') else { return Ok(vec![pattern.to_string()]) };
    let close = pattern[open..].find('}').map(|c| open + c).ok_or_else(|| bad("unclosed brace"))?;
    let inner = &pattern[open + 1..close];
    let (pre, post) = (&pattern[..open], &pattern[close + 1..]);
    let mut out = Vec::new();
    if let Some((a, b)) = inner.split_once("..") {
        let width = a.len();
        let (lo, hi): (u64, u64) = (a.parse().map_err(|_| bad("bad start"))?, b.parse().map_err(|_| bad("bad end"))?);
        if hi < lo || hi - lo > 10_000_000 {
            return Err(bad("empty or huge range"));
        }
        for i in lo..=hi {
            for rest in expand_braces(post)? {
                out.push(format!("{pre}{i:0width$}{rest}"));
            }
        }
    } else {
        for alt in inner.split(',') {
            for rest in expand_braces(post)? {
                out.push(format!("{pre}{alt}{rest}"));
            }
        }
    }
    Ok(out)
}

/// Runs `produce` on its own thread and yields what it sends, in order. The producer stops
/// (its sends fail) as soon as the consumer is dropped.
pub fn produced<F>(produce: F) -> impl Iterator<Item = Result<Input, Error>> + Send
where
    F: FnOnce(&Sender<Result<Input, Error>>) -> Result<(), Error> + Send + 'static,
{
    let (tx, rx) = bounded(64);
    std::thread::spawn(move || {
        if let Err(e) = produce(&tx) {
            let _ = tx.send(Err(e));
        }
    });
    rx.into_iter()
}

/// Opens a tar file for streaming.
pub fn open(path: &Path) -> Result<::tar::Archive<std::io::BufReader<std::fs::File>>, Error> {
    let f = std::fs::File::open(path).map_err(crate::error::io(path))?;
    Ok(::tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, f)))
}

/// Sorted `*.tar` files of a folder.
pub fn tars_in(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(crate::error::io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "tar") && p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_and_safety() {
        assert_eq!(expand_braces("a/{008..011}.tar").unwrap(), vec!["a/008.tar", "a/009.tar", "a/010.tar", "a/011.tar"]);
        assert_eq!(expand_braces("x.tar").unwrap(), vec!["x.tar"]);
        assert_eq!(expand_braces("{a,b}/{0..1}").unwrap(), vec!["a/0", "a/1", "b/0", "b/1"]);
        assert!(expand_braces("{0..").is_err());
        assert!(is_safe_name("00000/000000001.jpg"));
        assert!(!is_safe_name("/etc/passwd"));
        assert!(!is_safe_name("../x.jpg"));
        assert!(!is_safe_name("a/../../x.jpg"));
    }
}
