//! Versioned Arrow schemas of the three record kinds. A schema is a pure function of the
//! [`Layout`] (kind + stored resolutions), so its fingerprint is derived from the layout alone.
//!
//! Columns, in order (see `FORMAT.md` at the crate root for the full contract):
//!
//! | column | type | kinds |
//! |---|---|---|
//! | `id` | utf8 | all |
//! | `source` | utf8 | all |
//! | `source_sha256` | fixed_size_binary[32] | all |
//! | `width`, `height` | uint32 (original size) | all |
//! | `caption` | utf8, nullable | all |
//! | `label` | int32, nullable | image, text-image |
//! | `crop_box` | fixed_size_list<int32>[4], nullable (x, y, w, h in source pixels) | image, text-image |
//! | `jpeg_<R>` | binary, one per stored resolution, largest first | image, text-image |
//! | `clip`, `fps`, `duration` | uint32, float32, float64 | video |
//! | `timestamps` | list<float64> (seconds in the source) | video |
//! | `frames` | list<binary> (JPEG per frame) | video |
//! | `t5_tokens` | uint32, nullable | text-image, video |
//! | `t5_emb` | binary, nullable: `[t5_tokens, dim]` little-endian fp16 or bf16 | text-image, video |
//! | `checksum` | uint64: xxh3-64 of the row (see [`crate::Record::checksum`]) | all |

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the shard format; bumped on any change of columns or their meaning.
pub const FORMAT_VERSION: u32 = 1;

/// What a shard set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordKind {
    /// Images with an optional class label and caption (ImageNet).
    Image,
    /// Captioned images with T5 embeddings (CC12M).
    TextImage,
    /// Video clips as JPEG frames with caption and T5 embeddings (WebVid).
    Video,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Image => "image",
            RecordKind::TextImage => "text-image",
            RecordKind::Video => "video",
        }
    }

    pub fn has_text(self) -> bool {
        matches!(self, RecordKind::TextImage | RecordKind::Video)
    }
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RecordKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "image" => Ok(RecordKind::Image),
            "text-image" => Ok(RecordKind::TextImage),
            "video" => Ok(RecordKind::Video),
            other => Err(format!("unknown record kind {other:?} (image, text-image, video)")),
        }
    }
}

/// Kind plus stored square resolutions (largest first). Video stores one resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub kind: RecordKind,
    pub resolutions: Vec<u32>,
}

/// Name of the JPEG column holding resolution `res` (image kinds).
pub fn jpeg_column(res: u32) -> String {
    format!("jpeg_{res}")
}

impl Layout {
    pub fn new(kind: RecordKind, resolutions: Vec<u32>) -> Result<Self, String> {
        let layout = Layout { kind, resolutions };
        layout.validate()?;
        Ok(layout)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.resolutions.is_empty() {
            return Err("a layout needs at least one resolution".into());
        }
        if self.resolutions.contains(&0) {
            return Err("resolutions must be positive".into());
        }
        if !self.resolutions.windows(2).all(|w| w[0] > w[1]) {
            return Err(format!("resolutions must be distinct and largest first, got {:?}", self.resolutions));
        }
        if self.kind == RecordKind::Video && self.resolutions.len() != 1 {
            return Err("video shards store exactly one resolution".into());
        }
        Ok(())
    }

    /// The largest stored resolution.
    pub fn max_resolution(&self) -> u32 {
        self.resolutions[0]
    }

    /// The Arrow schema of this layout, with `mdm.*` metadata.
    pub fn schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("source", DataType::Utf8, false),
            Field::new("source_sha256", DataType::FixedSizeBinary(32), false),
            Field::new("width", DataType::UInt32, false),
            Field::new("height", DataType::UInt32, false),
            Field::new("caption", DataType::Utf8, true),
        ];
        match self.kind {
            RecordKind::Image | RecordKind::TextImage => {
                fields.push(Field::new("label", DataType::Int32, true));
                fields.push(Field::new(
                    "crop_box",
                    DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Int32, true)), 4),
                    true,
                ));
                for &r in &self.resolutions {
                    fields.push(Field::new(jpeg_column(r), DataType::Binary, false));
                }
            }
            RecordKind::Video => {
                fields.push(Field::new("clip", DataType::UInt32, false));
                fields.push(Field::new("fps", DataType::Float32, false));
                fields.push(Field::new("duration", DataType::Float64, false));
                fields.push(Field::new(
                    "timestamps",
                    DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
                    false,
                ));
                fields.push(Field::new(
                    "frames",
                    DataType::List(Arc::new(Field::new_list_field(DataType::Binary, true))),
                    false,
                ));
            }
        }
        if self.kind.has_text() {
            fields.push(Field::new("t5_tokens", DataType::UInt32, true));
            fields.push(Field::new("t5_emb", DataType::Binary, true));
        }
        fields.push(Field::new("checksum", DataType::UInt64, false));
        let metadata: std::collections::HashMap<String, String> = [
            ("mdm.format_version".to_string(), FORMAT_VERSION.to_string()),
            ("mdm.kind".to_string(), self.kind.as_str().to_string()),
            (
                "mdm.resolutions".to_string(),
                self.resolutions.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
            ),
        ]
        .into_iter()
        .collect();
        Arc::new(Schema::new_with_metadata(fields, metadata))
    }

    /// Recovers the layout from a schema's `mdm.*` metadata.
    pub fn from_schema(schema: &Schema) -> Result<Self, String> {
        let md = schema.metadata();
        let version: u32 = md
            .get("mdm.format_version")
            .ok_or("not an mdm shard (no mdm.format_version metadata)")?
            .parse()
            .map_err(|_| "bad mdm.format_version")?;
        if version != FORMAT_VERSION {
            return Err(format!("shard format version {version}, this build reads {FORMAT_VERSION}"));
        }
        let kind = md.get("mdm.kind").ok_or("no mdm.kind metadata")?.parse()?;
        let resolutions = md
            .get("mdm.resolutions")
            .ok_or("no mdm.resolutions metadata")?
            .split(',')
            .map(|s| s.parse::<u32>().map_err(|_| format!("bad resolution {s:?} in mdm.resolutions")))
            .collect::<Result<Vec<_>, _>>()?;
        Layout::new(kind, resolutions)
    }

    /// Short stable fingerprint of the schema: sha256 of the format version and layout.
    pub fn fingerprint(&self) -> String {
        let canon = format!(
            "mdm-shards/v{FORMAT_VERSION};kind={};resolutions={:?}",
            self.kind.as_str(),
            self.resolutions
        );
        hex::encode(&Sha256::digest(canon.as_bytes())[..8])
    }

    /// Columns whose bytes dominate a row (stored uncompressed, without statistics).
    pub fn payload_columns(&self) -> Vec<String> {
        let mut cols: Vec<String> = match self.kind {
            RecordKind::Video => vec!["frames".into()],
            _ => self.resolutions.iter().map(|&r| jpeg_column(r)).collect(),
        };
        if self.kind.has_text() {
            cols.push("t5_emb".into());
        }
        cols
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_round_trips_through_metadata() {
        for layout in [
            Layout::new(RecordKind::Image, vec![256, 64]).unwrap(),
            Layout::new(RecordKind::TextImage, vec![512]).unwrap(),
            Layout::new(RecordKind::Video, vec![256]).unwrap(),
        ] {
            let schema = layout.schema();
            assert_eq!(Layout::from_schema(&schema).unwrap(), layout);
            assert_eq!(schema.fields().last().unwrap().name(), "checksum");
        }
    }

    #[test]
    fn fingerprint_depends_on_layout() {
        let a = Layout::new(RecordKind::Image, vec![256, 64]).unwrap();
        let b = Layout::new(RecordKind::Image, vec![256]).unwrap();
        let c = Layout::new(RecordKind::TextImage, vec![256, 64]).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }

    #[test]
    fn bad_layouts_are_rejected() {
        assert!(Layout::new(RecordKind::Image, vec![]).is_err());
        assert!(Layout::new(RecordKind::Image, vec![64, 256]).is_err());
        assert!(Layout::new(RecordKind::Image, vec![64, 64]).is_err());
        assert!(Layout::new(RecordKind::Video, vec![256, 64]).is_err());
    }
}
