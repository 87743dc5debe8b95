//! `verify`: recomputes file hashes and row checksums of a shard set and reports every
//! problem by shard file and row, carrying on past each one.

use crate::reader::{ShardReader, ShardSet};

/// One problem found, located as precisely as the damage allows.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Shard file as listed in the manifest.
    pub shard: String,
    /// Row within the shard, when one row is to blame.
    pub row: Option<u64>,
    /// Rows affected, when a whole row group could not be decoded.
    pub rows: Option<(u64, u64)>,
    pub id: Option<String>,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.shard)?;
        if let Some(r) = self.row {
            write!(f, " row {r}")?;
        }
        if let Some((a, b)) = self.rows {
            write!(f, " rows {a}..{b}")?;
        }
        if let Some(id) = &self.id {
            write!(f, " (id {id:?})")?;
        }
        write!(f, ": {}", self.what)
    }
}

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub shards: usize,
    pub rows_checked: u64,
    pub bytes_checked: u64,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every shard of `set`: presence, size and sha256 against the manifest, then each
/// row group's decoding and each row's checksum. `progress` is called after each shard.
pub fn verify(set: &ShardSet, mut progress: impl FnMut(usize)) -> VerifyReport {
    let mut report = VerifyReport::default();
    for (i, entry) in set.manifest.shards.iter().enumerate() {
        report.shards += 1;
        let problem = |row: Option<u64>, rows, id, what: String| Problem { shard: entry.file.clone(), row, rows, id, what };
        let path = set.dir.join(&entry.file);
        match crate::sha256_file(&path) {
            Err(e) => {
                report.problems.push(problem(None, None, None, format!("cannot read: {e}")));
                progress(i);
                continue;
            }
            Ok((bytes, sha)) => {
                report.bytes_checked += bytes;
                if bytes != entry.bytes {
                    report.problems.push(problem(None, None, None, format!("size {bytes}, manifest says {}", entry.bytes)));
                }
                if sha != entry.sha256 {
                    report.problems.push(problem(None, None, None, format!("sha256 {sha}, manifest says {}", entry.sha256)));
                }
            }
        }
        let reader = match ShardReader::open(&path) {
            Ok(r) => r,
            Err(e) => {
                report.problems.push(problem(None, None, None, format!("unreadable footer: {e}")));
                progress(i);
                continue;
            }
        };
        if reader.num_rows() != entry.rows {
            report.problems.push(problem(None, None, None, format!("{} rows, manifest says {}", reader.num_rows(), entry.rows)));
        }
        let kind = reader.layout().kind;
        let offsets = reader.row_group_offsets();
        let sizes = reader.row_group_rows();
        for g in 0..reader.num_row_groups() {
            match reader.read_records(g) {
                Err(e) => report.problems.push(problem(
                    None,
                    Some((offsets[g], offsets[g] + sizes[g])),
                    None,
                    format!("row group {g} does not decode: {e}"),
                )),
                Ok(rows) => {
                    for (k, (rec, sum)) in rows.into_iter().enumerate() {
                        report.rows_checked += 1;
                        if rec.checksum(kind) != sum {
                            report.problems.push(problem(
                                Some(offsets[g] + k as u64),
                                None,
                                Some(rec.id),
                                "row checksum mismatch".into(),
                            ));
                        }
                    }
                }
            }
        }
        progress(i);
    }
    report
}

