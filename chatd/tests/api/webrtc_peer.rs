//! Real WebRTC peers (webrtc-rs 0.21) and a throwaway coturn server, for tests that drive the
//! call signalling API end to end over loopback.
//!
//! A [`Peer`] is one `PeerConnection` with one data channel labelled "chat". Signals are the
//! JSON shapes a browser would send through our API: `{"type":"offer"|"answer","sdp":…}` and
//! `{"type":"candidate","candidate":{…RTCIceCandidateInit…}}`. Every wait takes a timeout.
//! Failures that a test cannot recover from panic with a message that says what broke; the
//! workspace lints forbid `unwrap`/`expect`, so they are spelled `unwrap_or_else(|error| panic!)`.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc, watch};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionIceEvent, RTCSessionDescription, SettingEngineBuilder,
};

/// The label of the one data channel a [`Peer`] uses.
pub const CHAT_LABEL: &str = "chat";

/// A WebRTC peer for tests: one RTCPeerConnection with one data channel named "chat".
pub struct Peer {
    peer_connection: Arc<dyn PeerConnection>,
    channel: Arc<ChatChannel>,
    /// Local candidates from the driver, in gathering order, then `GatheringComplete`.
    local_candidates: Mutex<mpsc::UnboundedReceiver<LocalCandidate>>,
    messages: Mutex<mpsc::UnboundedReceiver<String>>,
    remote: Mutex<RemoteState>,
}

impl Peer {
    /// `ice_servers` is the JSON array `ice_servers` exactly as our API returns it:
    /// `[{"urls": ["stun:…", "turn:127.0.0.1:3478?transport=udp"], "username": "…", "credential": "…"}, …]`
    /// (username/credential optional; `urls` may also be a single string, as browsers accept).
    /// `relay_only` sets the ICE transport policy to relay.
    pub async fn new(ice_servers: &Value, relay_only: bool) -> Peer {
        let ice_servers =
            parse_ice_servers(ice_servers).unwrap_or_else(|error| panic!("{error:#}"));
        let policy = if relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        };
        let configuration = RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers)
            .with_ice_transport_policy(policy)
            .build();
        let setting_engine = SettingEngineBuilder::new()
            // In 0.21.1 this flag is stored but never read: loopback host candidates appear
            // because the socket below is bound to 127.0.0.1 explicitly (a wildcard bind skips
            // loopback). It is set so that a release that starts honouring it keeps them.
            .with_include_loopback_candidate(true)
            // Otherwise a relay pair is held back 2 s in case a better pair turns up. `None`
            // does not mean "no wait", despite the doc comment: it means that 2 s default.
            .with_relay_acceptance_min_wait(Some(Duration::ZERO))
            // No mDNS: its socket joins 224.0.0.251 via the default route and fails with ENODEV
            // ("No such device") on a machine whose only interface is loopback.
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .build();

        let (candidate_sender, candidate_receiver) = mpsc::unbounded_channel();
        let (message_sender, message_receiver) = mpsc::unbounded_channel();
        let channel = Arc::new(ChatChannel::new(message_sender));
        let handler = Arc::new(PeerEvents {
            candidates: candidate_sender,
            channel: Arc::clone(&channel),
        });

        let peer_connection = PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_setting_engine(setting_engine)
            .with_handler(handler)
            // One UDP socket on loopback: the host candidate, and the socket TURN is reached from.
            .with_udp_addrs(vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))])
            .build()
            .await
            .unwrap_or_else(|error| {
                // Without webrtc's own `rtc` crate, mDNS cannot be switched off (its mode enum is
                // not re-exported), and its socket needs a route for 224.0.0.251.
                panic!(
                    "building the peer connection failed: {error}. \
                     \"No such device\" means webrtc's mDNS socket found no multicast route: \
                     on a loopback-only machine run `ip link set lo multicast on; \
                     ip route add 224.0.0.0/4 dev lo`, or disable mDNS (needs the rtc crate)"
                )
            });

        Peer {
            peer_connection: Arc::new(peer_connection),
            channel,
            local_candidates: Mutex::new(candidate_receiver),
            messages: Mutex::new(message_receiver),
            remote: Mutex::new(RemoteState::default()),
        }
    }

    /// Offerer side: creates the "chat" data channel and an offer; returns the signal to send.
    pub async fn offer(&self) -> Value {
        let data_channel = self
            .peer_connection
            .create_data_channel(CHAT_LABEL, None)
            .await
            .unwrap_or_else(|error| panic!("creating the data channel failed: {error}"));
        self.channel.attach(data_channel);
        let offer = self
            .peer_connection
            .create_offer(None)
            .await
            .unwrap_or_else(|error| panic!("creating the offer failed: {error}"));
        // Gathering starts here; candidates arrive through `next_candidate`.
        self.peer_connection
            .set_local_description(offer.clone())
            .await
            .unwrap_or_else(|error| panic!("setting the local offer failed: {error}"));
        json!({"type": "offer", "sdp": offer.sdp})
    }

    /// Applies a signal from the other side. An offer returns the answer to send back;
    /// an answer or a candidate returns None. Candidates arriving before the remote
    /// description are buffered and applied after it.
    pub async fn handle(&self, signal: Value) -> Option<Value> {
        let kind = signal
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match kind {
            "offer" => {
                let offer = RTCSessionDescription::offer(signal_sdp(&signal))
                    .unwrap_or_else(|error| panic!("the remote offer does not parse: {error}"));
                self.apply_remote_description(offer).await;
                let answer = self
                    .peer_connection
                    .create_answer(None)
                    .await
                    .unwrap_or_else(|error| panic!("creating the answer failed: {error}"));
                self.peer_connection
                    .set_local_description(answer.clone())
                    .await
                    .unwrap_or_else(|error| panic!("setting the local answer failed: {error}"));
                Some(json!({"type": "answer", "sdp": answer.sdp}))
            }
            "answer" => {
                let answer = RTCSessionDescription::answer(signal_sdp(&signal))
                    .unwrap_or_else(|error| panic!("the remote answer does not parse: {error}"));
                self.apply_remote_description(answer).await;
                None
            }
            "candidate" => {
                let candidate_json = signal.get("candidate").cloned().unwrap_or(Value::Null);
                // A browser's end-of-candidates is a null or empty candidate: nothing to add.
                if candidate_json.is_null() || candidate_json.get("candidate") == Some(&json!("")) {
                    return None;
                }
                let candidate: RTCIceCandidateInit = serde_json::from_value(candidate_json)
                    .unwrap_or_else(|error| panic!("bad candidate signal {signal}: {error}"));
                let mut remote = self.remote.lock().await;
                if remote.description_set {
                    self.add_remote_candidate(candidate).await;
                } else {
                    remote.pending_candidates.push(candidate);
                }
                None
            }
            _ => panic!("unknown signal {signal}"),
        }
    }

    /// The next local ICE candidate as a signal to send, {"type":"candidate","candidate":{…RTCIceCandidateInit…}},
    /// or None once gathering is complete (or after `timeout`).
    pub async fn next_candidate(&self, timeout: Duration) -> Option<Value> {
        let mut candidates = self.local_candidates.lock().await;
        match tokio::time::timeout(timeout, candidates.recv()).await {
            Ok(Some(LocalCandidate::Candidate { init, .. })) => {
                let init = serde_json::to_value(init)
                    .unwrap_or_else(|error| panic!("candidate does not serialize: {error}"));
                Some(json!({"type": "candidate", "candidate": init}))
            }
            Ok(Some(LocalCandidate::GatheringComplete)) | Ok(None) | Err(_) => None,
        }
    }

    /// Waits until the data channel is open on this side.
    pub async fn wait_open(&self, timeout: Duration) -> anyhow::Result<()> {
        let mut open = self.channel.open.subscribe();
        tokio::time::timeout(timeout, open.wait_for(|is_open| *is_open))
            .await
            .map_err(|_| anyhow!("the data channel did not open within {timeout:?}"))?
            .context("the peer connection was dropped")?;
        Ok(())
    }

    pub async fn send(&self, text: &str) -> anyhow::Result<()> {
        let data_channel = self
            .channel
            .data_channel
            .borrow()
            .clone()
            .context("no data channel yet: call offer() or handle an offer first")?;
        data_channel
            .send_text(text)
            .await
            .context("sending on the data channel")
    }

    /// The next text message received on the data channel.
    pub async fn recv(&self, timeout: Duration) -> anyhow::Result<String> {
        let mut messages = self.messages.lock().await;
        tokio::time::timeout(timeout, messages.recv())
            .await
            .map_err(|_| anyhow!("no data channel message within {timeout:?}"))?
            .context("the data channel is closed")
    }

    /// Gathers ICE candidates (creating an offer first if nothing started gathering yet) and
    /// returns the candidate types seen ("host", "srflx", "relay"…) once gathering completes or
    /// `timeout` passes. It consumes the candidates that `next_candidate` would have returned.
    pub async fn gathered_candidate_types(&self, timeout: Duration) -> Vec<String> {
        if self.peer_connection.local_description().await.is_none() {
            self.offer().await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut candidates = self.local_candidates.lock().await;
        let mut types = Vec::new();
        while let Ok(Some(LocalCandidate::Candidate { kind, .. })) =
            tokio::time::timeout_at(deadline, candidates.recv()).await
        {
            types.push(kind);
        }
        types
    }

    pub async fn close(&self) {
        // Closing twice, or after the other side went away, is fine for a test teardown.
        let _ = self.peer_connection.close().await;
    }

    async fn apply_remote_description(&self, description: RTCSessionDescription) {
        // Held across both steps so that a candidate handled concurrently is either buffered
        // before the flush or added after the description: never added too early.
        let mut remote = self.remote.lock().await;
        self.peer_connection
            .set_remote_description(description)
            .await
            .unwrap_or_else(|error| panic!("setting the remote description failed: {error}"));
        remote.description_set = true;
        for candidate in std::mem::take(&mut remote.pending_candidates) {
            self.add_remote_candidate(candidate).await;
        }
    }

    async fn add_remote_candidate(&self, candidate: RTCIceCandidateInit) {
        self.peer_connection
            .add_ice_candidate(candidate.clone())
            .await
            .unwrap_or_else(|error| {
                panic!("adding remote candidate {candidate:?} failed: {error}")
            });
    }
}

/// A coturn `turnserver` started for one test on 127.0.0.1 with `use-auth-secret` and the
/// given static secret, on a free UDP/TCP port, no TLS, loopback peers allowed, logging to a
/// temp file; killed on drop.
pub struct Coturn {
    pub port: u16,
    child: Child,
    pub log_file: PathBuf,
    work_dir: PathBuf,
}

impl Coturn {
    /// Returns None (with a message on stderr) if `turnserver` is not installed. Panics, with
    /// the server's log, if it is installed but does not answer STUN within 10 seconds.
    pub async fn start(secret: &str) -> Option<Coturn> {
        let port = free_udp_and_tcp_port();
        // A small relay range of its own per server, below the ephemeral range, so parallel
        // tests rarely share one; coturn skips ports it cannot bind anyway.
        let min_port = 10_000 + (port % 200) * 100;
        let max_port = min_port + 99;
        let work_dir = std::env::temp_dir().join(format!("coturn-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&work_dir)
            .unwrap_or_else(|error| panic!("creating {}: {error}", work_dir.display()));
        let log_file = work_dir.join("turnserver.log");

        let spawned = Command::new("turnserver")
            .arg("-n") // no configuration file: everything is on this command line
            .arg("--use-auth-secret")
            .arg(format!("--static-auth-secret={secret}"))
            .arg("--realm=chat")
            .arg("--listening-ip=127.0.0.1")
            .arg("--relay-ip=127.0.0.1")
            .arg(format!("--listening-port={port}"))
            .arg(format!("--min-port={min_port}"))
            .arg(format!("--max-port={max_port}"))
            .arg("--no-tls")
            .arg("--no-dtls")
            // coturn refuses 127.0.0.0/8 peers by default, and here every peer is on loopback.
            .arg("--allow-loopback-peers")
            .arg("--no-cli")
            .arg("--no-stdout-log")
            .arg(format!("--log-file={}", log_file.display()))
            .arg("--simple-log")
            // Its own pid file and user database, so parallel servers and the system one never
            // share a file (the defaults are /var/run/turnserver.pid and /var/lib/turn/turndb).
            .arg(format!(
                "--pidfile={}",
                work_dir.join("turnserver.pid").display()
            ))
            .arg(format!("--db={}", work_dir.join("turndb").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                eprintln!(
                    "turnserver is not installed (Debian package coturn; scripts/services.sh ensure_coturn)"
                );
                let _ = std::fs::remove_dir_all(&work_dir);
                return None;
            }
            Err(error) => panic!("starting turnserver failed: {error}"),
        };
        let mut coturn = Coturn {
            port,
            child,
            log_file,
            work_dir,
        };
        coturn.wait_until_ready(Duration::from_secs(10)).await;
        Some(coturn)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// Sends STUN Binding requests over UDP (what the peers use) until one is answered.
    async fn wait_until_ready(&mut self, timeout: Duration) {
        let socket = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|error| panic!("binding a UDP socket failed: {error}"));
        let server = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + timeout;
        let request = stun_binding_request();
        let mut response = [0_u8; 1500];
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("turnserver exited with {status}; its log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "turnserver did not answer STUN on {server} within {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            // Errors here (e.g. ICMP port unreachable while it starts) just mean "not yet".
            let _ = socket.send_to(&request, server).await;
            let answered =
                tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut response))
                    .await;
            if let Ok(Ok((length, _))) = answered {
                // 0x0101 is a Binding success response.
                if length >= 20 && response[0] == 0x01 && response[1] == 0x01 {
                    return;
                }
            }
        }
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

// ---------------------------------------------------------------------------------------------

enum LocalCandidate {
    Candidate {
        kind: String,
        init: RTCIceCandidateInit,
    },
    GatheringComplete,
}

#[derive(Default)]
struct RemoteState {
    description_set: bool,
    pending_candidates: Vec<RTCIceCandidateInit>,
}

/// The "chat" data channel, whichever side created it: the offerer's own, or the one
/// `on_data_channel` hands the answerer.
struct ChatChannel {
    data_channel: watch::Sender<Option<Arc<dyn DataChannel>>>,
    open: watch::Sender<bool>,
    messages: mpsc::UnboundedSender<String>,
}

impl ChatChannel {
    fn new(messages: mpsc::UnboundedSender<String>) -> ChatChannel {
        ChatChannel {
            data_channel: watch::channel(None).0,
            open: watch::channel(false).0,
            messages,
        }
    }

    /// Keeps the channel for `send` and pumps its events. In 0.21 a data channel has no
    /// callbacks: its events come from `poll()`, which someone has to keep calling.
    fn attach(self: &Arc<Self>, data_channel: Arc<dyn DataChannel>) {
        self.data_channel
            .send_replace(Some(Arc::clone(&data_channel)));
        let channel = Arc::clone(self);
        tokio::spawn(async move {
            while let Some(event) = data_channel.poll().await {
                match event {
                    DataChannelEvent::OnOpen => {
                        channel.open.send_replace(true);
                    }
                    DataChannelEvent::OnMessage(message) => {
                        let text = String::from_utf8_lossy(&message.data).into_owned();
                        let _ = channel.messages.send(text);
                    }
                    DataChannelEvent::OnClose => break,
                    _ => {}
                }
            }
            channel.open.send_replace(false);
        });
    }
}

/// The connection's event handler. Its methods run on the connection's driver task, so they
/// only hand events over and never wait.
struct PeerEvents {
    candidates: mpsc::UnboundedSender<LocalCandidate>,
    channel: Arc<ChatChannel>,
}

type BoxedUnitFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

// `PeerConnectionEventHandler` is declared with `#[async_trait]`, and `async-trait` is not a
// dependency of the test binary, so the methods are written in the form that macro expands to.
impl PeerConnectionEventHandler for PeerEvents {
    fn on_ice_candidate<'life0, 'async_trait>(
        &'life0 self,
        event: RTCPeerConnectionIceEvent,
    ) -> BoxedUnitFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let kind = event.candidate.typ.to_string();
            match event.candidate.to_json() {
                Ok(init) => {
                    let _ = self
                        .candidates
                        .send(LocalCandidate::Candidate { kind, init });
                }
                Err(error) => eprintln!(
                    "local candidate {} does not convert: {error}",
                    event.candidate
                ),
            }
        })
    }

    fn on_ice_gathering_state_change<'life0, 'async_trait>(
        &'life0 self,
        state: RTCIceGatheringState,
    ) -> BoxedUnitFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            if state == RTCIceGatheringState::Complete {
                let _ = self.candidates.send(LocalCandidate::GatheringComplete);
            }
        })
    }

    fn on_data_channel<'life0, 'async_trait>(
        &'life0 self,
        data_channel: Arc<dyn DataChannel>,
    ) -> BoxedUnitFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.channel.attach(data_channel);
        })
    }
}

/// Reads the API's `ice_servers` array. `RTCIceServer`'s own Deserialize requires `username`
/// and `credential` and rejects a string `urls`, so it is not used.
fn parse_ice_servers(ice_servers: &Value) -> anyhow::Result<Vec<RTCIceServer>> {
    let Some(servers) = ice_servers.as_array() else {
        bail!("ice_servers must be a JSON array, got {ice_servers}");
    };
    servers
        .iter()
        .map(|server| {
            let urls = match server.get("urls") {
                Some(Value::String(url)) => vec![url.clone()],
                Some(Value::Array(urls)) => urls
                    .iter()
                    .map(|url| {
                        url.as_str()
                            .map(str::to_owned)
                            .context("a url is not a string")
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?,
                _ => bail!("ice server without urls: {server}"),
            };
            let text = |field: &str| {
                server
                    .get(field)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            Ok(RTCIceServer {
                urls,
                username: text("username"),
                credential: text("credential"),
            })
        })
        .collect()
}

fn signal_sdp(signal: &Value) -> String {
    signal
        .get("sdp")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("signal without sdp: {signal}"))
        .to_owned()
}

/// A port that is free for both UDP and TCP on 127.0.0.1 right now.
fn free_udp_and_tcp_port() -> u16 {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|error| panic!("binding UDP port 0 failed: {error}"));
        let port = udp
            .local_addr()
            .unwrap_or_else(|error| panic!("{error}"))
            .port();
        if std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("found no port free for both UDP and TCP on 127.0.0.1");
}

fn stun_binding_request() -> [u8; 20] {
    let mut request = [0_u8; 20];
    request[1] = 0x01; // Binding request, message length 0.
    request[4..8].copy_from_slice(&0x2112_A442_u32.to_be_bytes()); // Magic cookie.
    let transaction_id = uuid::Uuid::new_v4();
    request[8..20].copy_from_slice(&transaction_id.as_bytes()[..12]);
    request
}
