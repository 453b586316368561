//! [`MockLlm`]: the loopback listener, the axum server on it, and its shutdown when dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::serve::ListenerExt;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::completion::Script;
use crate::handler::{Shared, answer};

/// A mock LLM speaking the OpenAI chat-completions streaming API on `127.0.0.1`.
///
/// Any `POST` whose path ends with `/chat/completions` is recorded and answered with a stream of
/// `chat.completion.chunk` events: a `bash` tool call running [`Script::tool_command`] if the
/// request offers tools and its last message is not a tool result, otherwise
/// [`Script::final_text`]. Other paths get `404`. The server stops when this value is dropped.
#[derive(Debug)]
pub struct MockLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    /// The CA certificate (PEM) of a mock serving HTTPS.
    tls: Option<String>,
}

impl MockLlm {
    /// Binds `127.0.0.1:0` and serves until dropped. Must be called inside a tokio runtime; the
    /// server runs as tasks on that runtime.
    ///
    /// pi inside a container reaches it only when the container shares the host's network
    /// namespace (`--network host`), which is how the relay's end-to-end tests run it.
    pub async fn start(script: Script) -> std::io::Result<MockLlm> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        // An SSE answer goes out in small writes; without this, Nagle's algorithm would delay the
        // streaming the tests want to observe. A socket that refuses the option still works.
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        Ok(MockLlm::serve(listener, addr, script, None))
    }

    /// As [`start`](MockLlm::start), over HTTPS: the mock presents a certificate for `names`
    /// signed by a CA made for it ([`ca_pem`](MockLlm::ca_pem)). A client reaches it by one of
    /// those names mapped to `127.0.0.1` ([`https_url`](MockLlm::https_url)), the way a real
    /// provider is reached, with the CA added to what it trusts.
    pub async fn start_tls(script: Script, names: &[&str]) -> std::io::Result<MockLlm> {
        let ca = crate::tls::test_ca(names)?;
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = tcp.local_addr()?;
        let listener = crate::tls::TlsListener {
            tcp,
            acceptor: ca.acceptor,
        };
        Ok(MockLlm::serve(listener, addr, script, Some(ca.ca_pem)))
    }

    /// Serves the mock on `listener` (bound to `addr`) until it is dropped.
    fn serve<L>(listener: L, addr: SocketAddr, script: Script, tls: Option<String>) -> MockLlm
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared::new(script, shutdown.clone()));
        let app = Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&shared));
        // Once cancelled, the server drops the listener, closes idle connections and lets the
        // others finish their response (a request still waiting for its body is answered at
        // once), then the task ends. Serving itself never fails, so its result says nothing.
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
        tokio::spawn(async move {
            let _ = serve.await;
        });
        MockLlm {
            addr,
            shared,
            shutdown,
            tls,
        }
    }

    /// The CA certificate (PEM) a mock started with [`start_tls`](MockLlm::start_tls) is
    /// trusted by; `None` for a plain-HTTP mock.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_deref()
    }

    /// `https://<name>:<port>/v1`: the `baseUrl` of a TLS mock reached as `name`.
    pub fn https_url(&self, name: &str) -> String {
        format!("https://{name}:{}/v1", self.addr.port())
    }

    /// The port the mock listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The value for `baseUrl` in pi's `models.json`: `http://127.0.0.1:<port>/v1`. pi's OpenAI
    /// client appends `/chat/completions`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every chat-completions request body received so far, parsed as JSON, in arrival order.
    /// Bodies that are not JSON are answered with `400` and not recorded.
    pub fn requests(&self) -> Vec<Value> {
        self.shared.requests().clone()
    }

    /// Pauses `delay` before each chunk of the answers that start from now on (zero: none), so
    /// a test can act while a response is still streaming.
    pub fn set_chunk_delay(&self, delay: std::time::Duration) {
        self.shared.set_chunk_delay(delay);
    }

    /// The `Authorization` header each recorded request came with, in arrival order (`None`
    /// for a request without one).
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.shared.authorizations().clone()
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
