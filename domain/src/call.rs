//! The `Call` aggregate: one audio or video call in a conversation, from the first ring to the
//! hang-up, and each participant's part in it (ringing, joined, declined, left or missed) with
//! their audio, video and screen-sharing flags.
//!
//! Life of a call: `Start` makes the initiator a joined participant and rings every other
//! member of the conversation. The first accept by someone else answers the call (`active`,
//! `answered_at`). The call ends (`ended`, with an `end_reason`) when:
//!
//! - a direct call: either side leaves or ends it;
//! - a group call: the last joined participant leaves, or the initiator ends it for everyone;
//! - an unanswered call: everyone rung has declined (`declined`), the initiator gave up
//!   (`cancelled`), or the ring timeout fired (`missed`).
//!
//! A hang-up (leave or end) gives `completed` when the call was answered, else `cancelled`.
//! At the end every participant still ringing becomes `missed`, and every joined one `left`
//! with `left_at` the end time.
//!
//! Choices where the contract is silent (following Matrix VoIP and what messenger users see):
//!
//! - `duration_ms` is `None` (JSON `null`) for a call nobody answered and while a call goes on;
//!   else `ended_at - answered_at` in milliseconds, never below 0.
//! - Participants are listed initiator first, then the rung members by user id, then late
//!   joiners in the order they joined. `joined_at` is the latest join (a rejoin moves it and
//!   clears `left_at`); `left_at` stays `None` for those who declined or missed the call.
//!   Audio, video and screen are all off for anyone not joined; a join turns audio on, video
//!   on only in a video call, and screen sharing off.
//! - `SetMedia` may turn video on in an audio call (an upgrade, as in most messengers).
//! - In a group call, the initiator may end the call for everyone also after leaving it (as a
//!   Telegram group call's creator can); in a direct call only a joined side may end it (the
//!   ringing side declines instead).
//! - A listed participant who is no longer a member of the conversation (removed while the
//!   call rang) may not join it: `Accept` consults `member_of_conversation` for everyone.
//! - `RingTimeout` trusts its scheduler for the time: it does not compare `at` with
//!   `started_at`. On an ended call it writes nothing and succeeds, so a late or repeated
//!   firing is harmless; on a call that never started it is `NotFound`, like every command.
//! - `Start` carries the call's own id, as `ConversationCommand::Create` does, so the
//!   `CallStarted` event names the call it starts. An initiator who is not among the members
//!   is refused with `NotAllowed` (forbidden), the same error as ending a group call one
//!   did not start.
//! - `CallEnded` lists both the ringing participants it marks `missed` and the joined ones it
//!   marks `left`, so a read model updates each row without reading the call back.
//!
//! Stable error codes come from [`CallError::code`]; which HTTP status each one gets is the
//! API's decision (its doc comment says the intended class).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::{CallId, ConversationId, UserId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallMedia {
    Audio,
    Video,
}

impl CallMedia {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Video => "video",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// Started, nobody has answered yet.
    Ringing,
    /// Answered and not yet over.
    Active,
    Ended,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ringing => "ringing",
            Self::Active => "active",
            Self::Ended => "ended",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The call was answered, then hung up.
    Completed,
    /// Nobody answered within the ring timeout.
    Missed,
    /// Everyone rung declined.
    Declined,
    /// The initiator hung up before anyone answered.
    Cancelled,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Missed => "missed",
            Self::Declined => "declined",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantState {
    Ringing,
    Joined,
    Declined,
    Left,
    Missed,
}

impl ParticipantState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ringing => "ringing",
            Self::Joined => "joined",
            Self::Declined => "declined",
            Self::Left => "left",
            Self::Missed => "missed",
        }
    }
}

/// One user's part in a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    user_id: UserId,
    state: ParticipantState,
    joined_at: Option<DateTime<Utc>>,
    left_at: Option<DateTime<Utc>>,
    audio: bool,
    video: bool,
    screen: bool,
}

impl Participant {
    pub fn user_id(&self) -> UserId {
        self.user_id
    }

    pub fn state(&self) -> ParticipantState {
        self.state
    }

    /// When the participant last joined; `None` if they never did.
    pub fn joined_at(&self) -> Option<DateTime<Utc>> {
        self.joined_at
    }

    /// When the participant left, or the call ended while they were in it.
    pub fn left_at(&self) -> Option<DateTime<Utc>> {
        self.left_at
    }

    pub fn audio(&self) -> bool {
        self.audio
    }

    pub fn video(&self) -> bool {
        self.video
    }

    pub fn screen(&self) -> bool {
        self.screen
    }

    fn ringing(user_id: UserId) -> Self {
        Self {
            user_id,
            state: ParticipantState::Ringing,
            joined_at: None,
            left_at: None,
            audio: false,
            video: false,
            screen: false,
        }
    }

    fn leave(&mut self, at: DateTime<Utc>) {
        self.state = ParticipantState::Left;
        self.left_at = Some(at);
        self.audio = false;
        self.video = false;
        self.screen = false;
    }
}

#[derive(Clone, Debug)]
pub enum CallCommand {
    Start {
        call_id: CallId,
        conversation_id: ConversationId,
        /// The conversation is a direct one.
        direct: bool,
        initiator: UserId,
        /// Every current member of the conversation, the initiator included.
        members: Vec<UserId>,
        media: CallMedia,
        at: DateTime<Utc>,
        /// When the ring timeout fires (a scheduler reads it from the event).
        rings_until: DateTime<Utc>,
    },
    Accept {
        user: UserId,
        /// The user is a current member of the conversation (a group member who joined the
        /// conversation after the call started may join the call).
        member_of_conversation: bool,
        at: DateTime<Utc>,
    },
    Decline {
        user: UserId,
        at: DateTime<Utc>,
    },
    Leave {
        user: UserId,
        at: DateTime<Utc>,
    },
    /// Hang up for everyone.
    End {
        user: UserId,
        at: DateTime<Utc>,
    },
    SetMedia {
        user: UserId,
        audio: bool,
        video: bool,
        screen: bool,
    },
    /// The ring timeout has passed (sent by a durable scheduler: maybe late, maybe twice).
    RingTimeout {
        at: DateTime<Utc>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CallEvent {
    /// The initiator is joined with audio on, and video on in a video call; everyone in
    /// `ringing` is being rung.
    Started {
        call_id: CallId,
        conversation_id: ConversationId,
        direct: bool,
        initiator_id: UserId,
        media: CallMedia,
        ringing: Vec<UserId>,
        started_at: DateTime<Utc>,
        /// When the ring timeout fires: the scheduled command table takes it from here.
        rings_until: DateTime<Utc>,
    },
    /// The user joined with these flags (screen sharing off). `answered` is set on the first
    /// accept, which makes the call active. A user who was not a participant yet is added.
    Accepted {
        user_id: UserId,
        answered: bool,
        audio: bool,
        video: bool,
        at: DateTime<Utc>,
    },
    Declined {
        user_id: UserId,
        at: DateTime<Utc>,
    },
    /// The participant's media flags go off.
    ParticipantLeft {
        user_id: UserId,
        at: DateTime<Utc>,
    },
    /// The participant's flags after the change, in full.
    MediaChanged {
        user_id: UserId,
        audio: bool,
        video: bool,
        screen: bool,
    },
    /// The ring timeout passed in an active call: these participants, still ringing, missed it.
    RingingMissed {
        user_ids: Vec<UserId>,
        at: DateTime<Utc>,
    },
    /// `missed`: the participants still ringing, now missed. `left`: the participants still
    /// joined, now left at `ended_at`. `duration_ms` is `None` when nobody answered.
    Ended {
        reason: EndReason,
        ended_at: DateTime<Utc>,
        duration_ms: Option<i64>,
        missed: Vec<UserId>,
        left: Vec<UserId>,
    },
}

impl CallEvent {
    /// Every event type of this aggregate with its current version; pinned by a test.
    pub const TYPES: &'static [(&'static str, &'static str)] = &[
        ("CallStarted", "1.0"),
        ("CallAccepted", "1.0"),
        ("CallDeclined", "1.0"),
        ("CallParticipantLeft", "1.0"),
        ("CallMediaChanged", "1.0"),
        ("CallRingingMissed", "1.0"),
        ("CallEnded", "1.0"),
    ];
}

impl DomainEvent for CallEvent {
    fn event_type(&self) -> String {
        let name = match self {
            Self::Started { .. } => "CallStarted",
            Self::Accepted { .. } => "CallAccepted",
            Self::Declined { .. } => "CallDeclined",
            Self::ParticipantLeft { .. } => "CallParticipantLeft",
            Self::MediaChanged { .. } => "CallMediaChanged",
            Self::RingingMissed { .. } => "CallRingingMissed",
            Self::Ended { .. } => "CallEnded",
        };
        name.to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Each variant's doc comment names the status class it is meant for: conflict (the call's
/// state does not allow it now), forbidden (this user may not), or unprocessable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Not found: the call was never started.
    #[error("no such call")]
    NotFound,
    /// Conflict.
    #[error("the call already exists")]
    AlreadyExists,
    /// Unprocessable: the conversation has no other member to ring.
    #[error("there is no one else in the conversation to call")]
    NoOneToCall,
    /// Conflict.
    #[error("the call has ended")]
    Ended,
    /// Conflict.
    #[error("the user is already in the call")]
    AlreadyJoined,
    /// Conflict.
    #[error("the call is not ringing for this user")]
    NotRinging,
    /// Conflict.
    #[error("the user is not in the call")]
    NotJoined,
    /// Forbidden: ending a group call for everyone is the initiator's, and only a member of
    /// the conversation may start a call in it.
    #[error("the user may not do that")]
    NotAllowed,
    /// Forbidden.
    #[error("the user is not a participant of the call")]
    NotAParticipant,
}

impl CallError {
    /// A stable snake_case machine code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "call_not_found",
            Self::AlreadyExists => "call_exists",
            Self::NoOneToCall => "no_one_to_call",
            Self::Ended => "call_ended",
            Self::AlreadyJoined => "already_joined",
            Self::NotRinging => "not_ringing",
            Self::NotJoined => "not_joined",
            Self::NotAllowed => "not_allowed",
            Self::NotAParticipant => "not_a_participant",
        }
    }
}

/// The whole call, small enough to snapshot and to render as the API's `Call`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Call {
    id: Option<CallId>,
    conversation_id: Option<ConversationId>,
    direct: bool,
    initiator: Option<UserId>,
    media: Option<CallMedia>,
    end_reason: Option<EndReason>,
    started_at: Option<DateTime<Utc>>,
    answered_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    duration_ms: Option<i64>,
    participants: Vec<Participant>,
}

impl Call {
    /// `None` until the call is started.
    pub fn id(&self) -> Option<CallId> {
        self.id
    }

    pub fn conversation_id(&self) -> Option<ConversationId> {
        self.conversation_id
    }

    /// The call is in a direct conversation.
    pub fn direct(&self) -> bool {
        self.direct
    }

    pub fn initiator(&self) -> Option<UserId> {
        self.initiator
    }

    pub fn media(&self) -> Option<CallMedia> {
        self.media
    }

    /// `None` until the call is started.
    pub fn state(&self) -> Option<CallState> {
        if self.started_at.is_none() {
            None
        } else if self.ended_at.is_some() {
            Some(CallState::Ended)
        } else if self.answered_at.is_some() {
            Some(CallState::Active)
        } else {
            Some(CallState::Ringing)
        }
    }

    pub fn end_reason(&self) -> Option<EndReason> {
        self.end_reason
    }

    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        self.started_at
    }

    pub fn answered_at(&self) -> Option<DateTime<Utc>> {
        self.answered_at
    }

    pub fn ended_at(&self) -> Option<DateTime<Utc>> {
        self.ended_at
    }

    /// From the answer to the end; `None` while the call goes on and when nobody answered.
    pub fn duration_ms(&self) -> Option<i64> {
        self.duration_ms
    }

    /// Initiator first, then the rung members, then late joiners in join order.
    pub fn participants(&self) -> &[Participant] {
        &self.participants
    }

    pub fn participant(&self, user_id: UserId) -> Option<&Participant> {
        self.participants
            .iter()
            .find(|participant| participant.user_id == user_id)
    }

    /// Ringing or joined: may exchange WebRTC signals in this call.
    pub fn is_participant(&self, user_id: UserId) -> bool {
        self.participant(user_id).is_some_and(|participant| {
            matches!(
                participant.state,
                ParticipantState::Ringing | ParticipantState::Joined
            )
        })
    }

    async fn emit(&mut self, sink: &EventSink<Self>, event: CallEvent) {
        sink.write(event, self).await;
    }
}

impl Aggregate for Call {
    const TYPE: &'static str = "call";
    type Command = CallCommand;
    type Event = CallEvent;
    type Error = CallError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            CallCommand::Start {
                call_id,
                conversation_id,
                direct,
                initiator,
                members,
                media,
                at,
                rings_until,
            } => {
                if self.started_at.is_some() {
                    return Err(CallError::AlreadyExists);
                }
                let event = CallEvent::Started {
                    call_id,
                    conversation_id,
                    direct,
                    initiator_id: initiator,
                    media,
                    ringing: to_ring(initiator, members)?,
                    started_at: at,
                    rings_until,
                };
                self.emit(sink, event).await;
            }
            CallCommand::Accept {
                user,
                member_of_conversation,
                at,
            } => {
                let event = self.accept(user, member_of_conversation, at)?;
                self.emit(sink, event).await;
            }
            CallCommand::Decline { user, at } => {
                self.require_ongoing()?;
                let participant = self.participant(user).ok_or(CallError::NotAParticipant)?;
                if participant.state != ParticipantState::Ringing {
                    return Err(CallError::NotRinging);
                }
                self.emit(sink, CallEvent::Declined { user_id: user, at })
                    .await;
                // An unanswered call ends once nobody is left to answer it.
                if self.answered_at.is_none() && self.in_state(ParticipantState::Ringing).is_empty()
                {
                    let ended = self.ending(EndReason::Declined, at);
                    self.emit(sink, ended).await;
                }
            }
            CallCommand::Leave { user, at } => {
                self.require_ongoing()?;
                if !self.is_joined(user) {
                    return Err(CallError::NotJoined);
                }
                self.emit(sink, CallEvent::ParticipantLeft { user_id: user, at })
                    .await;
                if self.direct || self.in_state(ParticipantState::Joined).is_empty() {
                    let ended = self.ending(self.hang_up_reason(), at);
                    self.emit(sink, ended).await;
                }
            }
            CallCommand::End { user, at } => {
                self.require_ongoing()?;
                let allowed = if self.direct {
                    self.is_joined(user)
                } else {
                    self.initiator == Some(user)
                };
                if !allowed {
                    return Err(CallError::NotAllowed);
                }
                let ended = self.ending(self.hang_up_reason(), at);
                self.emit(sink, ended).await;
            }
            CallCommand::SetMedia {
                user,
                audio,
                video,
                screen,
            } => {
                self.require_ongoing()?;
                let participant = self
                    .participant(user)
                    .filter(|participant| participant.state == ParticipantState::Joined)
                    .ok_or(CallError::NotJoined)?;
                let unchanged = (participant.audio, participant.video, participant.screen)
                    == (audio, video, screen);
                if !unchanged {
                    let event = CallEvent::MediaChanged {
                        user_id: user,
                        audio,
                        video,
                        screen,
                    };
                    self.emit(sink, event).await;
                }
            }
            CallCommand::RingTimeout { at } => match self.state() {
                None => return Err(CallError::NotFound),
                // A late or repeated timeout: the call is over, nothing to do.
                Some(CallState::Ended) => {}
                Some(CallState::Ringing) => {
                    let ended = self.ending(EndReason::Missed, at);
                    self.emit(sink, ended).await;
                }
                Some(CallState::Active) => {
                    let user_ids = self.in_state(ParticipantState::Ringing);
                    if !user_ids.is_empty() {
                        self.emit(sink, CallEvent::RingingMissed { user_ids, at })
                            .await;
                    }
                }
            },
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            CallEvent::Started {
                call_id,
                conversation_id,
                direct,
                initiator_id,
                media,
                ringing,
                started_at,
                ..
            } => {
                self.id = Some(call_id);
                self.conversation_id = Some(conversation_id);
                self.direct = direct;
                self.initiator = Some(initiator_id);
                self.media = Some(media);
                self.started_at = Some(started_at);
                let initiator = Participant {
                    user_id: initiator_id,
                    state: ParticipantState::Joined,
                    joined_at: Some(started_at),
                    left_at: None,
                    audio: true,
                    video: media == CallMedia::Video,
                    screen: false,
                };
                self.participants = std::iter::once(initiator)
                    .chain(ringing.into_iter().map(Participant::ringing))
                    .collect();
            }
            CallEvent::Accepted {
                user_id,
                answered,
                audio,
                video,
                at,
            } => {
                if answered {
                    self.answered_at = Some(at);
                }
                // A late joiner comes last in the list.
                if self.participant(user_id).is_none() {
                    self.participants.push(Participant::ringing(user_id));
                }
                if let Some(participant) = self.participant_mut(user_id) {
                    participant.state = ParticipantState::Joined;
                    participant.joined_at = Some(at);
                    participant.left_at = None;
                    participant.audio = audio;
                    participant.video = video;
                    participant.screen = false;
                }
            }
            CallEvent::Declined { user_id, .. } => {
                if let Some(participant) = self.participant_mut(user_id) {
                    participant.state = ParticipantState::Declined;
                }
            }
            CallEvent::ParticipantLeft { user_id, at } => {
                if let Some(participant) = self.participant_mut(user_id) {
                    participant.leave(at);
                }
            }
            CallEvent::MediaChanged {
                user_id,
                audio,
                video,
                screen,
            } => {
                if let Some(participant) = self.participant_mut(user_id) {
                    participant.audio = audio;
                    participant.video = video;
                    participant.screen = screen;
                }
            }
            CallEvent::RingingMissed { user_ids, .. } => self.mark_missed(&user_ids),
            CallEvent::Ended {
                reason,
                ended_at,
                duration_ms,
                missed,
                left,
            } => {
                self.end_reason = Some(reason);
                self.ended_at = Some(ended_at);
                self.duration_ms = duration_ms;
                self.mark_missed(&missed);
                for user_id in left {
                    if let Some(participant) = self.participant_mut(user_id) {
                        participant.leave(ended_at);
                    }
                }
            }
        }
    }
}

/// Everyone but the initiator, once each and by id. The initiator must be a member.
fn to_ring(initiator: UserId, members: Vec<UserId>) -> Result<Vec<UserId>, CallError> {
    if !members.contains(&initiator) {
        return Err(CallError::NotAllowed);
    }
    let mut ringing: Vec<UserId> = members
        .into_iter()
        .filter(|user_id| *user_id != initiator)
        .collect();
    ringing.sort();
    ringing.dedup();
    if ringing.is_empty() {
        return Err(CallError::NoOneToCall);
    }
    Ok(ringing)
}

impl Call {
    fn accept(
        &self,
        user: UserId,
        member_of_conversation: bool,
        at: DateTime<Utc>,
    ) -> Result<CallEvent, CallError> {
        self.require_ongoing()?;
        let media = self.media.ok_or(CallError::NotFound)?;
        let state = self.participant(user).map(Participant::state);
        if state == Some(ParticipantState::Joined) {
            return Err(CallError::AlreadyJoined);
        }
        // Only members of the conversation join its call, also those rung at the start.
        if !member_of_conversation {
            return Err(CallError::NotAParticipant);
        }
        // A group call takes late joiners and rejoiners; a direct call is answered only by
        // its other side, and only while it rings.
        if self.direct {
            match state {
                None => return Err(CallError::NotAParticipant),
                Some(ParticipantState::Ringing) => {}
                Some(_) => return Err(CallError::NotRinging),
            }
        }
        Ok(CallEvent::Accepted {
            user_id: user,
            answered: self.answered_at.is_none() && self.initiator != Some(user),
            audio: true,
            video: media == CallMedia::Video,
            at,
        })
    }

    /// The call exists and is not over.
    fn require_ongoing(&self) -> Result<(), CallError> {
        match self.state() {
            None => Err(CallError::NotFound),
            Some(CallState::Ended) => Err(CallError::Ended),
            Some(CallState::Ringing | CallState::Active) => Ok(()),
        }
    }

    fn is_joined(&self, user_id: UserId) -> bool {
        self.participant(user_id)
            .is_some_and(|participant| participant.state == ParticipantState::Joined)
    }

    fn in_state(&self, state: ParticipantState) -> Vec<UserId> {
        self.participants
            .iter()
            .filter(|participant| participant.state == state)
            .map(|participant| participant.user_id)
            .collect()
    }

    /// Hanging up an answered call completes it; before an answer it cancels it.
    fn hang_up_reason(&self) -> EndReason {
        if self.answered_at.is_some() {
            EndReason::Completed
        } else {
            EndReason::Cancelled
        }
    }

    fn ending(&self, reason: EndReason, at: DateTime<Utc>) -> CallEvent {
        let duration_ms = self
            .answered_at
            .map(|answered_at| (at - answered_at).num_milliseconds().max(0));
        CallEvent::Ended {
            reason,
            ended_at: at,
            duration_ms,
            missed: self.in_state(ParticipantState::Ringing),
            left: self.in_state(ParticipantState::Joined),
        }
    }

    fn participant_mut(&mut self, user_id: UserId) -> Option<&mut Participant> {
        self.participants
            .iter_mut()
            .find(|participant| participant.user_id == user_id)
    }

    fn mark_missed(&mut self, user_ids: &[UserId]) {
        for user_id in user_ids {
            if let Some(participant) = self.participant_mut(*user_id) {
                participant.state = ParticipantState::Missed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use cqrs_es::test::TestFramework;
    use uuid::Uuid;

    type CallTest = TestFramework<Call>;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default()
    }

    /// `seconds` after the call started.
    fn later(seconds: i64) -> DateTime<Utc> {
        at() + TimeDelta::seconds(seconds)
    }

    fn user(number: u128) -> UserId {
        UserId::from_uuid(Uuid::from_u128(number))
    }

    /// Alice calls; Bob and Carol are the other members at the start (of a direct
    /// conversation, Bob alone); Dave joins the conversation later; Eve is a stranger.
    struct People {
        call_id: CallId,
        conversation_id: ConversationId,
        alice: UserId,
        bob: UserId,
        carol: UserId,
        dave: UserId,
        eve: UserId,
    }

    fn people() -> People {
        People {
            call_id: CallId::new(),
            conversation_id: ConversationId::new(),
            alice: user(1),
            bob: user(2),
            carol: user(3),
            dave: user(4),
            eve: user(5),
        }
    }

    impl People {
        fn started(&self, direct: bool, media: CallMedia) -> CallEvent {
            CallEvent::Started {
                call_id: self.call_id,
                conversation_id: self.conversation_id,
                direct,
                initiator_id: self.alice,
                media,
                ringing: if direct {
                    vec![self.bob]
                } else {
                    vec![self.bob, self.carol]
                },
                started_at: at(),
                rings_until: at(),
            }
        }

        /// An audio call from Alice to Bob.
        fn direct(&self) -> CallEvent {
            self.started(true, CallMedia::Audio)
        }

        /// An audio call from Alice to Bob and Carol.
        fn group(&self) -> CallEvent {
            self.started(false, CallMedia::Audio)
        }
    }

    fn accepted(user_id: UserId, answered: bool, seconds: i64) -> CallEvent {
        CallEvent::Accepted {
            user_id,
            answered,
            audio: true,
            video: false,
            at: later(seconds),
        }
    }

    fn accept(user: UserId, seconds: i64) -> CallCommand {
        CallCommand::Accept {
            user,
            member_of_conversation: true,
            at: later(seconds),
        }
    }

    fn declined(user_id: UserId, seconds: i64) -> CallEvent {
        CallEvent::Declined {
            user_id,
            at: later(seconds),
        }
    }

    fn decline(user: UserId, seconds: i64) -> CallCommand {
        CallCommand::Decline {
            user,
            at: later(seconds),
        }
    }

    fn left(user_id: UserId, seconds: i64) -> CallEvent {
        CallEvent::ParticipantLeft {
            user_id,
            at: later(seconds),
        }
    }

    fn leave(user: UserId, seconds: i64) -> CallCommand {
        CallCommand::Leave {
            user,
            at: later(seconds),
        }
    }

    fn end(user: UserId, seconds: i64) -> CallCommand {
        CallCommand::End {
            user,
            at: later(seconds),
        }
    }

    fn media(user: UserId, audio: bool, video: bool, screen: bool) -> CallCommand {
        CallCommand::SetMedia {
            user,
            audio,
            video,
            screen,
        }
    }

    fn timeout(seconds: i64) -> CallCommand {
        CallCommand::RingTimeout { at: later(seconds) }
    }

    fn ended(
        reason: EndReason,
        seconds: i64,
        duration_ms: Option<i64>,
        missed: Vec<UserId>,
        left: Vec<UserId>,
    ) -> CallEvent {
        CallEvent::Ended {
            reason,
            ended_at: later(seconds),
            duration_ms,
            missed,
            left,
        }
    }

    /// The call after `given` and the events `command` produces.
    fn after(given: Vec<CallEvent>, command: CallCommand) -> Call {
        let produced = CallTest::with(())
            .given(given.clone())
            .when(command)
            .inspect_result()
            .unwrap_or_else(|error| panic!("{error}"));
        let mut call = Call::default();
        for event in given.into_iter().chain(produced) {
            call.apply(event);
        }
        call
    }

    fn participant(call: &Call, user_id: UserId) -> Participant {
        call.participant(user_id)
            .cloned()
            .unwrap_or_else(|| panic!("{user_id} is not listed"))
    }

    // Start

    #[test]
    fn a_call_rings_every_other_member_once() {
        let people = people();
        CallTest::with(())
            .given_no_previous_events()
            .when(CallCommand::Start {
                call_id: people.call_id,
                conversation_id: people.conversation_id,
                direct: false,
                initiator: people.alice,
                members: vec![people.carol, people.alice, people.bob, people.carol],
                media: CallMedia::Audio,
                at: at(),
                rings_until: at(),
            })
            .then_expect_events(vec![people.group()]);
    }

    #[test]
    fn the_initiator_joins_at_once_with_the_camera_on_in_a_video_call() {
        let people = people();
        let call = after(
            vec![],
            CallCommand::Start {
                call_id: people.call_id,
                conversation_id: people.conversation_id,
                direct: true,
                initiator: people.alice,
                members: vec![people.alice, people.bob],
                media: CallMedia::Video,
                at: at(),
                rings_until: at(),
            },
        );
        assert_eq!(call.id(), Some(people.call_id));
        assert_eq!(call.conversation_id(), Some(people.conversation_id));
        assert!(call.direct());
        assert_eq!(call.initiator(), Some(people.alice));
        assert_eq!(call.media(), Some(CallMedia::Video));
        assert_eq!(call.state(), Some(CallState::Ringing));
        assert_eq!(call.started_at(), Some(at()));
        assert_eq!(call.answered_at(), None);
        let alice = participant(&call, people.alice);
        assert_eq!(alice.state(), ParticipantState::Joined);
        assert_eq!(alice.joined_at(), Some(at()));
        assert_eq!(
            (alice.audio(), alice.video(), alice.screen()),
            (true, true, false)
        );
        let bob = participant(&call, people.bob);
        assert_eq!(bob.state(), ParticipantState::Ringing);
        assert_eq!(bob.joined_at(), None);
        assert_eq!(
            (bob.audio(), bob.video(), bob.screen()),
            (false, false, false)
        );
        assert!(call.is_participant(people.alice));
        assert!(call.is_participant(people.bob));
        assert!(!call.is_participant(people.eve));
    }

    #[test]
    fn a_call_starts_only_once() {
        let people = people();
        CallTest::with(())
            .given(vec![people.group()])
            .when(CallCommand::Start {
                call_id: people.call_id,
                conversation_id: people.conversation_id,
                direct: false,
                initiator: people.alice,
                members: vec![people.alice, people.bob],
                media: CallMedia::Audio,
                at: at(),
                rings_until: at(),
            })
            .then_expect_error(CallError::AlreadyExists);
    }

    #[test]
    fn a_call_needs_someone_to_ring() {
        let people = people();
        CallTest::with(())
            .given_no_previous_events()
            .when(CallCommand::Start {
                call_id: people.call_id,
                conversation_id: people.conversation_id,
                direct: false,
                initiator: people.alice,
                members: vec![people.alice, people.alice],
                media: CallMedia::Audio,
                at: at(),
                rings_until: at(),
            })
            .then_expect_error(CallError::NoOneToCall);
    }

    #[test]
    fn only_a_member_of_the_conversation_starts_a_call() {
        let people = people();
        CallTest::with(())
            .given_no_previous_events()
            .when(CallCommand::Start {
                call_id: people.call_id,
                conversation_id: people.conversation_id,
                direct: true,
                initiator: people.eve,
                members: vec![people.alice, people.bob],
                media: CallMedia::Audio,
                at: at(),
                rings_until: at(),
            })
            .then_expect_error(CallError::NotAllowed);
    }

    #[test]
    fn commands_on_a_call_that_never_started_find_nothing() {
        let people = people();
        let commands = [
            accept(people.bob, 1),
            decline(people.bob, 1),
            leave(people.alice, 1),
            end(people.alice, 1),
            media(people.alice, true, true, false),
            timeout(45),
        ];
        for command in commands {
            CallTest::with(())
                .given_no_previous_events()
                .when(command)
                .then_expect_error(CallError::NotFound);
        }
    }

    // Accept

    #[test]
    fn the_callee_answers_a_ringing_call() {
        let people = people();
        CallTest::with(())
            .given(vec![people.direct()])
            .when(accept(people.bob, 5))
            .then_expect_events(vec![accepted(people.bob, true, 5)]);
        let call = after(vec![people.direct()], accept(people.bob, 5));
        assert_eq!(call.state(), Some(CallState::Active));
        assert_eq!(call.answered_at(), Some(later(5)));
        let bob = participant(&call, people.bob);
        assert_eq!(bob.state(), ParticipantState::Joined);
        assert_eq!(bob.joined_at(), Some(later(5)));
        assert!(bob.audio() && !bob.video() && !bob.screen());
    }

    #[test]
    fn a_video_call_is_answered_with_the_camera_on() {
        let people = people();
        CallTest::with(())
            .given(vec![people.started(true, CallMedia::Video)])
            .when(accept(people.bob, 5))
            .then_expect_events(vec![CallEvent::Accepted {
                user_id: people.bob,
                answered: true,
                audio: true,
                video: true,
                at: later(5),
            }]);
    }

    #[test]
    fn a_second_acceptor_joins_without_answering_again() {
        let people = people();
        let history = vec![people.group(), accepted(people.bob, true, 5)];
        CallTest::with(())
            .given(history.clone())
            .when(accept(people.carol, 9))
            .then_expect_events(vec![accepted(people.carol, false, 9)]);
        let call = after(history, accept(people.carol, 9));
        assert_eq!(call.answered_at(), Some(later(5)));
    }

    #[test]
    fn an_ended_call_cannot_be_accepted() {
        let people = people();
        CallTest::with(())
            .given(vec![
                people.group(),
                ended(
                    EndReason::Missed,
                    45,
                    None,
                    vec![people.bob, people.carol],
                    vec![people.alice],
                ),
            ])
            .when(accept(people.bob, 50))
            .then_expect_error(CallError::Ended);
    }

    #[test]
    fn accepting_twice_is_refused() {
        let people = people();
        let history = vec![people.group(), accepted(people.bob, true, 5)];
        CallTest::with(())
            .given(history.clone())
            .when(accept(people.bob, 6))
            .then_expect_error(CallError::AlreadyJoined);
        CallTest::with(())
            .given(history)
            .when(accept(people.alice, 6))
            .then_expect_error(CallError::AlreadyJoined);
    }

    #[test]
    fn strangers_cannot_accept() {
        let people = people();
        CallTest::with(())
            .given(vec![people.group()])
            .when(CallCommand::Accept {
                user: people.eve,
                member_of_conversation: false,
                at: later(5),
            })
            .then_expect_error(CallError::NotAParticipant);
        // A direct call is between its two sides, whatever the caller claims.
        CallTest::with(())
            .given(vec![people.direct()])
            .when(accept(people.eve, 5))
            .then_expect_error(CallError::NotAParticipant);
    }

    #[test]
    fn a_rung_member_removed_from_the_conversation_cannot_join() {
        let people = people();
        CallTest::with(())
            .given(vec![people.group()])
            .when(CallCommand::Accept {
                user: people.bob,
                member_of_conversation: false,
                at: later(5),
            })
            .then_expect_error(CallError::NotAParticipant);
    }

    #[test]
    fn a_member_who_joined_the_group_later_joins_its_call() {
        let people = people();
        let history = vec![people.group(), accepted(people.bob, true, 5)];
        CallTest::with(())
            .given(history.clone())
            .when(accept(people.dave, 20))
            .then_expect_events(vec![accepted(people.dave, false, 20)]);
        let call = after(history, accept(people.dave, 20));
        let listed: Vec<UserId> = call
            .participants()
            .iter()
            .map(Participant::user_id)
            .collect();
        assert_eq!(
            listed,
            vec![people.alice, people.bob, people.carol, people.dave]
        );
        assert_eq!(
            participant(&call, people.dave).state(),
            ParticipantState::Joined
        );
        // A late joiner may also be the one who answers.
        CallTest::with(())
            .given(vec![people.group()])
            .when(accept(people.dave, 20))
            .then_expect_events(vec![accepted(people.dave, true, 20)]);
    }

    #[test]
    fn a_group_participant_who_left_declined_or_missed_may_join_again() {
        let people = people();
        let history = vec![
            people.group(),
            accepted(people.bob, true, 5),
            accepted(people.carol, false, 6),
            left(people.bob, 30),
        ];
        CallTest::with(())
            .given(history.clone())
            .when(accept(people.bob, 40))
            .then_expect_events(vec![accepted(people.bob, false, 40)]);
        let call = after(history, accept(people.bob, 40));
        let bob = participant(&call, people.bob);
        assert_eq!(bob.state(), ParticipantState::Joined);
        assert_eq!(bob.joined_at(), Some(later(40)));
        assert_eq!(bob.left_at(), None);

        CallTest::with(())
            .given(vec![
                people.group(),
                declined(people.bob, 3),
                accepted(people.carol, true, 5),
            ])
            .when(accept(people.bob, 40))
            .then_expect_events(vec![accepted(people.bob, false, 40)]);
        CallTest::with(())
            .given(vec![
                people.group(),
                accepted(people.carol, true, 5),
                CallEvent::RingingMissed {
                    user_ids: vec![people.bob],
                    at: later(45),
                },
            ])
            .when(accept(people.bob, 50))
            .then_expect_events(vec![accepted(people.bob, false, 50)]);
    }

    #[test]
    fn the_initiator_rejoins_a_group_call_that_went_on_without_them() {
        let people = people();
        CallTest::with(())
            .given(vec![
                people.group(),
                accepted(people.bob, true, 5),
                left(people.alice, 30),
            ])
            .when(accept(people.alice, 40))
            .then_expect_events(vec![accepted(people.alice, false, 40)]);
    }

    #[test]
    fn a_declined_direct_call_is_over() {
        let people = people();
        CallTest::with(())
            .given(vec![
                people.direct(),
                declined(people.bob, 3),
                ended(EndReason::Declined, 3, None, vec![], vec![people.alice]),
            ])
            .when(accept(people.bob, 4))
            .then_expect_error(CallError::Ended);
    }

    #[test]
    fn a_direct_call_is_answered_only_while_it_rings() {
        // Unreachable with a two-member direct conversation, where a decline ends the call;
        // the rule still holds if a direct call ever rings more than one user.
        let people = people();
        let three_way = CallEvent::Started {
            call_id: people.call_id,
            conversation_id: people.conversation_id,
            direct: true,
            initiator_id: people.alice,
            media: CallMedia::Audio,
            ringing: vec![people.bob, people.carol],
            started_at: at(),
            rings_until: at(),
        };
        CallTest::with(())
            .given(vec![three_way, declined(people.bob, 3)])
            .when(accept(people.bob, 4))
            .then_expect_error(CallError::NotRinging);
    }

    // Decline

    #[test]
    fn declining_a_direct_call_ends_it() {
        let people = people();
        CallTest::with(())
            .given(vec![people.direct()])
            .when(decline(people.bob, 3))
            .then_expect_events(vec![
                declined(people.bob, 3),
                ended(EndReason::Declined, 3, None, vec![], vec![people.alice]),
            ]);
        let call = after(vec![people.direct()], decline(people.bob, 3));
        assert_eq!(call.state(), Some(CallState::Ended));
        assert_eq!(call.end_reason(), Some(EndReason::Declined));
        assert_eq!(call.duration_ms(), None);
        assert_eq!(
            participant(&call, people.bob).state(),
            ParticipantState::Declined
        );
        assert_eq!(participant(&call, people.bob).left_at(), None);
        assert_eq!(participant(&call, people.alice).left_at(), Some(later(3)));
    }

    #[test]
    fn a_group_call_rings_on_while_someone_has_not_declined() {
        let people = people();
        CallTest::with(())
            .given(vec![people.group()])
            .when(decline(people.bob, 3))
            .then_expect_events(vec![declined(people.bob, 3)]);
        let call = after(vec![people.group()], decline(people.bob, 3));
        assert_eq!(call.state(), Some(CallState::Ringing));
        assert!(!call.is_participant(people.bob));
    }

    #[test]
    fn a_group_call_everyone_declines_ends_declined() {
        let people = people();
        CallTest::with(())
            .given(vec![people.group(), declined(people.bob, 3)])
            .when(decline(people.carol, 4))
            .then_expect_events(vec![
                declined(people.carol, 4),
                ended(EndReason::Declined, 4, None, vec![], vec![people.alice]),
            ]);
    }

    #[test]
    fn the_last_decline_in_an_answered_group_call_does_not_end_it() {
        let people = people();
        CallTest::with(())
            .given(vec![people.group(), accepted(people.bob, true, 5)])
            .when(decline(people.carol, 6))
            .then_expect_events(vec![declined(people.carol, 6)]);
    }

    #[test]
    fn only_a_ringing_participant_declines() {
        let people = people();
        let history = vec![people.group(), accepted(people.bob, true, 5)];
        CallTest::with(())
            .given(history.clone())
            .when(decline(people.bob, 6))
            .then_expect_error(CallError::NotRinging);
        CallTest::with(())
            .given(history.clone())
            .when(decline(people.alice, 6))
            .then_expect_error(CallError::NotRinging);
        CallTest::with(())
            .given(history)
            .when(decline(people.eve, 6))
            .then_expect_error(CallError::NotAParticipant);
    }

    #[test]
    fn an_ended_call_cannot_be_declined() {
        let people = people();
        CallTest::with(())
            .given(vec![
                people.group(),
                ended(
                    EndReason::Cancelled,
                    2,
                    None,
                    vec![people.bob, people.carol],
                    vec![people.alice],
                ),
            ])
            .when(decline(people.bob, 3))
            .then_expect_error(CallError::Ended);
    }

    // Leave

    #[test]
    fn leaving_a_direct_call_ends_it_completed() {
        let people = people();
        let history = vec![people.direct(), accepted(people.bob, true, 5)];
        CallTest::with(())
            .given(history.clone())
            .when(leave(people.bob, 65))
            .then_expect_events(vec![
                left(people.bob, 65),
                ended(
                    EndReason::Completed,
                    65,
                    Some(60_000),
                    vec![],
                    vec![people.alice],
                ),
            ]);
        CallTest::with(())
            .given(history)
            .when(leave(people.alice, 65))
            .then_expect_events(vec![
                left(people.alice, 65),
                ended(
                    EndReason::Completed,
                    65,
                    Some(60_000),
                    vec![],
                    vec![people.bob],
                ),
            ]);
    }

    #[test]
    fn the_last_to_leave_a_group_call_ends_it() {
        let people = people();
        CallTest::with(())
            .given(vec![
                people.group(),
                accepted(people.bob, true, 5),
                left(people.alice, 30),
            ])
            .when(leave(people.bob, 65))
            .then_expect_events(vec![
                left(people.bob, 65),
                ended(
                    EndReason::Completed,
                    65,
                    Some(60_000),
                    vec![people.carol],
                    vec![],
                ),
            ]);
    }

    #[test]
    fn a_group_call_goes_on_while_someone_is_in_it() {
        let people = people();
        let history = vec![people.group(), accepted(people.bob, true, 5)];
        CallTest::with(())
            .given(history.clone())
            .when(leave(people.alice, 30))
            .then_expect_events(vec![left(people.alice, 30)]);
        let call = after(history, leave(people.alice, 30));
        assert_eq!(call.state(), Some(CallState::Active));
        let alice = participant(&call, people.alice);
        assert_eq!(alice.state(), ParticipantState::Left);
        assert_eq!(alice.left_at(), Some(later(30)));
        assert!(!alice.audio() && !alice.video() && !alice.screen());
        assert!(!call.is_participant(people.alice));
    }

    #[test]
    fn leaving_a_call_you_are_not_in_is_refused() {
        let people = people();
        let history = vec![
            people.group(),
            accepted(people.bob, true, 5),
            left(people.alice, 30),
        ];
        for user in [people.carol, people.alice, people.eve] {
            CallTest::with(())
                .given(history.clone())
                .when(leave(user, 40))
                .then_expect_error(CallError::NotJoined);
        }
        CallTest::with(())
            .given(vec![
                people.direct(),
                declined(people.bob, 3),
                ended(EndReason::Declined, 3, None, vec![], vec![people.alice]),
            ])
            .when(leave(people.alice, 4))
            .then_expect_error(CallError::Ended);
    }

    #[test]
    fn an_initiator_who_hangs_up_before_an_answer_cancels_the_call() {
        let people = people();
        CallTest::with(())
            .given(vec![people.direct()])
            .when(leave(people.alice, 10))
            .then_expect_events(vec![
                left(people.alice, 10),
                ended(EndReason::Cancelled, 10, None, vec![people.bob], vec![]),
            ]);
        CallTest::with(())
            .given(vec![people.group(), declined(people.bob, 3)])
            .when(leave(people.alice, 10))
            .then_expect_events(vec![
                left(people.alice, 10),
                ended(EndReason::Cancelled, 10, None, vec![people.carol], vec![]),
            ]);
    }

    // End

    #[test]
    fn either_side_ends_a_direct_call() {
        let people = people();
        let history = vec![people.direct(), accepted(people.bob, true, 5)];
        for user in [people.alice, people.bob] {
            CallTest::with(())
                .given(history.clone())
                .when(end(user, 7))
                .then_expect_events(vec![ended(
                    EndReason::Completed,
                    7,
                    Some(2_000),
                    vec![],
                    vec![people.alice, people.bob],
                )]);
        }
    }

    #[test]
    fn the_ringing_side_of_a_direct_call_declines_rather_than_ends() {
        let people = people();
        CallTest::with(())
            .given(vec![people.direct()])
            .when(end(people.bob, 3))
            .then_expect_error(CallError::NotAllowed);
    }

    #[test]
    fn the_initiator_cancels_a_direct_call_by_ending_it_before_an_answer() {
        let people = people();
        CallTest::with(())
            .given(vec![people.direct()])
            .when(end(people.alice, 3))
            .then_expect_events(vec![ended(
                EndReason::Cancelled,
                3,
                None,
                vec![people.bob],
                vec![people.alice],
            )]);
    }

    #[test]
    fn only_the_initiator_ends_a_group_call_for_everyone() {
        let people = people();
        let history = vec![
            people.group(),
            accepted(people.bob, true, 5),
            accepted(people.carol, false, 6),
        ];
        for user in [people.bob, people.eve] {
            CallTest::with(())
                .given(history.clone())
                .when(end(user, 20))
                .then_expect_error(CallError::NotAllowed);
        }
        CallTest::with(())
            .given(history)
            .when(end(people.alice, 20))
            .then_expect_events(vec![ended(
                EndReason::Completed,
                20,
                Some(15_000),
                vec![],
                vec![people.alice, people.bob, people.carol],
            )]);
    }

    #[test]
    fn the_initiator_ends_a_group_call_also_after_leaving_it() {
        let people = people();
        CallTest::with(())
            .given(vec![
                people.group(),
                accepted(people.bob, true, 5),
                left(people.alice, 10),
            ])
            .when(end(people.alice, 20))
            .then_expect_events(vec![ended(
                EndReason::Completed,
                20,
                Some(15_000),
                vec![people.carol],
                vec![people.bob],
            )]);
    }

    #[test]
    fn ending_an_ended_call_is_refused() {
        let people = people();
        CallTest::with(())
            .given(vec![
                people.direct(),
                accepted(people.bob, true, 5),
                ended(
                    EndReason::Completed,
                    7,
                    Some(2_000),
                    vec![],
                    vec![people.alice, people.bob],
                ),
            ])
            .when(end(people.alice, 8))
            .then_expect_error(CallError::Ended);
    }

    // Set media

    #[test]
    fn a_joined_participant_sets_their_media() {
        let people = people();
        let history = vec![people.group(), accepted(people.bob, true, 5)];
        CallTest::with(())
            .given(history.clone())
            .when(media(people.bob, false, true, true))
            .then_expect_events(vec![CallEvent::MediaChanged {
                user_id: people.bob,
                audio: false,
                video: true,
                screen: true,
            }]);
        let call = after(history, media(people.bob, false, true, true));
        let bob = participant(&call, people.bob);
        assert_eq!(
            (bob.audio(), bob.video(), bob.screen()),
            (false, true, true)
        );
    }

    #[test]
    fn unchanged_media_writes_nothing() {
        let people = people();
        CallTest::with(())
            .given(vec![people.group(), accepted(people.bob, true, 5)])
            .when(media(people.bob, true, false, false))
            .then_expect_events(vec![]);
    }

    #[test]
    fn only_a_joined_participant_sets_media() {
        let people = people();
        let history = vec![
            people.group(),
            accepted(people.bob, true, 5),
            left(people.alice, 10),
        ];
        for user in [people.carol, people.alice, people.eve] {
            CallTest::with(())
                .given(history.clone())
                .when(media(user, true, true, false))
                .then_expect_error(CallError::NotJoined);
        }
        CallTest::with(())
            .given(vec![
                people.direct(),
                accepted(people.bob, true, 5),
                ended(
                    EndReason::Completed,
                    7,
                    Some(2_000),
                    vec![],
                    vec![people.alice, people.bob],
                ),
            ])
            .when(media(people.bob, false, false, false))
            .then_expect_error(CallError::Ended);
    }

    // Ring timeout

    #[test]
    fn an_unanswered_call_ends_missed_at_the_ring_timeout() {
        let people = people();
        CallTest::with(())
            .given(vec![people.group(), declined(people.bob, 3)])
            .when(timeout(45))
            .then_expect_events(vec![ended(
                EndReason::Missed,
                45,
                None,
                vec![people.carol],
                vec![people.alice],
            )]);
        let call = after(vec![people.direct()], timeout(45));
        assert_eq!(call.state(), Some(CallState::Ended));
        assert_eq!(call.end_reason(), Some(EndReason::Missed));
        assert_eq!(call.duration_ms(), None);
        assert_eq!(
            participant(&call, people.bob).state(),
            ParticipantState::Missed
        );
        assert!(!call.is_participant(people.bob));
    }

    #[test]
    fn the_ring_timeout_marks_those_still_ringing_in_an_active_call_missed() {
        let people = people();
        let history = vec![people.group(), accepted(people.bob, true, 5)];
        CallTest::with(())
            .given(history.clone())
            .when(timeout(45))
            .then_expect_events(vec![CallEvent::RingingMissed {
                user_ids: vec![people.carol],
                at: later(45),
            }]);
        let call = after(history, timeout(45));
        assert_eq!(call.state(), Some(CallState::Active));
        assert_eq!(
            participant(&call, people.carol).state(),
            ParticipantState::Missed
        );
    }

    #[test]
    fn a_late_or_repeated_ring_timeout_writes_nothing() {
        let people = people();
        CallTest::with(())
            .given(vec![
                people.direct(),
                ended(
                    EndReason::Missed,
                    45,
                    None,
                    vec![people.bob],
                    vec![people.alice],
                ),
            ])
            .when(timeout(45))
            .then_expect_events(vec![]);
        CallTest::with(())
            .given(vec![
                people.group(),
                accepted(people.bob, true, 5),
                CallEvent::RingingMissed {
                    user_ids: vec![people.carol],
                    at: later(45),
                },
            ])
            .when(timeout(45))
            .then_expect_events(vec![]);
    }

    // State

    #[test]
    fn an_ended_call_knows_its_duration_and_when_each_participant_left() {
        let people = people();
        let history = vec![
            people.group(),
            accepted(people.bob, true, 5),
            left(people.alice, 30),
            CallEvent::MediaChanged {
                user_id: people.bob,
                audio: true,
                video: true,
                screen: true,
            },
        ];
        let call = after(history, end(people.alice, 65));
        assert_eq!(call.state(), Some(CallState::Ended));
        assert_eq!(call.end_reason(), Some(EndReason::Completed));
        assert_eq!(call.answered_at(), Some(later(5)));
        assert_eq!(call.ended_at(), Some(later(65)));
        assert_eq!(call.duration_ms(), Some(60_000));
        let alice = participant(&call, people.alice);
        assert_eq!(alice.state(), ParticipantState::Left);
        assert_eq!(alice.left_at(), Some(later(30)));
        let bob = participant(&call, people.bob);
        assert_eq!(bob.state(), ParticipantState::Left);
        assert_eq!(bob.joined_at(), Some(later(5)));
        assert_eq!(bob.left_at(), Some(later(65)));
        assert_eq!(
            (bob.audio(), bob.video(), bob.screen()),
            (false, false, false)
        );
        let carol = participant(&call, people.carol);
        assert_eq!(carol.state(), ParticipantState::Missed);
        assert_eq!((carol.joined_at(), carol.left_at()), (None, None));
        for user in [people.alice, people.bob, people.carol] {
            assert!(!call.is_participant(user));
        }
    }

    #[test]
    fn the_duration_never_goes_below_zero() {
        let people = people();
        let call = after(
            vec![people.direct(), accepted(people.bob, true, 5)],
            end(people.alice, 4),
        );
        assert_eq!(call.duration_ms(), Some(0));
    }

    #[test]
    fn a_call_survives_a_snapshot() {
        let people = people();
        let call = after(
            vec![
                people.started(false, CallMedia::Video),
                accepted(people.bob, true, 5),
            ],
            accept(people.dave, 9),
        );
        let restored = serde_json::to_value(&call)
            .and_then(serde_json::from_value::<Call>)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(restored, call);
    }

    #[test]
    fn error_codes_are_pinned() {
        let codes: Vec<&str> = [
            CallError::NotFound,
            CallError::AlreadyExists,
            CallError::NoOneToCall,
            CallError::Ended,
            CallError::AlreadyJoined,
            CallError::NotRinging,
            CallError::NotJoined,
            CallError::NotAllowed,
            CallError::NotAParticipant,
        ]
        .iter()
        .map(CallError::code)
        .collect();
        assert_eq!(
            codes,
            vec![
                "call_not_found",
                "call_exists",
                "no_one_to_call",
                "call_ended",
                "already_joined",
                "not_ringing",
                "not_joined",
                "not_allowed",
                "not_a_participant",
            ]
        );
    }

    #[test]
    fn wire_names_are_the_apis() {
        let names: Vec<String> = [
            serde_json::to_value(CallMedia::Video),
            serde_json::to_value(CallState::Active),
            serde_json::to_value(EndReason::Cancelled),
            serde_json::to_value(ParticipantState::Missed),
        ]
        .into_iter()
        .map(|value| value.map(|value| value.as_str().unwrap_or_default().to_owned()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(names, vec!["video", "active", "cancelled", "missed"]);
        assert_eq!(CallMedia::Video.as_str(), "video");
        assert_eq!(CallState::Active.as_str(), "active");
        assert_eq!(EndReason::Cancelled.as_str(), "cancelled");
        assert_eq!(ParticipantState::Missed.as_str(), "missed");
    }

    #[test]
    fn event_types_and_versions_are_pinned() {
        let people = people();
        let samples = [
            people.group(),
            accepted(people.bob, true, 5),
            declined(people.carol, 6),
            left(people.bob, 7),
            CallEvent::MediaChanged {
                user_id: people.alice,
                audio: false,
                video: false,
                screen: true,
            },
            CallEvent::RingingMissed {
                user_ids: vec![people.carol],
                at: later(45),
            },
            ended(
                EndReason::Completed,
                50,
                Some(45_000),
                vec![],
                vec![people.alice],
            ),
        ];
        let seen: Vec<(String, String)> = samples
            .iter()
            .map(|event| (event.event_type(), event.event_version()))
            .collect();
        let pinned: Vec<(String, String)> = CallEvent::TYPES
            .iter()
            .map(|(name, version)| ((*name).to_owned(), (*version).to_owned()))
            .collect();
        assert_eq!(seen, pinned);
    }
}
