//! `mdm-ingest`: turns datasets as users have them on disk (ImageNet, CC12M, WebVid) into
//! `mdm-shards`, with precomputed T5 text embeddings.
//!
//! - [`t5`]: FLAN-T5 text encoder (HF checkpoints, tokenizer, ragged caption embeddings).
//! - Images: [`image`] decode/resize/encode, [`sources`] (ImageNet, CC12M tars and tables),
//!   [`pipeline`] (bounded, ordered, resumable build; [`chunks`]: its chunk log, shared with
//!   `mdm embed`), [`settings`], [`rejects`], [`error`];
//! - Videos: [`video`] demux/decode/sample/encode through FFmpeg, the WebVid source in
//!   [`sources`], the same pipeline;
//! - [`encode`]: RGB frames → MP4 (H.264, else MPEG-4 part 2), for sampled clips;
//! - [`text`]: caption embeddings at ingest (`--t5`) and for existing shard sets (`mdm embed`).

pub mod t5;
pub mod chunks;
pub mod encode;
pub mod error;
pub mod image;
pub mod pipeline;
pub mod rejects;
pub mod settings;
pub mod sources;
pub mod text;
pub mod video;
