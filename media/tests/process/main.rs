//! `process` through its public API, on the in-memory upload corpus.

mod formats;
mod helpers;
mod hostile;
mod metadata;
mod thumbnails;
