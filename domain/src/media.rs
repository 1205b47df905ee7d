//! The `Media` aggregate: one uploaded image, written once and never changed.
//!
//! Validation, re-encoding and storage happen before the command (in the `media` crate and
//! the upload route); the aggregate records what was stored: its owner, the SHA-256 of the
//! stored bytes, the type, the size and the dimensions of the image and of its thumbnail.
//! Messages carry an [`Attachment`] copy of these facts, so a message event alone says what
//! it showed.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::{MediaId, UserId};

/// The image types an upload may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageType {
    #[serde(rename = "image/png")]
    Png,
    #[serde(rename = "image/jpeg")]
    Jpeg,
    #[serde(rename = "image/gif")]
    Gif,
    #[serde(rename = "image/webp")]
    Webp,
}

impl ImageType {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Gif => "image/gif",
            Self::Webp => "image/webp",
        }
    }

    /// The file extension the stored objects and links use.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Gif => "gif",
            Self::Webp => "webp",
        }
    }

    pub fn from_content_type(content_type: &str) -> Option<Self> {
        [Self::Png, Self::Jpeg, Self::Gif, Self::Webp]
            .into_iter()
            .find(|image_type| image_type.content_type() == content_type)
    }

    pub fn from_extension(extension: &str) -> Option<Self> {
        match extension {
            "png" => Some(Self::Png),
            "jpg" => Some(Self::Jpeg),
            "gif" => Some(Self::Gif),
            "webp" => Some(Self::Webp),
            _ => None,
        }
    }
}

/// An image as stored: bytes and pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredImage {
    pub size: i64,
    pub width: u32,
    pub height: u32,
}

/// What a message records of each image it carries (media never change, so the copy stays true).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub media_id: MediaId,
    pub image_type: ImageType,
    pub size: i64,
    pub width: u32,
    pub height: u32,
    pub uploaded_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaCommand {
    Upload {
        media_id: MediaId,
        owner_id: UserId,
        image_type: ImageType,
        /// Hex SHA-256 of the stored (re-encoded) image.
        content_hash: String,
        image: StoredImage,
        thumbnail: StoredImage,
        at: DateTime<Utc>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaEvent {
    Uploaded {
        media_id: MediaId,
        owner_id: UserId,
        image_type: ImageType,
        content_hash: String,
        image: StoredImage,
        thumbnail: StoredImage,
        at: DateTime<Utc>,
    },
}

impl MediaEvent {
    /// Every event type of this aggregate with its current version; pinned by a test.
    pub const TYPES: &'static [(&'static str, &'static str)] = &[("MediaUploaded", "1.0")];
}

impl DomainEvent for MediaEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Uploaded { .. } => "MediaUploaded".to_owned(),
        }
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("that media id is already taken")]
    AlreadyUploaded,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    pub id: Option<MediaId>,
    pub owner_id: Option<UserId>,
    pub image_type: Option<ImageType>,
    pub content_hash: Option<String>,
    pub image: Option<StoredImage>,
    pub thumbnail: Option<StoredImage>,
    pub uploaded_at: Option<DateTime<Utc>>,
}

impl Media {
    /// What a message carrying this image records; `None` before the upload.
    pub fn attachment(&self) -> Option<Attachment> {
        let image = self.image?;
        Some(Attachment {
            media_id: self.id?,
            image_type: self.image_type?,
            size: image.size,
            width: image.width,
            height: image.height,
            uploaded_at: self.uploaded_at?,
        })
    }
}

impl Aggregate for Media {
    const TYPE: &'static str = "media";
    type Command = MediaCommand;
    type Event = MediaEvent;
    type Error = MediaError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            MediaCommand::Upload {
                media_id,
                owner_id,
                image_type,
                content_hash,
                image,
                thumbnail,
                at,
            } => {
                if self.id.is_some() {
                    return Err(MediaError::AlreadyUploaded);
                }
                let event = MediaEvent::Uploaded {
                    media_id,
                    owner_id,
                    image_type,
                    content_hash,
                    image,
                    thumbnail,
                    at,
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            MediaEvent::Uploaded {
                media_id,
                owner_id,
                image_type,
                content_hash,
                image,
                thumbnail,
                at,
            } => {
                self.id = Some(media_id);
                self.owner_id = Some(owner_id);
                self.image_type = Some(image_type);
                self.content_hash = Some(content_hash);
                self.image = Some(image);
                self.thumbnail = Some(thumbnail);
                self.uploaded_at = Some(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    fn upload(media_id: MediaId, owner_id: UserId) -> MediaCommand {
        MediaCommand::Upload {
            media_id,
            owner_id,
            image_type: ImageType::Jpeg,
            content_hash: "ab".repeat(32),
            image: StoredImage {
                size: 2048,
                width: 640,
                height: 480,
            },
            thumbnail: StoredImage {
                size: 512,
                width: 320,
                height: 240,
            },
            at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    fn uploaded(command: MediaCommand) -> MediaEvent {
        let MediaCommand::Upload {
            media_id,
            owner_id,
            image_type,
            content_hash,
            image,
            thumbnail,
            at,
        } = command;
        MediaEvent::Uploaded {
            media_id,
            owner_id,
            image_type,
            content_hash,
            image,
            thumbnail,
            at,
        }
    }

    #[test]
    fn an_upload_records_the_stored_image() {
        let command = upload(MediaId::new(), UserId::new());
        TestFramework::<Media>::with(())
            .given_no_previous_events()
            .when(command.clone())
            .then_expect_events(vec![uploaded(command)]);
    }

    #[test]
    fn a_media_id_is_used_once() {
        let media_id = MediaId::new();
        TestFramework::<Media>::with(())
            .given(vec![uploaded(upload(media_id, UserId::new()))])
            .when(upload(media_id, UserId::new()))
            .then_expect_error(MediaError::AlreadyUploaded);
    }

    #[test]
    fn the_attachment_copies_the_stored_facts() {
        let owner = UserId::new();
        let media_id = MediaId::new();
        let mut media = Media::default();
        assert_eq!(media.attachment(), None);
        media.apply(uploaded(upload(media_id, owner)));
        assert_eq!(
            media.attachment(),
            Some(Attachment {
                media_id,
                image_type: ImageType::Jpeg,
                size: 2048,
                width: 640,
                height: 480,
                uploaded_at: DateTime::<Utc>::UNIX_EPOCH,
            })
        );
        assert_eq!(ImageType::from_extension("jpg"), Some(ImageType::Jpeg));
        assert_eq!(ImageType::from_extension("svg"), None);
        assert_eq!(
            ImageType::from_content_type("image/webp"),
            Some(ImageType::Webp)
        );
        assert_eq!(ImageType::from_content_type("image/svg+xml"), None);
    }
}
