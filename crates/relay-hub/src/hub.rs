//! The hub of one session: it belongs to the running sandbox, not to the connected clients. It
//! reads pi's stdout for as long as the sandbox runs, gives every line the next sequence number,
//! journals it and fans it out; it forwards client commands to pi's stdin. Sequence numbers are
//! assigned and handed to the journal under one lock, so a client that registers sees a
//! consistent cut: everything up to its `lastSeq` is in the journal (after a barrier), and
//! everything after arrives live, with no duplicate and no hole.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use bytes::Bytes;
use futures_util::StreamExt;
use relay_sandbox::{OutputChunk, SandboxIo};
use relay_store::{JournalEntry, Store};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::lines::LineSplitter;
use crate::protocol::{self, CommandHead, Skip};
use crate::replay::Replay;
use crate::{ClientPrefs, HubObserver};

/// Identifies one WebSocket connection (two sockets with the same clientId are two connections).
pub type ConnId = u64;

/// Bytes a client may have queued but not yet sent before it is cut off. At this size a client
/// is well behind pi; it reconnects with `lastSeq` and the journal replays what it missed.
pub const MAX_CLIENT_BACKLOG_BYTES: usize = 8 * 1024 * 1024;
/// Close code for a client cut off for falling behind.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// stderr lines kept per session for `GET /api/sessions/:id/logs`.
pub const LOG_LINES: usize = 200;
/// Lines queued for pi's stdin before senders wait.
const STDIN_QUEUE: usize = 256;

/// A frame for one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// A text frame: a pi line verbatim or a relay message.
    Text(Bytes),
    /// Close the socket with this code and reason.
    Close(u16, String),
}

#[derive(Debug)]
struct Client {
    client_id: String,
    tx: mpsc::UnboundedSender<Outbound>,
    backlog: Arc<AtomicUsize>,
    kicked: CancellationToken,
    extension_ui: bool,
    /// A newer socket of the same client id connected: this one gets no more broadcasts (the
    /// pi-apps clients open two sockets per page; each frame must reach the page once).
    superseded: bool,
}

impl Client {
    fn push(&self, frame: &Bytes) {
        if self.kicked.is_cancelled() {
            return;
        }
        let queued = self.backlog.fetch_add(frame.len(), Ordering::Relaxed) + frame.len();
        if queued > MAX_CLIENT_BACKLOG_BYTES {
            self.kicked.cancel();
            return;
        }
        let _ = self.tx.send(Outbound::Text(frame.clone()));
    }
}

impl HubState {
    /// Sends `frame` to the newest socket of every client.
    fn fan_out(&self, frame: &Bytes) {
        self.receiving().for_each(|c| c.push(frame));
    }

    /// The sockets that receive broadcasts: the newest of each client id.
    fn receiving(&self) -> impl Iterator<Item = &Client> {
        self.clients.values().filter(|c| !c.superseded)
    }
}

#[derive(Debug, Default)]
struct HubState {
    seq: u64,
    clients: BTreeMap<ConnId, Client>,
    stdin: Option<mpsc::Sender<Bytes>>,
    generation: u64,
    running_tools: HashSet<String>,
    /// Complete stdout lines of the current container consumed so far (noise included); the
    /// journal records it so output printed while the relay was away can be recovered.
    stdout_lines: u64,
    /// Between `agent_start` and `agent_end`/`agent_settled`: pi is working even when no tool
    /// runs.
    agent_running: bool,
    /// Last client command, pi output, connect or disconnect.
    last_activity: Option<tokio::time::Instant>,
    controller: Option<ConnId>,
    last_writer: Option<ConnId>,
    last_disconnected_at: Option<tokio::time::Instant>,
}

/// One session's hub.
#[derive(Debug)]
pub struct Hub {
    session_id: Arc<str>,
    store: Store,
    observer: Arc<dyn HubObserver>,
    prefs: Arc<ClientPrefs>,
    state: Mutex<HubState>,
    logs: StdMutex<VecDeque<String>>,
    next_conn: AtomicU64,
    cancel: CancellationToken,
    clock: Clock,
}

/// What a hub reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubStatus {
    /// Connected clients (one per client id: its newest socket).
    pub clients: usize,
    /// Whether pi's stdio is attached.
    pub attached: bool,
    /// Tool calls started and not finished.
    pub running_tools: usize,
    /// pi is in the middle of a run.
    pub agent_running: bool,
    /// Last client command, pi output, connect or disconnect.
    pub last_activity: tokio::time::Instant,
    /// Highest sequence number assigned.
    pub seq: u64,
    /// When the last client left, if none is connected now.
    pub last_disconnected_at: Option<tokio::time::Instant>,
}

impl Hub {
    pub(crate) fn new(
        session_id: &str,
        store: Store,
        observer: Arc<dyn HubObserver>,
        prefs: Arc<ClientPrefs>,
        initial_seq: u64,
        cancel: CancellationToken,
        clock: Clock,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            session_id: Arc::from(session_id),
            store,
            observer,
            prefs,
            state: Mutex::new(HubState {
                seq: initial_seq,
                last_activity: Some(clock.now()),
                ..Default::default()
            }),
            logs: StdMutex::new(VecDeque::new()),
            next_conn: AtomicU64::new(1),
            cancel,
            clock,
        })
    }

    /// The session this hub serves.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Takes over a sandbox attachment: from now on pi's output is read, journaled and fanned
    /// out, and client commands go to its stdin. Replaces any previous attachment.
    /// `stdout_lines` is how many stdout lines of this container were consumed before (0 for a
    /// new container) and `pending` the start of a line whose rest is still to come.
    pub async fn attach(self: &Arc<Self>, io: SandboxIo, stdout_lines: u64, pending: Bytes) {
        let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_QUEUE);
        let generation = {
            let mut st = self.state.lock().await;
            st.generation += 1;
            st.stdout_lines = stdout_lines;
            let reattached = st.stdin.is_none() && st.generation > 1;
            st.stdin = Some(stdin_tx);
            if reattached {
                let frame = protocol::sandbox_status("running", None);
                st.fan_out(&frame);
            }
            st.generation
        };
        let SandboxIo { output, input } = io;
        let cancel = self.cancel.child_token();
        tokio::spawn(write_stdin(input, stdin_rx, cancel.clone()));
        let hub = self.clone();
        tokio::spawn(async move { hub.read_output(output, generation, pending, cancel).await });
    }

    /// Journals lines recovered from the engine's log (printed while nobody was attached) and
    /// records that the container's stdout has been consumed up to `stdout_lines`.
    pub async fn recover(&self, mut lines: Vec<Bytes>, stdout_lines: u64) {
        let n = lines.len();
        self.ingest(&mut lines, Some(stdout_lines)).await;
        if n > 0 {
            self.log(format!(
                "relay: recovered {n} lines pi printed while the relay was away"
            ));
        }
    }

    async fn read_output(
        self: Arc<Self>,
        mut output: relay_sandbox::OutputStream,
        generation: u64,
        pending: Bytes,
        cancel: CancellationToken,
    ) {
        let mut stdout = LineSplitter::with_pending(&pending);
        let mut stderr = LineSplitter::new();
        let mut lines = Vec::new();
        let reason = loop {
            let item = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                item = output.next() => item,
            };
            match item {
                Some(Ok(OutputChunk::Stdout(b))) => {
                    stdout.push(&b, &mut lines);
                    if !lines.is_empty() {
                        self.ingest(&mut lines, None).await;
                    }
                }
                Some(Ok(OutputChunk::Stderr(b))) => {
                    stderr.push(&b, &mut lines);
                    self.stderr_lines(&mut lines);
                }
                Some(Err(e)) => break e.to_string(),
                None => break "stream closed".to_owned(),
            }
        };
        lines.extend(stdout.finish());
        self.ingest(&mut lines, None).await;
        lines.extend(stderr.finish());
        self.stderr_lines(&mut lines);
        self.detached(generation, &reason).await;
    }

    fn stderr_lines(&self, lines: &mut Vec<Bytes>) {
        for line in lines.drain(..) {
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end();
            if text.is_empty() {
                continue;
            }
            tracing::debug!(session = %self.session_id, line = %text, "sandbox stderr");
            self.log(text.to_owned());
        }
    }

    /// Adds a line to the session's log ring (stderr and relay notes).
    pub fn log(&self, line: String) {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        if logs.len() == LOG_LINES {
            logs.pop_front();
        }
        logs.push_back(line);
    }

    /// The session's recent log lines, oldest first.
    pub fn logs(&self) -> Vec<String> {
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Journals and fans out complete stdout lines. The stdout line count moves on by the
    /// number of lines, or to `count_after` when given.
    async fn ingest(&self, lines: &mut Vec<Bytes>, count_after: Option<u64>) {
        if lines.is_empty() && count_after.is_none() {
            return;
        }
        let now = std::time::SystemTime::now();
        let mut st = self.state.lock().await;
        st.stdout_lines = count_after.unwrap_or(st.stdout_lines + lines.len() as u64);
        let cursor = Some((self.session_id.clone(), st.stdout_lines));
        let mut entries = Vec::with_capacity(lines.len());
        let mut frames = Vec::with_capacity(lines.len());
        for line in lines.drain(..) {
            let (kept, head) = match protocol::inspect_line(&line) {
                Ok(v) => v,
                Err(Skip::Blank) => continue,
                Err(Skip::NotJson) => {
                    let text = String::from_utf8_lossy(&line);
                    tracing::debug!(session = %self.session_id, line = %text, "non-JSON stdout line skipped");
                    self.log(format!("stdout (not JSON, skipped): {}", text.trim_end()));
                    continue;
                }
            };
            if head.is_relay_sync() {
                continue;
            }
            st.seq += 1;
            let ty = head.ty.as_deref().unwrap_or("unknown");
            match (ty, head.tool_call_id.as_deref()) {
                ("tool_execution_start", Some(id)) => {
                    st.running_tools.insert(id.to_owned());
                }
                ("tool_execution_end", Some(id)) => {
                    st.running_tools.remove(id);
                }
                ("agent_start", _) => st.agent_running = true,
                // pi 0.x ends a run with agent_end only; in 1.x an auto-retry may start another
                // run right after it, which agent_start marks again.
                ("agent_settled" | "agent_end", _) => st.agent_running = false,
                _ => {}
            }
            if let Some(name) = session_name_from(ty, &head, kept) {
                self.observer.session_named(&self.session_id, &name);
            }
            let payload = line.slice_ref(kept);
            entries.push(JournalEntry {
                session_id: self.session_id.clone(),
                seq: st.seq,
                ty: ty.into(),
                payload: payload.clone(),
                created_at: now,
            });
            frames.push((payload, ty == "extension_ui_request"));
        }
        st.last_activity = Some(self.clock.now());
        if let Err(e) = self.store.append_batch(entries, cursor).await {
            tracing::error!(session = %self.session_id, error = %e, "journal write failed");
        }
        for (frame, controller_only) in frames {
            if controller_only {
                // Extension dialogs go to the controller alone; with none they stay journaled.
                if let Some(c) = st.controller.and_then(|id| st.clients.get(&id)) {
                    c.push(&frame);
                }
            } else {
                st.fan_out(&frame);
            }
        }
    }

    async fn detached(&self, generation: u64, reason: &str) {
        {
            let mut st = self.state.lock().await;
            if st.generation != generation {
                return;
            }
            st.stdin = None;
            st.running_tools.clear();
            st.agent_running = false;
            let frame = protocol::sandbox_status("stopped", Some(reason));
            st.fan_out(&frame);
        }
        tracing::info!(session = %self.session_id, reason, "sandbox output closed");
        self.observer.channel_closed(&self.session_id, reason);
    }

    /// Registers a client. Everything journaled up to the returned connection's
    /// [`ClientConn::seq_at_connect`] can be replayed from the journal; everything after it
    /// arrives on the connection's queue.
    pub async fn connect(self: &Arc<Self>, client_id: &str) -> ClientConn {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let kicked = CancellationToken::new();
        let mut st = self.state.lock().await;
        for older in st.clients.values_mut().filter(|c| c.client_id == client_id) {
            older.superseded = true;
        }
        st.clients.insert(
            conn_id,
            Client {
                client_id: client_id.to_owned(),
                tx,
                backlog: backlog.clone(),
                kicked: kicked.clone(),
                extension_ui: self.prefs.extension_ui(&self.session_id, client_id),
                superseded: false,
            },
        );
        st.last_disconnected_at = None;
        st.last_activity = Some(self.clock.now());
        self.elect(&mut st);
        ClientConn {
            hub: self.clone(),
            conn_id,
            seq_at_connect: st.seq,
            attached: st.stdin.is_some(),
            rx,
            backlog,
            kicked,
            closed: false,
        }
    }

    async fn disconnect(&self, conn_id: ConnId) {
        let mut st = self.state.lock().await;
        if st.clients.remove(&conn_id).is_none() {
            return;
        }
        if st.last_writer == Some(conn_id) {
            st.last_writer = None;
        }
        let now = self.clock.now();
        st.last_activity = Some(now);
        if st.receiving().next().is_none() {
            st.last_disconnected_at = Some(now);
        }
        self.elect(&mut st);
    }

    /// Controller election: the last prompting client, then the activator, then the newest
    /// client, each only if it can show extension dialogs.
    fn elect(&self, st: &mut HubState) {
        let capable = |id: &ConnId| {
            st.clients
                .get(id)
                .is_some_and(|c| c.extension_ui && !c.superseded)
        };
        let activator = self.prefs.activator(&self.session_id);
        st.controller = st
            .last_writer
            .filter(capable)
            .or_else(|| {
                activator.and_then(|a| {
                    st.clients
                        .iter()
                        .rev()
                        .find(|(_, c)| c.client_id == a && c.extension_ui && !c.superseded)
                        .map(|(id, _)| *id)
                })
            })
            .or_else(|| {
                st.clients
                    .iter()
                    .rev()
                    .find(|(_, c)| c.extension_ui && !c.superseded)
                    .map(|(id, _)| *id)
            });
    }

    /// Re-reads client capabilities (after the REST call that sets them) and re-elects.
    pub async fn refresh_prefs(&self) {
        let mut st = self.state.lock().await;
        for c in st.clients.values_mut() {
            c.extension_ui = self.prefs.extension_ui(&self.session_id, &c.client_id);
        }
        self.elect(&mut st);
    }

    /// Handles one frame from a client: whitelisted commands go to pi verbatim; prompts are
    /// journaled first.
    pub async fn command(&self, conn_id: ConnId, frame: Bytes) {
        let head: CommandHead = match serde_json::from_slice(&frame) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(session = %self.session_id, error = %e, "client frame is not JSON; ignored");
                return;
            }
        };
        let Some(ty) = head
            .ty
            .as_deref()
            .filter(|t| protocol::is_allowed_command(t))
        else {
            tracing::debug!(session = %self.session_id, ty = ?head.ty, "unknown command type; ignored");
            return;
        };
        // A frame with raw line breaks (pretty-printed JSON) would break pi's line framing.
        let line = if frame.contains(&b'\n') || frame.contains(&b'\r') {
            match serde_json::from_slice::<serde_json::Value>(&frame) {
                Ok(v) => Bytes::from(v.to_string()),
                Err(_) => return,
            }
        } else {
            frame
        };
        let stdin = {
            let mut st = self.state.lock().await;
            let Some(client) = st.clients.get(&conn_id) else {
                return;
            };
            let capable = client.extension_ui;
            st.last_activity = Some(self.clock.now());
            if matches!(ty, "prompt" | "steer" | "follow_up") && capable {
                st.last_writer = Some(conn_id);
                self.elect(&mut st);
            }
            let client = &st.clients[&conn_id];
            if ty == "extension_ui_response" && st.controller != Some(conn_id) {
                client.push(&protocol::error(
                    "NOT_CONTROLLER",
                    "Only the controller client can send extension_ui_response",
                ));
                return;
            }
            let Some(stdin) = st.stdin.clone() else {
                client.push(&protocol::error(
                    "CHANNEL_DETACHED",
                    "Sandbox channel not attached",
                ));
                return;
            };
            if ty == "prompt" {
                st.seq += 1;
                let entry = JournalEntry {
                    session_id: self.session_id.clone(),
                    seq: st.seq,
                    ty: "prompt".into(),
                    payload: line.clone(),
                    created_at: std::time::SystemTime::now(),
                };
                if let Err(e) = self.store.append(entry).await {
                    tracing::error!(session = %self.session_id, error = %e, "journal write failed");
                }
            }
            stdin
        };
        let mut with_newline = Vec::with_capacity(line.len() + 1);
        with_newline.extend_from_slice(&line);
        with_newline.push(b'\n');
        if stdin.send(Bytes::from(with_newline)).await.is_err() {
            let st = self.state.lock().await;
            if let Some(c) = st.clients.get(&conn_id) {
                c.push(&protocol::error(
                    "CHANNEL_DETACHED",
                    "Sandbox channel not attached",
                ));
            }
            return;
        }
        let message = head.message.as_ref().and_then(|m| m.as_str());
        self.observer.command_sent(
            &self.session_id,
            ty,
            (ty == "prompt").then_some(message).flatten(),
        );
    }

    /// Sends a relay message to every client.
    pub async fn broadcast(&self, frame: Bytes) {
        let st = self.state.lock().await;
        st.fan_out(&frame);
    }

    /// Closes every client with `code` and stops reading the sandbox (it keeps running).
    pub async fn close(&self, code: u16, reason: &str) {
        self.cancel.cancel();
        let mut st = self.state.lock().await;
        st.stdin = None;
        for c in st.clients.values() {
            let _ = c.tx.send(Outbound::Close(code, reason.to_owned()));
        }
    }

    /// Forgets the running tool calls and the controller (e.g. when the session idles).
    pub async fn clear_client_state(&self) {
        let mut st = self.state.lock().await;
        st.last_writer = None;
        st.controller = None;
    }

    /// Records activity now (a client activated the session), so the idle reaper counts its
    /// timeout from here, not from the last time pi or a client did something.
    pub async fn touch(&self) {
        self.state.lock().await.last_activity = Some(self.clock.now());
    }

    /// A snapshot of the hub's state.
    pub async fn status(&self) -> HubStatus {
        let st = self.state.lock().await;
        HubStatus {
            clients: st.receiving().count(),
            attached: st.stdin.is_some(),
            running_tools: st.running_tools.len(),
            agent_running: st.agent_running,
            last_activity: st.last_activity.unwrap_or_else(|| self.clock.now()),
            seq: st.seq,
            last_disconnected_at: st.last_disconnected_at,
        }
    }

    /// Reads the journal from `after` (exclusive) to `upto` (inclusive), in pages, after making
    /// sure everything up to `upto` has been committed.
    pub async fn replay(&self, after: u64, upto: u64) -> Result<Replay, relay_store::StoreError> {
        self.store.barrier().await?;
        Ok(Replay::new(
            self.store.clone(),
            self.session_id.to_string(),
            after,
            upto,
        ))
    }
}

fn session_name_from(ty: &str, head: &protocol::LineHead<'_>, line: &[u8]) -> Option<String> {
    let wanted = match ty {
        "response" => head.command.as_deref() == Some("get_state"),
        "extension_ui_request" => head.method.as_deref() == Some("setTitle"),
        _ => false,
    };
    if !wanted {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let name = if ty == "response" {
        if v.get("success") != Some(&serde_json::Value::Bool(true)) {
            return None;
        }
        v.pointer("/data/sessionName")?.as_str()?
    } else {
        v.get("title")?.as_str()?
    };
    (!name.trim().is_empty()).then(|| name.to_owned())
}

async fn write_stdin(
    mut input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    mut rx: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
) {
    loop {
        let line = tokio::select! {
            _ = cancel.cancelled() => return,
            line = rx.recv() => match line { Some(l) => l, None => return },
        };
        if let Err(e) = async {
            input.write_all(&line).await?;
            input.flush().await
        }
        .await
        {
            tracing::warn!(error = %e, "writing to sandbox stdin failed");
            return;
        }
    }
}

/// A registered client. Dropping it unregisters the client.
#[derive(Debug)]
pub struct ClientConn {
    hub: Arc<Hub>,
    conn_id: ConnId,
    seq_at_connect: u64,
    attached: bool,
    rx: mpsc::UnboundedReceiver<Outbound>,
    backlog: Arc<AtomicUsize>,
    kicked: CancellationToken,
    closed: bool,
}

impl ClientConn {
    /// This connection's id.
    pub fn id(&self) -> ConnId {
        self.conn_id
    }

    /// The journal's last sequence number when the client registered.
    pub fn seq_at_connect(&self) -> u64 {
        self.seq_at_connect
    }

    /// Whether pi was attached when the client registered.
    pub fn attached(&self) -> bool {
        self.attached
    }

    /// The hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Cancelled when the client fell too far behind and must be cut off.
    pub fn kicked(&self) -> CancellationToken {
        self.kicked.clone()
    }

    /// The next frame for this client.
    pub async fn recv(&mut self) -> Option<Outbound> {
        let frame = self.rx.recv().await;
        self.account(&frame);
        frame
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        let frame = self.rx.try_recv().ok();
        self.account(&frame);
        frame
    }

    fn account(&self, frame: &Option<Outbound>) {
        if let Some(Outbound::Text(b)) = frame {
            self.backlog.fetch_sub(b.len(), Ordering::Relaxed);
        }
    }

    /// Unregisters the client now.
    pub async fn close(mut self) {
        self.closed = true;
        self.hub.disconnect(self.conn_id).await;
    }
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let hub = self.hub.clone();
        let id = self.conn_id;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { hub.disconnect(id).await });
        }
    }
}
