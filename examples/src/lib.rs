//! Examples for embedding media-core; see `embed.rs`.
