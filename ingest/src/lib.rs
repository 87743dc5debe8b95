//! `mdm-ingest`: turns datasets as users have them on disk (ImageNet, CC12M, WebVid) into
//! `mdm-shards`, with precomputed T5 text embeddings.
//!
//! - [`t5`]: FLAN-T5 text encoder (HF checkpoints, tokenizer, ragged caption embeddings).
//!
//! Status: the crate is laid out; sources, decode and embedding land with their issues.

pub mod t5;
