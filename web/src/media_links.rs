//! Signed, time-limited media links: `/api/v1/media/{id}/{variant}.{ext}?expires=&signature=`.
//!
//! The signature is HMAC-SHA256 over the id, the variant with its extension and the expiry,
//! under a key every role derives from the shared secret, so a link minted by one process is
//! served by any other and works in an `<img>` tag without a header. Expiries are rounded up
//! to a whole multiple of the lifetime (a link lives between one and two lifetimes), so the
//! same image keeps the same URL for a while and browsers can cache it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use domain::media::{Attachment, ImageType};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::dto::Media;

/// Which stored object of an upload a link names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Original,
    Thumbnail,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::Thumbnail => "thumbnail",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "original" => Some(Self::Original),
            "thumbnail" => Some(Self::Thumbnail),
            _ => None,
        }
    }
}

/// Why a link was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link's signature does not match")]
    BadSignature,
    #[error("the link has expired")]
    Expired,
}

#[derive(Clone)]
pub struct MediaLinks {
    key: [u8; 32],
    lifetime_secs: i64,
    /// Prepended to every path: empty for links relative to the API's origin, or a public
    /// base URL such as `https://chat.example.com`.
    public_base: String,
}

impl std::fmt::Debug for MediaLinks {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MediaLinks")
            .field("lifetime_secs", &self.lifetime_secs)
            .field("public_base", &self.public_base)
            .finish_non_exhaustive()
    }
}

impl MediaLinks {
    pub fn new(key: [u8; 32], lifetime_secs: u64, public_base: &str) -> Self {
        Self {
            key,
            lifetime_secs: i64::try_from(lifetime_secs.max(1)).unwrap_or(i64::MAX / 4),
            public_base: public_base.trim_end_matches('/').to_owned(),
        }
    }

    /// The `Media` representation of an attachment, with fresh links.
    pub fn media(&self, attachment: &Attachment, now: DateTime<Utc>) -> Media {
        let id = attachment.media_id.as_uuid();
        let expires = self.expiry(now);
        Media {
            id,
            content_type: attachment.image_type.content_type().to_owned(),
            size: attachment.size,
            width: i32::try_from(attachment.width).unwrap_or(i32::MAX),
            height: i32::try_from(attachment.height).unwrap_or(i32::MAX),
            url: self.url(id, Variant::Original, attachment.image_type, expires),
            thumbnail_url: self.url(id, Variant::Thumbnail, attachment.image_type, expires),
            created_at: attachment.uploaded_at,
        }
    }

    /// When a link minted at `now` expires (Unix seconds).
    pub fn expiry(&self, now: DateTime<Utc>) -> i64 {
        (now.timestamp().div_euclid(self.lifetime_secs) + 2) * self.lifetime_secs
    }

    pub fn url(&self, id: Uuid, variant: Variant, image_type: ImageType, expires: i64) -> String {
        let signature = self.signature(id, variant, image_type, expires);
        format!(
            "{}/api/v1/media/{id}/{}.{}?expires={expires}&signature={signature}",
            self.public_base,
            variant.as_str(),
            image_type.extension(),
        )
    }

    /// The signature of one link (URL-safe base64 of the HMAC).
    pub fn signature(
        &self,
        id: Uuid,
        variant: Variant,
        image_type: ImageType,
        expires: i64,
    ) -> String {
        URL_SAFE_NO_PAD.encode(
            self.mac(id, variant, image_type, expires)
                .finalize()
                .into_bytes(),
        )
    }

    /// Accepts a link's parts only when the signature matches (compared in constant time) and
    /// it has not expired. A bad signature is reported before expiry, so a tampered expiry
    /// never tells anything.
    pub fn verify(
        &self,
        id: Uuid,
        variant: Variant,
        image_type: ImageType,
        expires: i64,
        signature: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LinkError> {
        let given = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| LinkError::BadSignature)?;
        self.mac(id, variant, image_type, expires)
            .verify_slice(&given)
            .map_err(|_| LinkError::BadSignature)?;
        if expires <= now.timestamp() {
            return Err(LinkError::Expired);
        }
        Ok(())
    }

    fn mac(&self, id: Uuid, variant: Variant, image_type: ImageType, expires: i64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(
            format!(
                "{id}\n{}.{}\n{expires}",
                variant.as_str(),
                image_type.extension()
            )
            .as_bytes(),
        );
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> MediaLinks {
        MediaLinks::new([7; 32], 3600, "")
    }

    #[test]
    fn a_minted_link_verifies_until_it_expires() {
        let links = links();
        let id = Uuid::now_v7();
        let now = Utc::now();
        let expires = links.expiry(now);
        assert!(expires - now.timestamp() > 3600 && expires - now.timestamp() <= 7200);
        let signature = links.signature(id, Variant::Original, ImageType::Png, expires);
        assert_eq!(
            links.verify(
                id,
                Variant::Original,
                ImageType::Png,
                expires,
                &signature,
                now
            ),
            Ok(())
        );
        let later = DateTime::from_timestamp(expires, 0).unwrap_or(now);
        assert_eq!(
            links.verify(
                id,
                Variant::Original,
                ImageType::Png,
                expires,
                &signature,
                later
            ),
            Err(LinkError::Expired)
        );
    }

    #[test]
    fn any_changed_part_breaks_the_signature() {
        let links = links();
        let id = Uuid::now_v7();
        let now = Utc::now();
        let expires = links.expiry(now);
        let signature = links.signature(id, Variant::Original, ImageType::Png, expires);
        let refused = |id, variant, image_type, expires, signature: &str| {
            links.verify(id, variant, image_type, expires, signature, now)
                == Err(LinkError::BadSignature)
        };
        assert!(refused(
            Uuid::now_v7(),
            Variant::Original,
            ImageType::Png,
            expires,
            &signature
        ));
        assert!(refused(
            id,
            Variant::Thumbnail,
            ImageType::Png,
            expires,
            &signature
        ));
        assert!(refused(
            id,
            Variant::Original,
            ImageType::Gif,
            expires,
            &signature
        ));
        assert!(refused(
            id,
            Variant::Original,
            ImageType::Png,
            expires + 3600,
            &signature
        ));
        assert!(refused(
            id,
            Variant::Original,
            ImageType::Png,
            expires,
            "AAAA"
        ));
        assert!(refused(
            id,
            Variant::Original,
            ImageType::Png,
            expires,
            "not base64!"
        ));
        let other_key = MediaLinks::new([8; 32], 3600, "");
        assert_eq!(
            other_key.verify(
                id,
                Variant::Original,
                ImageType::Png,
                expires,
                &signature,
                now
            ),
            Err(LinkError::BadSignature)
        );
    }

    #[test]
    fn links_are_stable_within_a_lifetime_and_carry_the_public_base() {
        let links = MediaLinks::new([7; 32], 3600, "https://chat.example.com/");
        let id = Uuid::now_v7();
        let start = DateTime::from_timestamp(7200, 0).unwrap_or_default();
        let later = DateTime::from_timestamp(7200 + 3599, 0).unwrap_or_default();
        let url = |now| links.url(id, Variant::Thumbnail, ImageType::Jpeg, links.expiry(now));
        assert_eq!(url(start), url(later));
        assert!(url(start).starts_with(&format!(
            "https://chat.example.com/api/v1/media/{id}/thumbnail.jpg?expires=14400&signature="
        )));
    }
}
