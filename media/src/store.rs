//! Where uploads live: any `object_store` backend. A local directory by default; an S3 bucket
//! (AWS, MinIO, any S3-compatible service) when the location is `s3://bucket[/prefix]`, with
//! the endpoint and credentials from the standard `AWS_*` variables, which the configuration
//! reads and passes in.
//!
//! Each upload is two immutable objects: `media/{id}/original.{ext}` and
//! `media/{id}/thumbnail.{ext}`.

use anyhow::Context;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::sync::Arc;
use uuid::Uuid;

use domain::media::ImageType;

/// A stored object being read: its size and its bytes as a stream.
pub struct StoredObject {
    pub size: u64,
    pub bytes: BoxStream<'static, std::io::Result<Bytes>>,
}

#[derive(Clone)]
pub struct MediaStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl std::fmt::Debug for MediaStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "MediaStore({}, {})", self.store, self.prefix)
    }
}

impl MediaStore {
    /// `location` is a directory (`./data/media`, `file:///var/lib/chat/media`) or an
    /// `s3://bucket[/prefix]` URL.
    ///
    /// `s3_options` are `AWS_*` variables by name (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, …);
    /// names the S3 client does not know are ignored.
    pub fn open(location: &str, s3_options: &[(String, String)]) -> anyhow::Result<Self> {
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let mut builder = AmazonS3Builder::new().with_bucket_name(bucket);
            for (key, value) in s3_options {
                if let Ok(key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                    builder = builder.with_config(key, value);
                }
            }
            let store = builder
                .build()
                .with_context(|| format!("CHAT_MEDIA_STORE: configuring S3 bucket {bucket}"))?;
            return Ok(Self {
                store: Arc::new(store),
                prefix: Path::from(prefix),
            });
        }
        let directory = location.strip_prefix("file://").unwrap_or(location);
        std::fs::create_dir_all(directory)
            .with_context(|| format!("CHAT_MEDIA_STORE: creating directory {directory}"))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(directory)
            .with_context(|| format!("CHAT_MEDIA_STORE: opening directory {directory}"))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: Path::default(),
        })
    }

    fn path(&self, id: Uuid, variant: &str, image_type: ImageType) -> Path {
        let name = format!("{variant}.{}", image_type.extension());
        let mut parts: Vec<String> = self
            .prefix
            .parts()
            .map(|part| part.as_ref().to_owned())
            .collect();
        parts.extend(["media".to_owned(), id.to_string(), name]);
        Path::from_iter(parts)
    }

    /// Writes one object (objects are never overwritten with other bytes: ids are fresh).
    pub async fn put(
        &self,
        id: Uuid,
        variant: &str,
        image_type: ImageType,
        bytes: Vec<u8>,
    ) -> anyhow::Result<()> {
        let path = self.path(id, variant, image_type);
        self.store
            .put(&path, PutPayload::from(Bytes::from(bytes)))
            .await
            .with_context(|| format!("storing {path}"))?;
        Ok(())
    }

    /// Opens one object; `None` when it does not exist.
    pub async fn get(
        &self,
        id: Uuid,
        variant: &str,
        image_type: ImageType,
    ) -> anyhow::Result<Option<StoredObject>> {
        let path = self.path(id, variant, image_type);
        match self.store.get(&path).await {
            Ok(result) => {
                let size = result.meta.size;
                let bytes = result.into_stream().map_err(std::io::Error::other).boxed();
                Ok(Some(StoredObject { size, bytes }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(error).with_context(|| format!("reading {path}")),
        }
    }
}
