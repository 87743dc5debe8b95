//! The ingest crate's integration tests, one binary with a module per topic (as ripgrep does).

mod image_common;
mod resume_common;
mod t5_common;
mod encode;
mod image_ingest;
mod t5_loading;
mod t5_reference;
mod t5_tokenizer;
mod t5_xl;
mod text_ingest;
mod video_ingest;
