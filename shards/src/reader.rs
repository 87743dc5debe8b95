//! Reading: [`ShardSet`] opens a manifest, [`ShardReader`] one shard file with column
//! projection and random access by row group.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use crate::batch::batch_to_records;
use crate::error::{arrow_err, io, pq, Error, Result};
use crate::manifest::{Manifest, TextEncoderInfo, MANIFEST_FILE};
use crate::record::{EmbeddingDType, Record};
use crate::schema::Layout;

/// A shard set: its manifest and the folder its shard paths are relative to.
#[derive(Debug, Clone)]
pub struct ShardSet {
    pub dir: PathBuf,
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
}

impl ShardSet {
    /// Opens `path`: a folder holding `manifest.json`, or a manifest file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let manifest_path = if path.is_dir() { path.join(MANIFEST_FILE) } else { path.to_path_buf() };
        if !manifest_path.exists() {
            return Err(Error::Invalid {
                path: manifest_path,
                msg: "no manifest: not a shard set, or its build did not finish".into(),
            });
        }
        let manifest = Manifest::read(&manifest_path)?;
        let dir = manifest_path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(ShardSet { dir, manifest_path, manifest })
    }

    pub fn shard_path(&self, index: usize) -> Option<PathBuf> {
        self.manifest.shards.get(index).map(|s| self.dir.join(&s.file))
    }

    /// Opens shard `index` of the manifest.
    pub fn reader(&self, index: usize) -> Result<ShardReader> {
        let path = self.shard_path(index).ok_or_else(|| Error::Invalid {
            path: self.manifest_path.clone(),
            msg: format!("no shard {index} ({} listed)", self.manifest.shards.len()),
        })?;
        let reader = ShardReader::open(&path)?;
        if reader.layout != self.manifest.layout() {
            return Err(Error::Invalid { path, msg: "shard layout differs from its manifest's".into() });
        }
        Ok(reader)
    }

    /// Every record of the set, shard by shard.
    pub fn records(&self) -> impl Iterator<Item = Result<Record>> + '_ {
        (0..self.manifest.shards.len()).flat_map(move |i| -> Box<dyn Iterator<Item = Result<Record>>> {
            match self.reader(i) {
                Ok(r) => Box::new(r.into_records()),
                Err(e) => Box::new(std::iter::once(Err(e))),
            }
        })
    }
}

/// One shard file.
pub struct ShardReader {
    path: PathBuf,
    file: File,
    meta: ArrowReaderMetadata,
    layout: Layout,
    text_encoder: Option<TextEncoderInfo>,
}

impl ShardReader {
    /// Opens a shard file and reads its footer.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(io(&path))?;
        let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(pq(&path))?;
        let schema = meta.schema();
        let layout = Layout::from_schema(schema).map_err(|msg| Error::Invalid { path: path.clone(), msg })?;
        let text_encoder = match schema.metadata().get("mdm.text_encoder") {
            Some(json) => Some(
                serde_json::from_str(json).map_err(|source| Error::ManifestJson { path: path.clone(), source })?,
            ),
            None => None,
        };
        Ok(ShardReader { path, file, meta, layout, text_encoder })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn text_encoder(&self) -> Option<&TextEncoderInfo> {
        self.text_encoder.as_ref()
    }

    pub fn num_rows(&self) -> u64 {
        self.meta.metadata().file_metadata().num_rows() as u64
    }

    pub fn num_row_groups(&self) -> usize {
        self.meta.metadata().num_row_groups()
    }

    /// Rows in each row group.
    pub fn row_group_rows(&self) -> Vec<u64> {
        self.meta.metadata().row_groups().iter().map(|g| g.num_rows() as u64).collect()
    }

    /// First shard row of each row group.
    pub fn row_group_offsets(&self) -> Vec<u64> {
        let mut acc = 0;
        self.row_group_rows()
            .into_iter()
            .map(|n| {
                let start = acc;
                acc += n;
                start
            })
            .collect()
    }

    /// Reads row group `index`, only `columns` when given (by name).
    pub fn read_row_group(&self, index: usize, columns: Option<&[&str]>) -> Result<RecordBatch> {
        if index >= self.num_row_groups() {
            return Err(Error::Invalid {
                path: self.path.clone(),
                msg: format!("no row group {index} ({} in file)", self.num_row_groups()),
            });
        }
        let file = self.file.try_clone().map_err(io(&self.path))?;
        let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.meta.clone())
            .with_row_groups(vec![index])
            .with_batch_size(usize::MAX >> 1);
        if let Some(cols) = columns {
            let schema = self.meta.schema();
            let mut roots = Vec::with_capacity(cols.len());
            for c in cols {
                roots.push(schema.index_of(c).map_err(arrow_err(&self.path))?);
            }
            let mask = ProjectionMask::roots(self.meta.parquet_schema(), roots);
            builder = builder.with_projection(mask);
        }
        let reader = builder.build().map_err(pq(&self.path))?;
        let batches = reader.collect::<std::result::Result<Vec<_>, _>>().map_err(arrow_err(&self.path))?;
        let schema = batches.first().map(|b| b.schema()).unwrap_or_else(|| self.meta.schema().clone());
        arrow::compute::concat_batches(&schema, &batches).map_err(arrow_err(&self.path))
    }

    /// Records of row group `index`, each with the checksum stored for it.
    pub fn read_records(&self, index: usize) -> Result<Vec<(Record, u64)>> {
        let batch = self.read_row_group(index, None)?;
        let first_row = self.row_group_offsets()[index];
        let dtype = self.text_encoder.as_ref().map_or(EmbeddingDType::F16, |e| e.dtype);
        batch_to_records(&self.layout, &batch, dtype, &self.path, first_row)
    }

    /// Every record of the file in order; a checksum mismatch is an error naming the row.
    pub fn into_records(self) -> impl Iterator<Item = Result<Record>> {
        let groups = self.num_row_groups();
        let kind = self.layout.kind;
        (0..groups).flat_map(move |g| -> Box<dyn Iterator<Item = Result<Record>>> {
            match self.read_records(g) {
                Err(e) => Box::new(std::iter::once(Err(e))),
                Ok(rows) => {
                    let first = self.row_group_offsets()[g];
                    let path = self.path.clone();
                    Box::new(rows.into_iter().enumerate().map(move |(i, (r, sum))| {
                        if r.checksum(kind) == sum {
                            Ok(r)
                        } else {
                            Err(Error::Row { path: path.clone(), row: first + i as u64, msg: format!("checksum mismatch (id {:?})", r.id) })
                        }
                    }))
                }
            }
        })
    }
}
