//! An in-memory sandbox provider for tests. Each "container" runs the `fake-pi` test double as a
//! task, wired to attach streams with Docker's semantics where tests depend on them: output goes
//! to the current attachment (and waits for it to read), stdin survives re-attachment, a paused
//! sandbox neither reads nor writes, and the output stream ends when the process exits. It also
//! records every spec it was given and can be told to fail, so tests can check what the relay
//! asked for and how it copes. Its capabilities can be narrowed ([`FakeSandbox::with_capabilities`])
//! to exercise the session layer on providers that cannot pause or keep less output history.
//! Session files are kept in host directories ([`HostStorage`]), as Docker keeps them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::host::HostStorage;
use crate::{
    Capabilities, ImageInfo, OutputChunk, OutputHistory, Sandbox, SandboxError, SandboxId,
    SandboxInfo, SandboxIo, SandboxSpec, SandboxStatus, SessionStorage,
};

/// How many output chunks an attachment buffers before the fake process waits for the reader.
const ATTACH_BUFFER: usize = 64;

type Attachment = mpsc::Sender<Result<OutputChunk, SandboxError>>;

#[derive(Debug)]
struct Container {
    spec: SandboxSpec,
    status: watch::Sender<(SandboxStatus, Option<i64>)>,
    paused: watch::Sender<bool>,
    attachment: Arc<Mutex<Option<Attachment>>>,
    /// Everything written to stdout since creation, like Docker's json-file log.
    log: Arc<Mutex<Vec<u8>>>,
    stdin_tx: mpsc::UnboundedSender<Bytes>,
    /// Taken by the process when it starts; `None` while it runs or after it ran.
    stdin_rx: Option<mpsc::UnboundedReceiver<Bytes>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Operations a test can make fail once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FakeOp {
    /// `create`
    Create,
    /// `start`
    Start,
    /// `attach`
    Attach,
    /// `pin_image`
    PinImage,
}

/// The fake provider. Cheap to clone; clones share state.
#[derive(Clone, Debug)]
pub struct FakeSandbox {
    inner: Arc<Mutex<State>>,
    storage: HostStorage,
    capabilities: Capabilities,
}

/// What Docker can do, which the fake does by default.
pub const DOCKER_LIKE: Capabilities = Capabilities {
    pause: true,
    output_history: OutputHistory::SinceCreation,
    image_listing: true,
    egress: true,
    // Nothing runs in a fake sandbox but fake-pi: exec is the Docker tests' to check.
    exec: false,
    terminal: false,
};

impl State {
    /// Like Docker, a sandbox can be named by its id or its name.
    fn key(&self, id: &SandboxId) -> Option<String> {
        if self.containers.contains_key(id.as_str()) {
            return Some(id.0.clone());
        }
        self.containers
            .iter()
            .find(|(_, c)| c.spec.name == id.0)
            .map(|(k, _)| k.clone())
    }
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    containers: HashMap<String, Container>,
    specs: Vec<SandboxSpec>,
    failures: HashMap<FakeOp, String>,
    /// Images added with [`FakeSandbox::add_image`] (any other reference still resolves,
    /// unless it contains `missing`).
    images: Vec<ImageInfo>,
}

impl FakeSandbox {
    /// A provider with no sandboxes, keeping session files in `storage`, able to do what Docker
    /// does.
    pub fn new(storage: HostStorage) -> FakeSandbox {
        FakeSandbox {
            inner: Arc::default(),
            storage,
            capabilities: DOCKER_LIKE,
        }
    }

    /// The same provider, declaring (and keeping to) `capabilities`.
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> FakeSandbox {
        self.capabilities = capabilities;
        self
    }

    fn unsupported(&self, operation: &'static str) -> SandboxError {
        SandboxError::Unsupported {
            provider: self.kind(),
            operation,
        }
    }

    /// Makes the next call of `op` fail with a runtime error carrying `message`.
    pub fn fail_next(&self, op: FakeOp, message: &str) {
        self.lock().failures.insert(op, message.to_owned());
    }

    /// Adds a local image with the given reference and labels; returns its id.
    pub fn add_image(&self, reference: &str, labels: &[(&str, &str)]) -> String {
        let id = format!("sha256:fake-{reference}");
        self.lock().images.push(ImageInfo {
            id: id.clone(),
            tags: vec![reference.to_owned()],
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        });
        id
    }

    /// Every spec passed to `create`, in order.
    pub fn created_specs(&self) -> Vec<SandboxSpec> {
        self.lock().specs.clone()
    }

    /// Ids of sandboxes that exist (not removed).
    pub fn existing(&self) -> Vec<SandboxId> {
        let mut ids: Vec<_> = self
            .lock()
            .containers
            .keys()
            .cloned()
            .map(SandboxId)
            .collect();
        ids.sort();
        ids
    }

    /// Simulates the process dying from outside (like `docker kill`), with exit code `code`.
    pub fn kill(&self, id: &SandboxId, code: i64) {
        let mut state = self.lock();
        if let Some(key) = state.key(id)
            && let Some(c) = state.containers.get_mut(&key)
        {
            terminate(c, code);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_failure(&self, op: FakeOp) -> Result<(), SandboxError> {
        match self.lock().failures.remove(&op) {
            Some(msg) => Err(SandboxError::runtime(msg)),
            None => Ok(()),
        }
    }

    fn with<R>(
        &self,
        id: &SandboxId,
        f: impl FnOnce(&mut Container) -> Result<R, SandboxError>,
    ) -> Result<R, SandboxError> {
        let mut state = self.lock();
        let key = state
            .key(id)
            .ok_or_else(|| SandboxError::NotFound(id.0.clone()))?;
        let c = state
            .containers
            .get_mut(&key)
            .ok_or_else(|| SandboxError::NotFound(id.0.clone()))?;
        f(c)
    }
}

fn terminate(c: &mut Container, code: i64) {
    if let Some(task) = c.task.take() {
        task.abort();
    }
    c.attachment
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    c.status.send_replace((SandboxStatus::Exited, Some(code)));
    c.paused.send_replace(false);
}

/// Waits while `paused` is true.
async fn gate(paused: &mut watch::Receiver<bool>) {
    let _ = paused.wait_for(|p| !*p).await;
}

async fn forward(
    attachment: &Arc<Mutex<Option<Attachment>>>,
    log: &Arc<Mutex<Vec<u8>>>,
    paused: &mut watch::Receiver<bool>,
    chunk: OutputChunk,
) {
    gate(paused).await;
    if let OutputChunk::Stdout(b) = &chunk {
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
    }
    let tx = attachment.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Like Docker, output is handed to the attached reader and waits for it; with nobody
    // attached it is gone (Docker would keep it only in its log).
    if let Some(tx) = tx {
        let _ = tx.send(Ok(chunk)).await;
    }
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(
    mut reader: R,
    attachment: Arc<Mutex<Option<Attachment>>>,
    log: Arc<Mutex<Vec<u8>>>,
    mut paused: watch::Receiver<bool>,
    stderr: bool,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let bytes = Bytes::copy_from_slice(&buf[..n]);
                let chunk = if stderr {
                    OutputChunk::Stderr(bytes)
                } else {
                    OutputChunk::Stdout(bytes)
                };
                forward(&attachment, &log, &mut paused, chunk).await;
            }
        }
    }
}

fn spawn_process(c: &mut Container) {
    let args: Vec<String> = c.spec.command.iter().skip(1).cloned().collect();
    let opts = fake_pi::Options::from_args(args);
    let (pi_stdin, mut stdin_writer) = tokio::io::duplex(64 * 1024);
    let (stdout_writer, stdout_reader) = tokio::io::duplex(64 * 1024);
    let (stderr_writer, stderr_reader) = tokio::io::duplex(16 * 1024);
    let mut stdin_rx = match c.stdin_rx.take() {
        Some(rx) => rx,
        None => {
            // A restarted process gets a fresh stdin, as in Docker.
            let (tx, rx) = mpsc::unbounded_channel();
            c.stdin_tx = tx;
            rx
        }
    };
    let attachment = c.attachment.clone();
    let log = c.log.clone();
    let paused = c.paused.subscribe();
    let status = c.status.clone();
    c.task = Some(tokio::spawn(async move {
        let mut stdin_paused = paused.clone();
        let feeder = async move {
            while let Some(bytes) = stdin_rx.recv().await {
                gate(&mut stdin_paused).await;
                if stdin_writer.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            // Every stdin sender is gone: only happens when the container is torn down.
            let _ = stdin_writer.shutdown().await;
        };
        let out = pump(
            stdout_reader,
            attachment.clone(),
            log.clone(),
            paused.clone(),
            false,
        );
        let err = pump(stderr_reader, attachment.clone(), log, paused.clone(), true);
        let pi = fake_pi::run(pi_stdin, stdout_writer, stderr_writer, opts);
        let pumps = async { tokio::join!(out, err) };
        let feeder = tokio::spawn(feeder);
        let (code, _) = tokio::join!(pi, pumps);
        feeder.abort();
        attachment.lock().unwrap_or_else(|p| p.into_inner()).take();
        status.send_replace((SandboxStatus::Exited, Some(i64::from(code))));
    }));
}

/// Writes into the fake process's stdin through the container's channel.
struct FakeStdin {
    tx: Option<mpsc::UnboundedSender<Bytes>>,
}

impl tokio::io::AsyncWrite for FakeStdin {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let res = match &self.tx {
            Some(tx) => tx
                .send(Bytes::copy_from_slice(buf))
                .map(|_| buf.len())
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
            None => Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
        };
        std::task::Poll::Ready(res)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        // Like Docker with StdinOnce=false: closing one attachment's stdin does not close pi's.
        self.tx = None;
        std::task::Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Sandbox for FakeSandbox {
    /// Named like the Docker provider, so environments of type `docker` run on it.
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    fn storage(&self) -> &dyn SessionStorage {
        &self.storage
    }

    async fn ping(&self) -> Result<(), SandboxError> {
        Ok(())
    }

    async fn pin_image(&self, image: &str) -> Result<String, SandboxError> {
        self.take_failure(FakeOp::PinImage)?;
        if image.contains("missing") {
            return Err(SandboxError::ImageNotFound(format!(
                "Image '{image}' is not present on the fake provider"
            )));
        }
        Ok(format!("sha256:fake-{image}"))
    }

    async fn list_images(&self, label: &str) -> Result<Vec<ImageInfo>, SandboxError> {
        if !self.capabilities.image_listing {
            return Err(self.unsupported("list images"));
        }
        Ok(self
            .lock()
            .images
            .iter()
            .filter(|i| i.labels.contains_key(label))
            .cloned()
            .collect())
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxId, SandboxError> {
        self.take_failure(FakeOp::Create)?;
        // Like a bind mount of a missing directory in Docker: the files must be prepared first.
        if !self.storage.layout(&spec.session_id).workspace.is_dir() {
            return Err(SandboxError::InvalidState(format!(
                "the files of session {} are not prepared",
                spec.session_id
            )));
        }
        let mut state = self.lock();
        if state.containers.values().any(|c| c.spec.name == spec.name) {
            return Err(SandboxError::Conflict(spec.name.clone()));
        }
        state.next_id += 1;
        let id = format!("fake{:060}", state.next_id);
        state.specs.push(spec.clone());
        let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
        state.containers.insert(
            id.clone(),
            Container {
                spec: spec.clone(),
                status: watch::channel((SandboxStatus::Created, None)).0,
                paused: watch::channel(false).0,
                attachment: Arc::new(Mutex::new(None)),
                log: Arc::default(),
                stdin_tx,
                stdin_rx: Some(stdin_rx),
                task: None,
            },
        );
        Ok(SandboxId(id))
    }

    async fn attach(&self, id: &SandboxId) -> Result<SandboxIo, SandboxError> {
        self.take_failure(FakeOp::Attach)?;
        let (tx, rx) = mpsc::channel(ATTACH_BUFFER);
        let stdin = self.with(id, |c| {
            if c.status.borrow().0 == SandboxStatus::Exited && c.task.is_some() {
                return Err(SandboxError::InvalidState("container has exited".into()));
            }
            // Docker refuses too: "unpause the container before attach".
            if c.status.borrow().0 == SandboxStatus::Paused {
                return Err(SandboxError::InvalidState("container is paused".into()));
            }
            *c.attachment.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
            let status = c.status.borrow().0;
            if c.stdin_rx.is_none() && status == SandboxStatus::Exited {
                // Attached before a restart: the next process reads a fresh stdin.
                let (tx, rx) = mpsc::unbounded_channel();
                c.stdin_tx = tx;
                c.stdin_rx = Some(rx);
            }
            Ok(c.stdin_tx.clone())
        })?;
        let output = tokio_stream_from(rx);
        Ok(SandboxIo {
            output,
            input: Box::pin(FakeStdin { tx: Some(stdin) }),
        })
    }

    async fn start(&self, id: &SandboxId) -> Result<(), SandboxError> {
        self.take_failure(FakeOp::Start)?;
        let history = self.capabilities.output_history;
        self.with(id, |c| {
            match c.status.borrow().0 {
                SandboxStatus::Running | SandboxStatus::Paused => return Ok(()),
                SandboxStatus::Created | SandboxStatus::Exited => {}
            }
            if history == OutputHistory::SinceStart {
                // A provider that keeps only the latest run's output.
                c.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
            c.status.send_replace((SandboxStatus::Running, None));
            spawn_process(c);
            Ok(())
        })
    }

    async fn pause(&self, id: &SandboxId) -> Result<(), SandboxError> {
        if !self.capabilities.pause {
            return Err(self.unsupported("pause"));
        }
        self.with(id, |c| {
            if c.status.borrow().0 != SandboxStatus::Running {
                return Err(SandboxError::InvalidState(
                    "container is not running".into(),
                ));
            }
            c.paused.send_replace(true);
            c.status.send_replace((SandboxStatus::Paused, None));
            Ok(())
        })
    }

    async fn unpause(&self, id: &SandboxId) -> Result<(), SandboxError> {
        if !self.capabilities.pause {
            return Err(self.unsupported("unpause"));
        }
        self.with(id, |c| {
            if c.status.borrow().0 != SandboxStatus::Paused {
                return Err(SandboxError::InvalidState("container is not paused".into()));
            }
            c.paused.send_replace(false);
            c.status.send_replace((SandboxStatus::Running, None));
            Ok(())
        })
    }

    async fn stop(&self, id: &SandboxId, _grace: Duration) -> Result<(), SandboxError> {
        self.with(id, |c| {
            if c.status.borrow().0 != SandboxStatus::Exited {
                terminate(c, 143);
            }
            Ok(())
        })
    }

    async fn remove(&self, id: &SandboxId) -> Result<(), SandboxError> {
        let mut state = self.lock();
        let key = state.key(id);
        if let Some(mut c) = key.and_then(|k| state.containers.remove(&k)) {
            terminate(&mut c, 137);
        }
        Ok(())
    }

    async fn inspect(&self, id: &SandboxId) -> Result<SandboxInfo, SandboxError> {
        let state = self.lock();
        let key = state
            .key(id)
            .ok_or_else(|| SandboxError::NotFound(id.0.clone()))?;
        Ok(info(&key, &state.containers[&key]))
    }

    async fn list(&self, labels: &[(String, String)]) -> Result<Vec<SandboxInfo>, SandboxError> {
        let state = self.lock();
        let mut out: Vec<_> = state
            .containers
            .iter()
            .filter(|(_, c)| {
                labels
                    .iter()
                    .all(|(k, v)| c.spec.labels.get(k).is_some_and(|x| x == v))
            })
            .map(|(id, c)| info(id, c))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn stdout_history(&self, id: &SandboxId) -> Result<crate::OutputStream, SandboxError> {
        if self.capabilities.output_history == OutputHistory::None {
            return Err(self.unsupported("output history"));
        }
        let log = self.with(id, |c| {
            Ok(c.log.lock().unwrap_or_else(|p| p.into_inner()).clone())
        })?;
        // Handed out in Docker-sized frames, which are not lines.
        let chunks: Vec<Result<OutputChunk, SandboxError>> = log
            .chunks(32 * 1024)
            .map(|c| Ok(OutputChunk::Stdout(Bytes::copy_from_slice(c))))
            .collect();
        Ok(futures_util::stream::iter(chunks).boxed())
    }

    async fn wait(&self, id: &SandboxId) -> Result<i64, SandboxError> {
        let mut rx = self.with(id, |c| Ok(c.status.subscribe()))?;
        let state = rx
            .wait_for(|(s, _)| *s == SandboxStatus::Exited)
            .await
            .map_err(|_| SandboxError::NotFound(id.0.clone()))?;
        Ok(state.1.unwrap_or(0))
    }
}

fn info(id: &str, c: &Container) -> SandboxInfo {
    let (status, exit_code) = *c.status.borrow();
    SandboxInfo {
        id: SandboxId(id.to_owned()),
        name: c.spec.name.clone(),
        status,
        exit_code,
        image_id: c.spec.image.clone(),
        labels: c.spec.labels.clone(),
    }
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<OutputChunk, SandboxError>>,
) -> crate::OutputStream {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}
