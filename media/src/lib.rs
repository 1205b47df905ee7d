//! Validation, re-encoding and thumbnailing of uploaded images (pure CPU work), and the store
//! the images live in (`store`: [`MediaStore`], the crate's only I/O).
//!
//! [`process`] is the one entry point (`process`, with `animation` for GIFs, whose frames are
//! kept). It decides the format from the bytes (`format`: the four accepted formats and
//! [`sniff`]); walks the format's structure so that a truncated file, or text behind an image
//! signature, is refused before anything reads it (`structure`: one walk per format); reads the
//! declared dimensions from the header and refuses what is beyond the [`Limits`] before decoding
//! anything (`rejection`: [`Limits`] and the [`Rejection`] reasons); decodes under the `image`
//! crate's allocation limits; turns photos upright; and re-encodes in the uploaded format, so
//! that metadata and appended bytes do not survive, with a thumbnail. The `corpus` module, behind
//! the `corpus` feature, builds the upload test corpus in memory for tests here and elsewhere.
//!
//! Everything here is synchronous and CPU-heavy: callers run it on a blocking thread.

mod animation;
#[cfg(feature = "corpus")]
pub mod corpus;
mod format;
mod process;
mod rejection;
mod store;
mod structure;

pub use format::{ImageFormat, sniff};
pub use process::{Processed, THUMBNAIL_LONGEST_SIDE, dimensions, process};
pub use rejection::{Limits, Rejection};
pub use store::{MediaStore, StoredObject};
