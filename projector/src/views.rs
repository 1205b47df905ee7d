//! The read models, one function per aggregate type. Each is called inside the projector's
//! transaction, exactly once per event.

use bus::EventMessage;
use cqrs_es::Aggregate;
use domain::account::{Account, AccountEvent};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

pub async fn apply(
    transaction: &mut Transaction<'_, Postgres>,
    message: &EventMessage,
) -> anyhow::Result<()> {
    match message.aggregate_type.as_str() {
        Account::TYPE => {
            let event: AccountEvent = serde_json::from_value(message.payload.clone())?;
            let user_id: Uuid = message.aggregate_id.parse()?;
            apply_account(transaction, user_id, event).await
        }
        // Event types of later features are ignored until a view needs them.
        _ => Ok(()),
    }
}

async fn apply_account(
    transaction: &mut Transaction<'_, Postgres>,
    user_id: Uuid,
    event: AccountEvent,
) -> anyhow::Result<()> {
    match event {
        AccountEvent::Registered {
            username,
            email,
            display_name,
            registered_at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO users (id, username, email, display_name, display_name_lower, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, lower($4), $5, $5)",
            )
            .bind(user_id)
            .bind(username.as_str())
            .bind(email.as_str())
            .bind(display_name.as_str())
            .bind(registered_at)
            .execute(&mut **transaction)
            .await?;
        }
        AccountEvent::ProfileUpdated {
            display_name,
            bio,
            avatar_media_id,
            at,
        } => {
            sqlx::query(
                "UPDATE users SET display_name = $2, display_name_lower = lower($2), bio = $3,
                        avatar_media_id = $4, updated_at = $5
                  WHERE id = $1",
            )
            .bind(user_id)
            .bind(display_name.as_str())
            .bind(bio.as_ref().map(|bio| bio.as_str()))
            .bind(avatar_media_id)
            .bind(at)
            .execute(&mut **transaction)
            .await?;
        }
        AccountEvent::EmailChanged { email, at } => {
            sqlx::query("UPDATE users SET email = $2, updated_at = $3 WHERE id = $1")
                .bind(user_id)
                .bind(email.as_str())
                .bind(at)
                .execute(&mut **transaction)
                .await?;
        }
        AccountEvent::LoggedIn { .. } => {
            sqlx::query("UPDATE users SET login_count = login_count + 1 WHERE id = $1")
                .bind(user_id)
                .execute(&mut **transaction)
                .await?;
        }
        AccountEvent::LoginFailed { .. }
        | AccountEvent::SessionRefreshed { .. }
        | AccountEvent::RefreshTokenReused { .. }
        | AccountEvent::LoggedOut { .. }
        | AccountEvent::PasswordChanged { .. } => {}
    }
    Ok(())
}
