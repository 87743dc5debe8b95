//! `mdm-loader`: streams `mdm-shards` into typed, mixed-resolution training batches with an
//! exactly-once, resumable sample order.
//!
//! Status: the crate is laid out; the loader lands with its issue.
