//! Rejection reasons and the `rejects.jsonl` record: every input that is not written is
//! listed with its source, a reason from a fixed vocabulary and a human-readable detail.

use serde::{Deserialize, Serialize};

/// Why an input was not written. The kebab-case name is what `rejects.jsonl` and the
/// manifest's `stats.rejected` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectReason {
    /// Zero-byte file or member.
    Empty,
    /// Bytes that are no known image format.
    NotAnImage,
    /// A real image format this pipeline does not decode (GIF, TIFF, HEIF, ...).
    UnsupportedFormat,
    /// Truncated or damaged image data.
    Corrupt,
    /// Header announces more pixels than `max_pixels`.
    DecompressionBomb,
    /// Shortest side below `min_side` (or below the resolution with `small = "reject"`).
    TooSmall,
    /// Caption missing, not UTF-8 or empty after whitespace normalisation.
    BadCaption,
    /// Caption over the T5 token limit under `--long-captions reject`.
    LongCaption,
    /// A url with no local file.
    NotDownloaded,
    /// Tar member with an absolute or `..` path.
    UnsafePath,
    /// ImageNet validation image absent from the label file.
    NoLabel,
    /// Sample without an image (tar key with only caption/json members, table row without path).
    MissingImage,
    /// The file or member could not be read.
    ReadError,
    /// Sample without a video (tar key with only caption/json members).
    MissingVideo,
    /// A container without a video stream (audio-only, data-only).
    NoVideoStream,
    /// A video shorter than one clip under `short = "reject"`.
    TooShort,
    /// A video whose frames end before its declared duration (cut-off download).
    Truncated,
    /// A video that took longer than the per-video time limit.
    Timeout,
    /// An id seen earlier in the same source (the first one is kept).
    Duplicate,
    /// Resize or encode failed (should not happen).
    Internal,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Empty => "empty",
            RejectReason::NotAnImage => "not-an-image",
            RejectReason::UnsupportedFormat => "unsupported-format",
            RejectReason::Corrupt => "corrupt",
            RejectReason::DecompressionBomb => "decompression-bomb",
            RejectReason::TooSmall => "too-small",
            RejectReason::BadCaption => "bad-caption",
            RejectReason::LongCaption => "long-caption",
            RejectReason::NotDownloaded => "not-downloaded",
            RejectReason::UnsafePath => "unsafe-path",
            RejectReason::NoLabel => "no-label",
            RejectReason::MissingImage => "missing-image",
            RejectReason::ReadError => "read-error",
            RejectReason::MissingVideo => "missing-video",
            RejectReason::NoVideoStream => "no-video-stream",
            RejectReason::TooShort => "too-short",
            RejectReason::Truncated => "truncated",
            RejectReason::Timeout => "timeout",
            RejectReason::Duplicate => "duplicate",
            RejectReason::Internal => "internal",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason with its detail, before it is tied to a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    pub detail: String,
}

impl Reject {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Reject { reason, detail: detail.into() }
    }
}

/// One line of `rejects.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectRecord {
    /// Source path, `TAR:MEMBER`, or `TABLE:row N`.
    pub source: String,
    pub id: String,
    pub reason: RejectReason,
    pub detail: String,
}

/// Whitespace-normalises a caption: valid UTF-8, runs of whitespace to one space, trimmed,
/// no control characters, not empty.
pub fn normalize_caption(bytes: &[u8]) -> Result<String, Reject> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Reject::new(RejectReason::BadCaption, format!("not UTF-8: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.is_empty() {
        return Err(Reject::new(RejectReason::BadCaption, "empty caption"));
    }
    if let Some(c) = joined.chars().find(|c| c.is_control()) {
        return Err(Reject::new(RejectReason::BadCaption, format!("control character U+{:04X}", c as u32)));
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions() {
        assert_eq!(normalize_caption(b"  a\tcat \n on\r\na mat ").unwrap(), "a cat on a mat");
        assert_eq!(normalize_caption(b" \n ").unwrap_err().reason, RejectReason::BadCaption);
        assert_eq!(normalize_caption(&[0x61, 0xff, 0x62]).unwrap_err().reason, RejectReason::BadCaption);
        assert_eq!(normalize_caption(b"a\x07b").unwrap_err().reason, RejectReason::BadCaption);
        let s = serde_json::to_string(&RejectReason::DecompressionBomb).unwrap();
        assert_eq!(s, format!("\"{}\"", RejectReason::DecompressionBomb.as_str()));
    }
}
