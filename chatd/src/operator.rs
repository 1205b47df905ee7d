//! Operator commands that need only the database: `chatd admin` and `chatd audit export`.

use chrono::Utc;
use domain::account::{Account, AccountCommand};
use domain::metadata::EventMetadata;
use query_api::audit::{AuditFilter, read_events};
use std::io::Write;
use store::AggregateStore;
use uuid::Uuid;

use crate::config::{AdminAction, AuditAction, Settings};

/// Grants or revokes `admin`; `operator` names who ran the command (`cli:user@host`).
pub async fn admin(
    settings: &Settings,
    action: AdminAction,
    operator: &str,
) -> anyhow::Result<String> {
    let pool = store::connect(&settings.database_url, 2).await?;
    let (username, admin) = match action {
        AdminAction::Grant { username } => (username, true),
        AdminAction::Revoke { username } => (username, false),
    };
    let login = username.trim().to_lowercase();
    let user_id: Option<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM account_identities WHERE kind = 'username' AND value = $1",
    )
    .bind(&login)
    .fetch_optional(&pool)
    .await?;
    let user_id = user_id.ok_or_else(|| anyhow::anyhow!("no user named {login}"))?;
    let metadata = EventMetadata {
        actor_id: None,
        request_id: format!("cli-{}", Uuid::now_v7()),
        recorded_at: Utc::now(),
    };
    let command = AccountCommand::SetAdmin {
        admin,
        by: operator.to_owned(),
        at: metadata.recorded_at,
    };
    let accounts = AggregateStore::<Account>::new(pool.clone());
    let committed = accounts
        .execute(&user_id.to_string(), command, &(), &metadata)
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let verb = if admin { "granted to" } else { "revoked from" };
    let change = if committed.events.is_empty() {
        " (no change)"
    } else {
        ""
    };
    Ok(format!("admin {verb} {login}{change}"))
}

/// Writes the events of one conversation as JSON Lines on `out`, in log order.
pub async fn audit(
    settings: &Settings,
    action: AuditAction,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let AuditAction::Export {
        conversation,
        from,
        to,
    } = action;
    let pool = store::connect(&settings.database_url, 2).await?;
    let filter = AuditFilter {
        aggregate_type: Some("conversation".to_owned()),
        aggregate_id: Some(conversation.to_string()),
        from,
        to,
        ..AuditFilter::default()
    };
    let mut after = 0;
    loop {
        let page = read_events(&pool, &filter, after, 1000).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = last.log_position;
        for event in &page {
            serde_json::to_writer(&mut *out, event)?;
            out.write_all(b"\n")?;
        }
    }
}
