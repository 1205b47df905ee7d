//! The `Account` aggregate: registration, login sessions and the public profile.
//!
//! Secrets never enter the event log: the password hash and the refresh tokens live in the
//! command side's credential tables, so the audit log can be shown in full without leaking
//! them. The events here record *that* a login, refresh or logout happened.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{SessionId, UserId};

/// A username: 3 to 32 of `a-z 0-9 _ .`, compared case-insensitively. Upper-case letters are
/// accepted and folded to lower case, so `Alice` registers `alice`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        let folded = text.to_ascii_lowercase();
        let length = folded.chars().count();
        if !(3..=32).contains(&length) {
            return Err(ValueError::new(
                "invalid_username",
                "username must be 3 to 32 characters",
            ));
        }
        let allowed = |character: char| {
            character.is_ascii_lowercase()
                || character.is_ascii_digit()
                || character == '_'
                || character == '.'
        };
        if !folded.chars().all(allowed) {
            return Err(ValueError::new(
                "invalid_username",
                "username may contain only a-z, 0-9, '_' and '.'",
            ));
        }
        Ok(Self(folded))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, checked for shape (one `@`, a non-empty local part, a dotted domain,
/// no spaces). Uniqueness compares the lower-cased form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        let trimmed = text.trim();
        let invalid = || ValueError::new("invalid_email", "email is not a valid address");
        if trimmed.len() > 254 || trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let (local, domain) = trimmed.split_once('@').ok_or_else(invalid)?;
        let domain_ok = !domain.contains('@')
            && domain.contains('.')
            && domain
                .split('.')
                .all(|label| !label.is_empty() && label.len() <= 63)
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '.');
        if local.is_empty() || local.len() > 64 || !domain_ok {
            return Err(invalid());
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form used for uniqueness and lookups.
    pub fn normalized(&self) -> String {
        self.0.to_lowercase()
    }
}

/// A display name: 1 to 64 characters after trimming, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        let trimmed = text.trim();
        let length = trimmed.chars().count();
        if !(1..=64).contains(&length) || trimmed.chars().any(char::is_control) {
            return Err(ValueError::new(
                "invalid_display_name",
                "display_name must be 1 to 64 printable characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A profile text: up to 500 characters after trimming. Line breaks are allowed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bio(String);

impl Bio {
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        let trimmed = text.trim();
        let bad_control = trimmed
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t');
        if trimmed.chars().count() > 500 || bad_control {
            return Err(ValueError::new(
                "invalid_bio",
                "bio must be at most 500 characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A plain-text password as typed: 8 to 128 characters. It is only ever hashed, never stored.
pub struct Password(String);

impl Password {
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        let length = text.chars().count();
        if !(8..=128).contains(&length) {
            return Err(ValueError::new(
                "invalid_password",
                "password must be 8 to 128 characters",
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Password(<redacted>)")
    }
}

/// A value that failed to parse, with a stable machine `code` and a human message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValueError {
    pub code: &'static str,
    pub message: String,
}

impl ValueError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What may change in a profile. `None` leaves a field as it is; for the nullable fields,
/// `Some(None)` clears it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProfileChanges {
    pub display_name: Option<DisplayName>,
    pub bio: Option<Option<Bio>>,
    pub avatar_media_id: Option<Option<Uuid>>,
    pub email: Option<Email>,
}

#[derive(Clone, Debug)]
pub enum AccountCommand {
    Register {
        user_id: UserId,
        username: Username,
        email: Email,
        display_name: Option<DisplayName>,
        at: DateTime<Utc>,
    },
    RecordLogin {
        session_id: SessionId,
        at: DateTime<Utc>,
    },
    RecordFailedLogin {
        at: DateTime<Utc>,
    },
    RecordRefresh {
        session_id: SessionId,
    },
    /// A spent refresh token was presented again: the whole session is revoked.
    RecordRefreshReuse {
        session_id: SessionId,
    },
    Logout {
        session_id: SessionId,
        all_devices: bool,
    },
    UpdateProfile {
        changes: ProfileChanges,
        at: DateTime<Utc>,
    },
    ChangePassword {
        kept_session_id: SessionId,
        at: DateTime<Utc>,
    },
    /// Grants (`admin: true`) or revokes the `admin` role; `by` names who ran it.
    SetAdmin {
        admin: bool,
        by: String,
        at: DateTime<Utc>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    Registered {
        user_id: UserId,
        username: Username,
        email: Email,
        display_name: DisplayName,
        registered_at: DateTime<Utc>,
    },
    LoggedIn {
        session_id: SessionId,
        at: DateTime<Utc>,
    },
    LoginFailed {
        at: DateTime<Utc>,
    },
    SessionRefreshed {
        session_id: SessionId,
    },
    RefreshTokenReused {
        session_id: SessionId,
    },
    LoggedOut {
        session_id: SessionId,
        all_devices: bool,
    },
    /// The profile after the change, in full, so a projection needs no earlier state.
    ProfileUpdated {
        display_name: DisplayName,
        bio: Option<Bio>,
        avatar_media_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
    EmailChanged {
        email: Email,
        at: DateTime<Utc>,
    },
    PasswordChanged {
        kept_session_id: SessionId,
        at: DateTime<Utc>,
    },
    /// `by` is who ran the grant (an operator at a terminal: `cli:user@host`).
    AdminGranted {
        by: String,
        at: DateTime<Utc>,
    },
    AdminRevoked {
        by: String,
        at: DateTime<Utc>,
    },
}

impl AccountEvent {
    /// Every event type of this aggregate with its current version; pinned by a test.
    pub const TYPES: &'static [(&'static str, &'static str)] = &[
        ("AccountRegistered", "1.0"),
        ("AccountLoggedIn", "1.0"),
        ("AccountLoginFailed", "1.0"),
        ("AccountSessionRefreshed", "1.0"),
        ("AccountRefreshTokenReused", "1.0"),
        ("AccountLoggedOut", "1.0"),
        ("AccountProfileUpdated", "1.0"),
        ("AccountEmailChanged", "1.0"),
        ("AccountPasswordChanged", "1.0"),
        ("AccountAdminGranted", "1.0"),
        ("AccountAdminRevoked", "1.0"),
    ];
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        let name = match self {
            Self::Registered { .. } => "AccountRegistered",
            Self::LoggedIn { .. } => "AccountLoggedIn",
            Self::LoginFailed { .. } => "AccountLoginFailed",
            Self::SessionRefreshed { .. } => "AccountSessionRefreshed",
            Self::RefreshTokenReused { .. } => "AccountRefreshTokenReused",
            Self::LoggedOut { .. } => "AccountLoggedOut",
            Self::ProfileUpdated { .. } => "AccountProfileUpdated",
            Self::EmailChanged { .. } => "AccountEmailChanged",
            Self::PasswordChanged { .. } => "AccountPasswordChanged",
            Self::AdminGranted { .. } => "AccountAdminGranted",
            Self::AdminRevoked { .. } => "AccountAdminRevoked",
        };
        name.to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("the account already exists")]
    AlreadyRegistered,
    #[error("the account does not exist")]
    NotRegistered,
}

/// The state a decision needs: the public profile of one account.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub user_id: Option<UserId>,
    pub username: Option<Username>,
    pub email: Option<Email>,
    pub display_name: Option<DisplayName>,
    pub bio: Option<Bio>,
    pub avatar_media_id: Option<Uuid>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    /// Holds the `admin` role (audit routes).
    #[serde(default)]
    pub admin: bool,
}

impl Account {
    pub fn is_registered(&self) -> bool {
        self.user_id.is_some()
    }

    async fn emit(&mut self, sink: &EventSink<Self>, event: AccountEvent) {
        sink.write(event, self).await;
    }

    fn require_registered(&self) -> Result<(), AccountError> {
        if self.is_registered() {
            Ok(())
        } else {
            Err(AccountError::NotRegistered)
        }
    }
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        if let AccountCommand::Register {
            user_id,
            username,
            email,
            display_name,
            at,
        } = command
        {
            if self.is_registered() {
                return Err(AccountError::AlreadyRegistered);
            }
            // Without a display name the username stands in, as in most messengers.
            let display_name = match display_name {
                Some(name) => name,
                None => DisplayName(username.as_str().to_owned()),
            };
            let event = AccountEvent::Registered {
                user_id,
                username,
                email,
                display_name,
                registered_at: at,
            };
            self.emit(sink, event).await;
            return Ok(());
        }
        self.require_registered()?;
        let event = match command {
            AccountCommand::Register { .. } => return Err(AccountError::AlreadyRegistered),
            AccountCommand::RecordLogin { session_id, at } => {
                AccountEvent::LoggedIn { session_id, at }
            }
            AccountCommand::RecordFailedLogin { at } => AccountEvent::LoginFailed { at },
            AccountCommand::RecordRefresh { session_id } => {
                AccountEvent::SessionRefreshed { session_id }
            }
            AccountCommand::RecordRefreshReuse { session_id } => {
                AccountEvent::RefreshTokenReused { session_id }
            }
            AccountCommand::Logout {
                session_id,
                all_devices,
            } => AccountEvent::LoggedOut {
                session_id,
                all_devices,
            },
            AccountCommand::ChangePassword {
                kept_session_id,
                at,
            } => AccountEvent::PasswordChanged {
                kept_session_id,
                at,
            },
            AccountCommand::UpdateProfile { changes, at } => {
                return self.update_profile(changes, at, sink).await;
            }
            // Granting what is already held, or revoking what is not, writes nothing.
            AccountCommand::SetAdmin { admin, .. } if admin == self.admin => return Ok(()),
            AccountCommand::SetAdmin {
                admin: true,
                by,
                at,
            } => AccountEvent::AdminGranted { by, at },
            AccountCommand::SetAdmin {
                admin: false,
                by,
                at,
            } => AccountEvent::AdminRevoked { by, at },
        };
        self.emit(sink, event).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AccountEvent::Registered {
                user_id,
                username,
                email,
                display_name,
                registered_at,
            } => {
                self.user_id = Some(user_id);
                self.username = Some(username);
                self.email = Some(email);
                self.display_name = Some(display_name);
                self.created_at = Some(registered_at);
                self.updated_at = Some(registered_at);
            }
            AccountEvent::ProfileUpdated {
                display_name,
                bio,
                avatar_media_id,
                at,
            } => {
                self.display_name = Some(display_name);
                self.bio = bio;
                self.avatar_media_id = avatar_media_id;
                self.updated_at = Some(at);
            }
            AccountEvent::EmailChanged { email, at } => {
                self.email = Some(email);
                self.updated_at = Some(at);
            }
            AccountEvent::LoggedIn { .. }
            | AccountEvent::LoginFailed { .. }
            | AccountEvent::SessionRefreshed { .. }
            | AccountEvent::RefreshTokenReused { .. }
            | AccountEvent::LoggedOut { .. }
            | AccountEvent::PasswordChanged { .. } => {}
            AccountEvent::AdminGranted { .. } => self.admin = true,
            AccountEvent::AdminRevoked { .. } => self.admin = false,
        }
    }
}

impl Account {
    /// Emits only what really changes: a PATCH that changes nothing writes no event.
    async fn update_profile(
        &mut self,
        changes: ProfileChanges,
        at: DateTime<Utc>,
        sink: &EventSink<Self>,
    ) -> Result<(), AccountError> {
        let display_name = changes
            .display_name
            .or_else(|| self.display_name.clone())
            .ok_or(AccountError::NotRegistered)?;
        let bio = changes.bio.unwrap_or_else(|| self.bio.clone());
        let avatar_media_id = changes.avatar_media_id.unwrap_or(self.avatar_media_id);
        let profile_changed = Some(&display_name) != self.display_name.as_ref()
            || bio != self.bio
            || avatar_media_id != self.avatar_media_id;
        if profile_changed {
            let event = AccountEvent::ProfileUpdated {
                display_name,
                bio,
                avatar_media_id,
                at,
            };
            self.emit(sink, event).await;
        }
        if let Some(email) = changes.email
            && Some(&email) != self.email.as_ref()
        {
            self.emit(sink, AccountEvent::EmailChanged { email, at })
                .await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type AccountTest = TestFramework<Account>;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default()
    }

    fn username(text: &str) -> Username {
        Username::parse(text).unwrap_or_else(|error| panic!("{error}"))
    }

    fn email(text: &str) -> Email {
        Email::parse(text).unwrap_or_else(|error| panic!("{error}"))
    }

    fn registered(user_id: UserId) -> AccountEvent {
        AccountEvent::Registered {
            user_id,
            username: username("alice"),
            email: email("alice@example.com"),
            display_name: DisplayName("alice".to_owned()),
            registered_at: at(),
        }
    }

    #[test]
    fn register_uses_the_username_as_default_display_name() {
        let user_id = UserId::new();
        AccountTest::with(())
            .given_no_previous_events()
            .when(AccountCommand::Register {
                user_id,
                username: username("Alice"),
                email: email("alice@example.com"),
                display_name: None,
                at: at(),
            })
            .then_expect_events(vec![registered(user_id)]);
    }

    #[test]
    fn register_twice_is_refused() {
        let user_id = UserId::new();
        AccountTest::with(())
            .given(vec![registered(user_id)])
            .when(AccountCommand::Register {
                user_id,
                username: username("alice"),
                email: email("alice@example.com"),
                display_name: None,
                at: at(),
            })
            .then_expect_error(AccountError::AlreadyRegistered);
    }

    #[test]
    fn login_on_a_missing_account_is_refused() {
        AccountTest::with(())
            .given_no_previous_events()
            .when(AccountCommand::RecordLogin {
                session_id: SessionId::new(),
                at: at(),
            })
            .then_expect_error(AccountError::NotRegistered);
    }

    #[test]
    fn login_logout_and_failures_are_recorded() {
        let user_id = UserId::new();
        let session_id = SessionId::new();
        AccountTest::with(())
            .given(vec![registered(user_id)])
            .when(AccountCommand::RecordLogin {
                session_id,
                at: at(),
            })
            .then_expect_events(vec![AccountEvent::LoggedIn {
                session_id,
                at: at(),
            }]);
        AccountTest::with(())
            .given(vec![registered(user_id)])
            .when(AccountCommand::RecordFailedLogin { at: at() })
            .then_expect_events(vec![AccountEvent::LoginFailed { at: at() }]);
        AccountTest::with(())
            .given(vec![
                registered(user_id),
                AccountEvent::LoggedIn {
                    session_id,
                    at: at(),
                },
            ])
            .when(AccountCommand::Logout {
                session_id,
                all_devices: true,
            })
            .then_expect_events(vec![AccountEvent::LoggedOut {
                session_id,
                all_devices: true,
            }]);
    }

    #[test]
    fn refresh_and_reuse_are_recorded() {
        let user_id = UserId::new();
        let session_id = SessionId::new();
        AccountTest::with(())
            .given(vec![registered(user_id)])
            .when(AccountCommand::RecordRefresh { session_id })
            .then_expect_events(vec![AccountEvent::SessionRefreshed { session_id }]);
        AccountTest::with(())
            .given(vec![registered(user_id)])
            .when(AccountCommand::RecordRefreshReuse { session_id })
            .then_expect_events(vec![AccountEvent::RefreshTokenReused { session_id }]);
    }

    #[test]
    fn profile_update_emits_the_full_new_profile() {
        let user_id = UserId::new();
        let bio = Bio::parse("hello").ok();
        AccountTest::with(())
            .given(vec![registered(user_id)])
            .when(AccountCommand::UpdateProfile {
                changes: ProfileChanges {
                    bio: Some(bio.clone()),
                    ..ProfileChanges::default()
                },
                at: at(),
            })
            .then_expect_events(vec![AccountEvent::ProfileUpdated {
                display_name: DisplayName("alice".to_owned()),
                bio,
                avatar_media_id: None,
                at: at(),
            }]);
    }

    #[test]
    fn profile_update_that_changes_nothing_emits_nothing() {
        let user_id = UserId::new();
        AccountTest::with(())
            .given(vec![registered(user_id)])
            .when(AccountCommand::UpdateProfile {
                changes: ProfileChanges {
                    display_name: DisplayName::parse("alice").ok(),
                    email: Some(email("alice@example.com")),
                    ..ProfileChanges::default()
                },
                at: at(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn email_change_is_its_own_event() {
        let user_id = UserId::new();
        AccountTest::with(())
            .given(vec![registered(user_id)])
            .when(AccountCommand::UpdateProfile {
                changes: ProfileChanges {
                    email: Some(email("new@example.com")),
                    ..ProfileChanges::default()
                },
                at: at(),
            })
            .then_expect_events(vec![AccountEvent::EmailChanged {
                email: email("new@example.com"),
                at: at(),
            }]);
    }

    #[test]
    fn password_change_requires_an_account() {
        AccountTest::with(())
            .given_no_previous_events()
            .when(AccountCommand::ChangePassword {
                kept_session_id: SessionId::new(),
                at: at(),
            })
            .then_expect_error(AccountError::NotRegistered);
    }

    #[test]
    fn admin_is_granted_and_revoked_once_each() {
        let user_id = UserId::new();
        let by = "cli:root@host".to_owned();
        let granted = AccountEvent::AdminGranted {
            by: by.clone(),
            at: at(),
        };
        AccountTest::with(())
            .given(vec![registered(user_id)])
            .when(AccountCommand::SetAdmin {
                admin: true,
                by: by.clone(),
                at: at(),
            })
            .then_expect_events(vec![granted.clone()]);
        AccountTest::with(())
            .given(vec![registered(user_id), granted.clone()])
            .when(AccountCommand::SetAdmin {
                admin: true,
                by: by.clone(),
                at: at(),
            })
            .then_expect_events(vec![]);
        AccountTest::with(())
            .given(vec![registered(user_id), granted])
            .when(AccountCommand::SetAdmin {
                admin: false,
                by: by.clone(),
                at: at(),
            })
            .then_expect_events(vec![AccountEvent::AdminRevoked { by, at: at() }]);
    }

    #[test]
    fn usernames_fold_case_and_reject_other_characters() {
        assert_eq!(username("Bob_1.x").as_str(), "bob_1.x");
        for bad in ["ab", "a b c", "émile", "x".repeat(33).as_str(), "bob!"] {
            assert_eq!(
                Username::parse(bad).map_err(|error| error.code),
                Err("invalid_username"),
                "{bad}"
            );
        }
    }

    #[test]
    fn emails_are_checked_for_shape() {
        assert!(Email::parse("a.b+c@mail.example.org").is_ok());
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            "a@.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_need_8_to_128_characters() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"x".repeat(129)).is_err());
        assert_eq!(
            format!("{:?}", Password::parse("secret-password").ok()),
            "Some(Password(<redacted>))"
        );
    }

    #[test]
    fn event_types_and_versions_are_pinned() {
        let user_id = UserId::new();
        let session_id = SessionId::new();
        let samples = [
            registered(user_id),
            AccountEvent::LoggedIn {
                session_id,
                at: at(),
            },
            AccountEvent::LoginFailed { at: at() },
            AccountEvent::SessionRefreshed { session_id },
            AccountEvent::RefreshTokenReused { session_id },
            AccountEvent::LoggedOut {
                session_id,
                all_devices: false,
            },
            AccountEvent::ProfileUpdated {
                display_name: DisplayName("a".to_owned()),
                bio: None,
                avatar_media_id: None,
                at: at(),
            },
            AccountEvent::EmailChanged {
                email: email("a@b.co"),
                at: at(),
            },
            AccountEvent::PasswordChanged {
                kept_session_id: session_id,
                at: at(),
            },
            AccountEvent::AdminGranted {
                by: "cli:root@host".to_owned(),
                at: at(),
            },
            AccountEvent::AdminRevoked {
                by: "cli:root@host".to_owned(),
                at: at(),
            },
        ];
        let seen: Vec<(String, String)> = samples
            .iter()
            .map(|event| (event.event_type(), event.event_version()))
            .collect();
        let pinned: Vec<(String, String)> = AccountEvent::TYPES
            .iter()
            .map(|(name, version)| ((*name).to_owned(), (*version).to_owned()))
            .collect();
        assert_eq!(seen, pinned);
    }
}
