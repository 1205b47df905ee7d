//! The read models, one function per aggregate type. Each is called inside the projector's
//! transaction, exactly once per event.

use bus::EventMessage;
use cqrs_es::Aggregate;
use domain::account::{Account, AccountEvent};
use domain::call::{Call, CallEvent, CallMedia};
use domain::conversation::{Conversation, ConversationEvent};
use domain::media::{Media, MediaEvent};
use serde_json::json;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// The read models as a consumer handler: `projection_positions`, the `{ns}.projector` queue.
pub struct ReadModels;

#[async_trait::async_trait]
impl crate::Handler for ReadModels {
    type Output = ();

    fn name(&self) -> &'static str {
        "projector"
    }

    fn queue(&self, topology: &bus::Topology) -> String {
        topology.projector_queue()
    }

    fn positions_table(&self) -> &'static str {
        "projection_positions"
    }

    async fn apply(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        event: &EventMessage,
    ) -> anyhow::Result<Vec<()>> {
        apply(transaction, event).await?;
        Ok(Vec::new())
    }

    async fn apply_all(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        events: &[&EventMessage],
    ) -> anyhow::Result<Vec<()>> {
        apply_all(transaction, events).await?;
        Ok(Vec::new())
    }

    async fn before_commit(&self, _outputs: Vec<()>) -> anyhow::Result<()> {
        Ok(())
    }
}

pub async fn apply(
    transaction: &mut Transaction<'_, Postgres>,
    message: &EventMessage,
) -> anyhow::Result<()> {
    match message.aggregate_type.as_str() {
        Account::TYPE => {
            let event: AccountEvent = serde_json::from_value(domain::upcasting::upcast_payload(
                &message.aggregate_type,
                &message.event_type,
                &message.event_version,
                message.payload.clone(),
            ))?;
            let user_id: Uuid = message.aggregate_id.parse()?;
            apply_account(transaction, user_id, event).await
        }
        Conversation::TYPE => {
            let event: ConversationEvent =
                serde_json::from_value(domain::upcasting::upcast_payload(
                    &message.aggregate_type,
                    &message.event_type,
                    &message.event_version,
                    message.payload.clone(),
                ))?;
            let conversation_id: Uuid = message.aggregate_id.parse()?;
            apply_conversation(transaction, conversation_id, event).await
        }
        Media::TYPE => {
            let event: MediaEvent = serde_json::from_value(domain::upcasting::upcast_payload(
                &message.aggregate_type,
                &message.event_type,
                &message.event_version,
                message.payload.clone(),
            ))?;
            apply_media(transaction, event).await
        }
        Call::TYPE => {
            let event: CallEvent = serde_json::from_value(domain::upcasting::upcast_payload(
                &message.aggregate_type,
                &message.event_type,
                &message.event_version,
                message.payload.clone(),
            ))?;
            let call_id: Uuid = message.aggregate_id.parse()?;
            apply_call(transaction, call_id, event).await
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
        | AccountEvent::PasswordChanged { .. }
        | AccountEvent::AdminGranted { .. }
        | AccountEvent::AdminRevoked { .. } => {}
    }
    Ok(())
}

async fn apply_conversation(
    transaction: &mut Transaction<'_, Postgres>,
    conversation_id: Uuid,
    event: ConversationEvent,
) -> anyhow::Result<()> {
    match event {
        event @ (ConversationEvent::CallStarted { .. } | ConversationEvent::CallEnded { .. }) => {
            let Some(call) = domain::conversation::call_message(&event) else {
                return Ok(());
            };
            // A call message: its details go where a system message's do, and its id comes from
            // its place in the timeline.
            let message_id = domain::conversation::system_message_id(
                domain::ConversationId::from_uuid(conversation_id),
                call.seq,
            );
            sqlx::query(
                "INSERT INTO messages (id, conversation_id, seq, sender_id, kind, body, system, created_at)
                 VALUES ($1, $2, $3, $4, 'call', $5, $6, $7)",
            )
            .bind(message_id)
            .bind(conversation_id)
            .bind(call.seq)
            .bind(call.initiator_id.as_uuid())
            .bind(call.details["action"].as_str())
            .bind(&call.details)
            .bind(call.at)
            .execute(&mut **transaction)
            .await?;
            advance_timeline(transaction, conversation_id, call.seq, call.at).await?;
        }
        ConversationEvent::Created {
            kind,
            title,
            owner_id,
            members,
            at,
            ..
        } => {
            let kind = serde_json::to_value(kind)?;
            sqlx::query(
                "INSERT INTO conversations (id, kind, title, owner_id, created_at, last_activity_at)
                 VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind(conversation_id)
            .bind(kind.as_str().unwrap_or("group"))
            .bind(title.as_ref().map(|title| title.as_str()))
            .bind(owner_id.as_uuid())
            .bind(at)
            .execute(&mut **transaction)
            .await?;
            let user_ids: Vec<Uuid> = members
                .iter()
                .map(|(user_id, _)| user_id.as_uuid())
                .collect();
            let roles: Vec<&str> = members.iter().map(|(_, role)| role.as_str()).collect();
            sqlx::query(
                "INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
                 SELECT $1, user_id, role, $4 FROM unnest($2::uuid[], $3::text[]) AS m(user_id, role)",
            )
            .bind(conversation_id)
            .bind(&user_ids)
            .bind(&roles)
            .bind(at)
            .execute(&mut **transaction)
            .await?;
        }
        ConversationEvent::Renamed { by, title, seq, at } => {
            sqlx::query("UPDATE conversations SET title = $2 WHERE id = $1")
                .bind(conversation_id)
                .bind(title.as_str())
                .execute(&mut **transaction)
                .await?;
            let system = json!({"action": "renamed", "actor_id": by, "title": title.as_str()});
            insert_system_message(transaction, conversation_id, seq, by.as_uuid(), system, at)
                .await?;
        }
        ConversationEvent::MemberAdded {
            by,
            user_id,
            role,
            seq,
            at,
        } => {
            sqlx::query(
                "INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(conversation_id)
            .bind(user_id.as_uuid())
            .bind(role.as_str())
            .bind(at)
            .execute(&mut **transaction)
            .await?;
            let system = json!({"action": "member_added", "actor_id": by, "user_id": user_id});
            insert_system_message(transaction, conversation_id, seq, by.as_uuid(), system, at)
                .await?;
        }
        ConversationEvent::MemberRemoved {
            by,
            user_id,
            new_owner_id,
            seq,
            at,
        } => {
            sqlx::query(
                "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2",
            )
            .bind(conversation_id)
            .bind(user_id.as_uuid())
            .execute(&mut **transaction)
            .await?;
            if let Some(new_owner_id) = new_owner_id {
                sqlx::query("UPDATE conversations SET owner_id = $2 WHERE id = $1")
                    .bind(conversation_id)
                    .bind(new_owner_id.as_uuid())
                    .execute(&mut **transaction)
                    .await?;
                sqlx::query(
                    "UPDATE conversation_members SET role = 'owner' WHERE conversation_id = $1 AND user_id = $2",
                )
                .bind(conversation_id)
                .bind(new_owner_id.as_uuid())
                .execute(&mut **transaction)
                .await?;
            }
            let action = if by == user_id {
                "member_left"
            } else {
                "member_removed"
            };
            let system = json!({"action": action, "actor_id": by, "user_id": user_id, "new_owner_id": new_owner_id});
            insert_system_message(transaction, conversation_id, seq, by.as_uuid(), system, at)
                .await?;
        }
        ConversationEvent::MessageSent {
            message_id,
            seq,
            sender_id,
            body,
            attachments,
            reply_to_id,
            at,
            ..
        } => {
            let kind = domain::conversation::sent_message_kind(body.as_ref(), &attachments);
            let attachment_ids: Vec<Uuid> = attachments
                .iter()
                .map(|attachment| attachment.media_id.as_uuid())
                .collect();
            sqlx::query(
                "INSERT INTO messages (id, conversation_id, seq, sender_id, kind, body, attachment_ids, attachments, reply_to_id, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(message_id.as_uuid())
            .bind(conversation_id)
            .bind(seq)
            .bind(sender_id.as_uuid())
            .bind(kind)
            .bind(body.as_ref().map(|body| body.as_str()))
            .bind(&attachment_ids)
            .bind(sqlx::types::Json(&attachments))
            .bind(reply_to_id.map(|id| id.as_uuid()))
            .bind(at)
            .execute(&mut **transaction)
            .await?;
            advance_timeline(transaction, conversation_id, seq, at).await?;
            // Sending implies having read everything up to one's own message.
            sqlx::query(
                "UPDATE conversation_members SET delivered_seq = GREATEST(delivered_seq, $3), read_seq = GREATEST(read_seq, $3)
                  WHERE conversation_id = $1 AND user_id = $2",
            )
            .bind(conversation_id)
            .bind(sender_id.as_uuid())
            .bind(seq)
            .execute(&mut **transaction)
            .await?;
        }
        ConversationEvent::MessageEdited {
            message_id,
            body,
            at,
            ..
        } => {
            sqlx::query("UPDATE messages SET body = $2, edited_at = $3 WHERE id = $1")
                .bind(message_id.as_uuid())
                .bind(body.as_str())
                .bind(at)
                .execute(&mut **transaction)
                .await?;
        }
        ConversationEvent::MessageDeleted { message_id, .. } => {
            sqlx::query(
                "UPDATE messages SET deleted = true, body = NULL, attachment_ids = '{}', attachments = '[]' WHERE id = $1",
            )
            .bind(message_id.as_uuid())
            .execute(&mut **transaction)
            .await?;
        }
        ConversationEvent::ReceiptsMoved {
            user_id,
            delivered_seq,
            read_seq,
            at,
        } => {
            sqlx::query(
                "UPDATE conversation_members SET delivered_seq = $3, read_seq = $4
                  WHERE conversation_id = $1 AND user_id = $2",
            )
            .bind(conversation_id)
            .bind(user_id.as_uuid())
            .bind(delivered_seq)
            .bind(read_seq)
            .execute(&mut **transaction)
            .await?;
            sqlx::query(
                "INSERT INTO receipt_marks (conversation_id, user_id, delivered_seq, read_seq, at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(conversation_id)
            .bind(user_id.as_uuid())
            .bind(delivered_seq)
            .bind(read_seq)
            .bind(at)
            .execute(&mut **transaction)
            .await?;
        }
    }
    Ok(())
}

async fn insert_system_message(
    transaction: &mut Transaction<'_, Postgres>,
    conversation_id: Uuid,
    seq: i64,
    actor_id: Uuid,
    system: serde_json::Value,
    at: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    // A system message's id is derived from its place in the timeline, so a rebuild of the
    // read models gives it the same id again.
    let message_id = domain::conversation::system_message_id(
        domain::ConversationId::from_uuid(conversation_id),
        seq,
    );
    let body = system["action"].as_str().map(str::to_owned);
    sqlx::query(
        "INSERT INTO messages (id, conversation_id, seq, sender_id, kind, body, system, created_at)
         VALUES ($1, $2, $3, $4, 'system', $5, $6, $7)",
    )
    .bind(message_id)
    .bind(conversation_id)
    .bind(seq)
    .bind(actor_id)
    .bind(body)
    .bind(system)
    .bind(at)
    .execute(&mut **transaction)
    .await?;
    advance_timeline(transaction, conversation_id, seq, at).await
}

async fn advance_timeline(
    transaction: &mut Transaction<'_, Postgres>,
    conversation_id: Uuid,
    seq: i64,
    at: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE conversations SET last_seq = GREATEST(last_seq, $2), last_activity_at = GREATEST(last_activity_at, $3)
          WHERE id = $1",
    )
    .bind(conversation_id)
    .bind(seq)
    .bind(at)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Applies `events` in order, like [`apply`] one by one, but writes each run of consecutive
/// `MessageSent` events with three statements instead of three per message (for rebuilds,
/// and for the live projector's batches).
/// Every write a `MessageSent` makes is an insert or a monotonic maximum, so a run applied
/// together leaves the same rows as one applied event by event.
pub async fn apply_all<M: std::borrow::Borrow<EventMessage>>(
    transaction: &mut Transaction<'_, Postgres>,
    events: &[M],
) -> anyhow::Result<()> {
    let mut run: Vec<(Uuid, ConversationEvent)> = Vec::new();
    for message in events {
        let message: &EventMessage = message.borrow();
        if message.aggregate_type == Conversation::TYPE && message.event_type == "MessageSent" {
            let payload = domain::upcasting::upcast_payload(
                &message.aggregate_type,
                &message.event_type,
                &message.event_version,
                message.payload.clone(),
            );
            run.push((
                message.aggregate_id.parse()?,
                serde_json::from_value(payload)?,
            ));
            continue;
        }
        insert_sent_messages(transaction, &run).await?;
        run.clear();
        apply(transaction, message).await?;
    }
    insert_sent_messages(transaction, &run).await
}

async fn insert_sent_messages(
    transaction: &mut Transaction<'_, Postgres>,
    run: &[(Uuid, ConversationEvent)],
) -> anyhow::Result<()> {
    if run.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(run.len());
    let mut conversations = Vec::with_capacity(run.len());
    let mut seqs = Vec::with_capacity(run.len());
    let mut senders = Vec::with_capacity(run.len());
    let mut kinds = Vec::with_capacity(run.len());
    let mut bodies: Vec<Option<String>> = Vec::with_capacity(run.len());
    let mut attachments = Vec::with_capacity(run.len());
    let mut images_json = Vec::with_capacity(run.len());
    let mut replies: Vec<Option<Uuid>> = Vec::with_capacity(run.len());
    let mut times = Vec::with_capacity(run.len());
    for (conversation_id, event) in run {
        let ConversationEvent::MessageSent {
            message_id,
            seq,
            sender_id,
            body,
            attachments: images,
            reply_to_id,
            at,
            ..
        } = event
        else {
            continue;
        };
        ids.push(message_id.as_uuid());
        conversations.push(*conversation_id);
        seqs.push(*seq);
        senders.push(sender_id.as_uuid());
        kinds.push(domain::conversation::sent_message_kind(body.as_ref(), images).to_owned());
        bodies.push(body.as_ref().map(|body| body.as_str().to_owned()));
        let list: Vec<String> = images
            .iter()
            .map(|image| image.media_id.to_string())
            .collect();
        attachments.push(format!("{{{}}}", list.join(",")));
        images_json.push(serde_json::to_string(images)?);
        replies.push(reply_to_id.map(|id| id.as_uuid()));
        times.push(*at);
    }
    // The rows go in with COPY (text format), the cheapest way into Postgres.
    let mut copy = String::with_capacity(run.len() * 160);
    for index in 0..ids.len() {
        let text = |value: &str| {
            value
                .replace('\\', "\\\\")
                .replace('\t', "\\t")
                .replace('\n', "\\n")
                .replace('\r', "\\r")
        };
        let body = bodies[index]
            .as_deref()
            .map_or_else(|| "\\N".to_owned(), text);
        let reply = replies[index].map_or_else(|| "\\N".to_owned(), |id| id.to_string());
        copy.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            ids[index],
            conversations[index],
            seqs[index],
            senders[index],
            kinds[index],
            body,
            attachments[index],
            text(&images_json[index]),
            reply,
            times[index].to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ));
    }
    let mut sink = transaction
        .copy_in_raw(
            "COPY messages (id, conversation_id, seq, sender_id, kind, body, attachment_ids, attachments, reply_to_id, created_at) FROM STDIN",
        )
        .await?;
    sink.send(copy.into_bytes()).await?;
    sink.finish().await?;
    sqlx::query(
        "UPDATE conversations c SET last_seq = GREATEST(c.last_seq, v.seq), last_activity_at = GREATEST(c.last_activity_at, v.at)
           FROM (SELECT conversation_id, max(seq) AS seq, max(at) AS at
                   FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[]) AS t(conversation_id, seq, at)
                  GROUP BY conversation_id) v
          WHERE c.id = v.conversation_id",
    )
    .bind(&conversations)
    .bind(&seqs)
    .bind(&times)
    .execute(&mut **transaction)
    .await?;
    sqlx::query(
        "UPDATE conversation_members m
            SET delivered_seq = GREATEST(m.delivered_seq, v.seq), read_seq = GREATEST(m.read_seq, v.seq)
           FROM (SELECT conversation_id, sender_id, max(seq) AS seq
                   FROM unnest($1::uuid[], $2::uuid[], $3::bigint[]) AS t(conversation_id, sender_id, seq)
                  GROUP BY conversation_id, sender_id) v
          WHERE m.conversation_id = v.conversation_id AND m.user_id = v.sender_id",
    )
    .bind(&conversations)
    .bind(&senders)
    .bind(&seqs)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

async fn apply_media(
    transaction: &mut Transaction<'_, Postgres>,
    event: MediaEvent,
) -> anyhow::Result<()> {
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
            sqlx::query(
                "INSERT INTO media (id, owner_id, content_type, content_hash, size, width, height,
                                    thumbnail_size, thumbnail_width, thumbnail_height, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(media_id.as_uuid())
            .bind(owner_id.as_uuid())
            .bind(image_type.content_type())
            .bind(content_hash)
            .bind(image.size)
            .bind(i32::try_from(image.width)?)
            .bind(i32::try_from(image.height)?)
            .bind(thumbnail.size)
            .bind(i32::try_from(thumbnail.width)?)
            .bind(i32::try_from(thumbnail.height)?)
            .bind(at)
            .execute(&mut **transaction)
            .await?;
        }
    }
    Ok(())
}

/// Sets one participant's row (adding it at the end of the list when new).
#[allow(clippy::too_many_arguments)]
async fn upsert_participant(
    transaction: &mut Transaction<'_, Postgres>,
    call_id: Uuid,
    user_id: Uuid,
    state: &str,
    joined_at: Option<chrono::DateTime<chrono::Utc>>,
    audio: bool,
    video: bool,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO call_participants (call_id, user_id, position, state, joined_at, audio, video)
         VALUES ($1, $2, (SELECT count(*) FROM call_participants WHERE call_id = $1), $3, $4, $5, $6)
         ON CONFLICT (call_id, user_id) DO UPDATE
            SET state = EXCLUDED.state, joined_at = EXCLUDED.joined_at, left_at = NULL,
                audio = EXCLUDED.audio, video = EXCLUDED.video, screen = false",
    )
    .bind(call_id)
    .bind(user_id)
    .bind(state)
    .bind(joined_at)
    .bind(audio)
    .bind(video)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Moves participants to `state`; `left_at` is set for those who leave, flags go off.
async fn set_participants(
    transaction: &mut Transaction<'_, Postgres>,
    call_id: Uuid,
    user_ids: &[Uuid],
    state: &str,
    left_at: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE call_participants SET state = $3, left_at = COALESCE($4, left_at),
                audio = false, video = false, screen = false
          WHERE call_id = $1 AND user_id = ANY($2)",
    )
    .bind(call_id)
    .bind(user_ids)
    .bind(state)
    .bind(left_at)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

async fn apply_call(
    transaction: &mut Transaction<'_, Postgres>,
    call_id: Uuid,
    event: CallEvent,
) -> anyhow::Result<()> {
    match event {
        CallEvent::Started {
            conversation_id,
            initiator_id,
            media,
            ringing,
            started_at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO calls (id, conversation_id, initiator_id, media, state, started_at)
                 VALUES ($1, $2, $3, $4, 'ringing', $5)",
            )
            .bind(call_id)
            .bind(conversation_id.as_uuid())
            .bind(initiator_id.as_uuid())
            .bind(media.as_str())
            .bind(started_at)
            .execute(&mut **transaction)
            .await?;
            upsert_participant(
                transaction,
                call_id,
                initiator_id.as_uuid(),
                "joined",
                Some(started_at),
                true,
                media == CallMedia::Video,
            )
            .await?;
            for user_id in ringing {
                upsert_participant(
                    transaction,
                    call_id,
                    user_id.as_uuid(),
                    "ringing",
                    None,
                    false,
                    false,
                )
                .await?;
            }
        }
        CallEvent::Accepted {
            user_id,
            answered,
            audio,
            video,
            at,
        } => {
            upsert_participant(
                transaction,
                call_id,
                user_id.as_uuid(),
                "joined",
                Some(at),
                audio,
                video,
            )
            .await?;
            if answered {
                sqlx::query("UPDATE calls SET state = 'active', answered_at = $2 WHERE id = $1")
                    .bind(call_id)
                    .bind(at)
                    .execute(&mut **transaction)
                    .await?;
            }
        }
        CallEvent::Declined { user_id, .. } => {
            set_participants(transaction, call_id, &[user_id.as_uuid()], "declined", None).await?;
        }
        CallEvent::ParticipantLeft { user_id, at } => {
            set_participants(transaction, call_id, &[user_id.as_uuid()], "left", Some(at)).await?;
        }
        CallEvent::MediaChanged {
            user_id,
            audio,
            video,
            screen,
        } => {
            sqlx::query(
                "UPDATE call_participants SET audio = $3, video = $4, screen = $5
                  WHERE call_id = $1 AND user_id = $2",
            )
            .bind(call_id)
            .bind(user_id.as_uuid())
            .bind(audio)
            .bind(video)
            .bind(screen)
            .execute(&mut **transaction)
            .await?;
        }
        CallEvent::RingingMissed { user_ids, .. } => {
            let user_ids: Vec<Uuid> = user_ids.iter().map(|id| id.as_uuid()).collect();
            set_participants(transaction, call_id, &user_ids, "missed", None).await?;
        }
        CallEvent::Ended {
            reason,
            ended_at,
            duration_ms,
            missed,
            left,
        } => {
            sqlx::query(
                "UPDATE calls SET state = 'ended', end_reason = $2, ended_at = $3, duration_ms = $4
                  WHERE id = $1",
            )
            .bind(call_id)
            .bind(reason.as_str())
            .bind(ended_at)
            .bind(duration_ms)
            .execute(&mut **transaction)
            .await?;
            let missed: Vec<Uuid> = missed.iter().map(|id| id.as_uuid()).collect();
            set_participants(transaction, call_id, &missed, "missed", None).await?;
            let left: Vec<Uuid> = left.iter().map(|id| id.as_uuid()).collect();
            set_participants(transaction, call_id, &left, "left", Some(ended_at)).await?;
        }
    }
    Ok(())
}
