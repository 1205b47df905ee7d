//! The client side of the WebSocket protocol (RFC 6455), as much as an idle connection uses:
//! the opening handshake, reading the server's frames, and answering its pings and close.
//!
//! The idle scenario holds tens of thousands of sockets per process, and a broadcast makes
//! every one of them readable at once. Read through tokio and tungstenite, each frame woke a
//! task of its own and went through a buffer zeroed at every read: on this 2-core box, which
//! the servers share, that was a seventh of all CPU time during the broadcast. Here one
//! thread reads every socket of the process ([`super::hold`]) and decodes the frames in place.

use anyhow::{Context, bail};
use std::ops::ControlFlow;

/// Frames longer than this are a protocol error here (the server's own limit is far lower).
const MAX_PAYLOAD: u64 = 16 * 1024 * 1024;
/// A handshake response longer than this is refused.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The opening handshake's request, and the key its response must answer.
pub struct Handshake {
    pub request: String,
    key: String,
}

impl Handshake {
    /// A GET on `path` at `host` (with its port), carrying the access token as a bearer.
    pub fn new(host: &str, path: &str, token: &str) -> Self {
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        Self { request, key }
    }

    /// Checks the response's head once `received` holds all of it: `Ok(Some(n))` gives its
    /// length (the frames follow it), `Ok(None)` asks for more bytes.
    pub fn response(&self, received: &[u8]) -> anyhow::Result<Option<usize>> {
        let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") else {
            if received.len() > MAX_RESPONSE_HEAD {
                bail!("the handshake response's head is over {MAX_RESPONSE_HEAD} bytes");
            }
            return Ok(None);
        };
        let head =
            std::str::from_utf8(&received[..end]).context("the handshake response is not UTF-8")?;
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            bail!("the handshake was answered with {status:?}, not 101");
        }
        let expected =
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let accept = lines.find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-accept")
                .then(|| value.trim())
        });
        match accept {
            Some(accept) if accept == expected => Ok(Some(end + 4)),
            Some(accept) => bail!("Sec-WebSocket-Accept is {accept:?}, not {expected:?}"),
            None => bail!("the handshake response has no Sec-WebSocket-Accept"),
        }
    }
}

/// One frame from the server: servers never mask theirs.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub fin: bool,
    pub opcode: u8,
    pub payload: &'a [u8],
}

/// The frame at the start of `bytes` and its length in bytes, or `None` when `bytes` does not
/// hold all of it yet.
pub fn decode(bytes: &[u8]) -> anyhow::Result<Option<(Frame<'_>, usize)>> {
    let [first, second, rest @ ..] = bytes else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        bail!("a frame sets reserved bits (no extension was agreed)");
    }
    if second & 0x80 != 0 {
        bail!("the server masked a frame");
    }
    let (length, header) = match second & 0x7F {
        126 => match rest {
            [high, low, ..] => (u64::from(u16::from_be_bytes([*high, *low])), 4),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(length) => {
                let mut eight = [0; 8];
                eight.copy_from_slice(length);
                (u64::from_be_bytes(eight), 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if length > MAX_PAYLOAD {
        bail!("a frame of {length} bytes, over the {MAX_PAYLOAD} this client takes");
    }
    let end = header + length as usize;
    let Some(payload) = bytes.get(header..end) else {
        return Ok(None);
    };
    Ok(Some((
        Frame {
            fin: first & 0x80 != 0,
            opcode: first & 0x0F,
            payload,
        },
        end,
    )))
}

/// A client frame: final, masked with `mask` as every client frame must be.
pub fn encode(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match payload.len() {
        short @ 0..=125 => out.push(0x80 | short as u8),
        medium @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(medium as u16).to_be_bytes());
        }
        long => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(long as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(
        payload
            .iter()
            .zip(mask.iter().cycle())
            .map(|(byte, key)| byte ^ key),
    );
}

/// A fresh masking key.
fn mask() -> [u8; 4] {
    let random = uuid::Uuid::new_v4();
    let bytes = random.as_bytes();
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

/// The frames of one connection, turned into messages: text goes to the caller, pings and a
/// close get their answers.
#[derive(Default)]
pub struct Incoming {
    /// A fragmented message's opcode and the payload so far.
    message: Option<(u8, Vec<u8>)>,
    /// The server sent a close frame (it has been answered).
    pub closed: bool,
}

impl Incoming {
    /// Takes the complete frames at the start of `bytes`: each text message goes to `on_text`,
    /// and each answer (a pong for a ping, a close for a close) is appended to `replies`,
    /// masked, ready to write. Returns how many bytes it used: the rest starts a frame not
    /// yet complete, or comes after a text message `on_text` broke at. Nothing is read past
    /// a close.
    pub fn take(
        &mut self,
        bytes: &[u8],
        replies: &mut Vec<u8>,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> anyhow::Result<usize> {
        let mut used = 0;
        while !self.closed {
            let Some((frame, length)) = decode(&bytes[used..])? else {
                break;
            };
            used += length;
            match frame.opcode {
                PING => encode(PONG, frame.payload, mask(), replies),
                PONG => {}
                CLOSE => {
                    // The answer echoes the status code, if the server gave one.
                    encode(
                        CLOSE,
                        frame.payload.get(..2).unwrap_or(&[]),
                        mask(),
                        replies,
                    );
                    self.closed = true;
                }
                TEXT | BINARY if self.message.is_some() => {
                    bail!("a new message began inside a fragmented one")
                }
                TEXT | BINARY if frame.fin => {
                    if frame.opcode == TEXT && on_text(text(frame.payload)?).is_break() {
                        break;
                    }
                }
                TEXT | BINARY => self.message = Some((frame.opcode, frame.payload.to_vec())),
                CONTINUATION => {
                    let Some((opcode, payload)) = self.message.as_mut() else {
                        bail!("a continuation frame with no message to continue");
                    };
                    payload.extend_from_slice(frame.payload);
                    if payload.len() as u64 > MAX_PAYLOAD {
                        bail!("a message over the {MAX_PAYLOAD} bytes this client takes");
                    }
                    if frame.fin {
                        let opcode = *opcode;
                        if let Some((_, payload)) = self.message.take()
                            && opcode == TEXT
                            && on_text(text(&payload)?).is_break()
                        {
                            break;
                        }
                    }
                }
                other => bail!("a frame with the unknown opcode {other:#x}"),
            }
        }
        Ok(used)
    }
}

fn text(payload: &[u8]) -> anyhow::Result<&str> {
    std::str::from_utf8(payload).context("a text frame that is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![first];
        match payload.len() {
            short @ 0..=125 => frame.push(short as u8),
            medium @ 126..=0xFFFF => {
                frame.push(126);
                frame.extend_from_slice(&(medium as u16).to_be_bytes());
            }
            long => {
                frame.push(127);
                frame.extend_from_slice(&(long as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(payload);
        frame
    }

    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        let (length, header) = match frame[1] & 0x7F {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            short => (short as usize, 2),
        };
        let mask = &frame[header..header + 4];
        let payload = frame[header + 4..header + 4 + length]
            .iter()
            .zip(mask.iter().cycle())
            .map(|(byte, key)| byte ^ key)
            .collect();
        (frame[0], payload)
    }

    #[test]
    fn frames_of_every_length_form_decode_only_once_complete() {
        for length in [0, 5, 125, 126, 300, 70_000] {
            let payload = vec![b'x'; length];
            let frame = server_frame(0x81, &payload);
            for cut in 0..frame.len() {
                assert_eq!(
                    decode(&frame[..cut]).unwrap_or_else(|e| panic!("{e}")),
                    None
                );
            }
            let (decoded, used) = decode(&frame)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("a complete frame of {length}"));
            assert_eq!(used, frame.len());
            assert_eq!(
                decoded,
                Frame {
                    fin: true,
                    opcode: TEXT,
                    payload: &payload
                }
            );
        }
    }

    #[test]
    fn masked_or_reserved_frames_are_refused() {
        assert!(decode(&[0x81, 0x81, 1, 2, 3, 4, b'a']).is_err());
        assert!(decode(&[0xC1, 0x01, b'a']).is_err());
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(MAX_PAYLOAD + 1).to_be_bytes());
        assert!(decode(&huge).is_err());
    }

    #[test]
    fn text_is_delivered_pings_answered_and_fragments_joined() {
        let mut bytes = server_frame(0x81, b"{\"type\":\"ready\"}");
        bytes.extend(server_frame(0x89, b"p1"));
        bytes.extend(server_frame(0x01, b"hel"));
        bytes.extend(server_frame(0x80, b"lo"));
        let partial = server_frame(0x81, b"next");
        bytes.extend(&partial[..3]);
        let mut incoming = Incoming::default();
        let mut replies = Vec::new();
        let mut texts = Vec::new();
        let used = incoming
            .take(&bytes, &mut replies, |text| {
                texts.push(text.to_owned());
                ControlFlow::Continue(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(texts, ["{\"type\":\"ready\"}", "hello"]);
        assert_eq!(used, bytes.len() - 3);
        assert_eq!(unmask(&replies), (0x8A, b"p1".to_vec()));
        assert!(!incoming.closed);
    }

    #[test]
    fn reading_stops_after_the_text_message_the_caller_breaks_at() {
        let mut bytes = server_frame(0x81, b"ready");
        let after = server_frame(0x81, b"later");
        bytes.extend(&after);
        let mut replies = Vec::new();
        let used = Incoming::default()
            .take(&bytes, &mut replies, |_| ControlFlow::Break(()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(used, bytes.len() - after.len());
    }

    #[test]
    fn a_close_is_answered_with_its_code_and_ends_reading() {
        let mut bytes = server_frame(0x88, &[0x0F, 0xA8, b'b', b'y', b'e']);
        bytes.extend(server_frame(0x81, b"after"));
        let mut incoming = Incoming::default();
        let mut replies = Vec::new();
        let mut texts = 0;
        incoming
            .take(&bytes, &mut replies, |_| {
                texts += 1;
                ControlFlow::Continue(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(incoming.closed);
        assert_eq!(texts, 0);
        assert_eq!(unmask(&replies), (0x88, vec![0x0F, 0xA8]));
    }

    #[test]
    fn a_stray_continuation_or_unknown_opcode_is_an_error() {
        let mut replies = Vec::new();
        assert!(
            Incoming::default()
                .take(&server_frame(0x80, b"x"), &mut replies, |_| {
                    ControlFlow::Continue(())
                })
                .is_err()
        );
        assert!(
            Incoming::default()
                .take(&server_frame(0x83, b"x"), &mut replies, |_| {
                    ControlFlow::Continue(())
                })
                .is_err()
        );
    }

    #[test]
    fn the_handshake_response_must_carry_the_derived_accept_key() {
        let handshake = Handshake::new("127.0.0.1:1", "/api/v1/ws", "token");
        let accept =
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(handshake.key.as_bytes());
        let mut good =
            format!("HTTP/1.1 101 Switching Protocols\r\nsec-websocket-accept: {accept}\r\n\r\n")
                .into_bytes();
        let head = good.len();
        good.extend_from_slice(&[0x81, 0x00]);
        assert_eq!(
            handshake
                .response(&good[..20])
                .unwrap_or_else(|e| panic!("{e}")),
            None
        );
        assert_eq!(
            handshake.response(&good).unwrap_or_else(|e| panic!("{e}")),
            Some(head)
        );
        let wrong = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert!(handshake.response(wrong.as_bytes()).is_err());
        let refused = "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        assert!(handshake.response(refused.as_bytes()).is_err());
    }
}
