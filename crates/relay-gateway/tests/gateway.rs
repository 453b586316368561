//! The gateway against real sockets: a sandbox's side on the session's Unix socket, a provider
//! served over TLS with its own CA on loopback (reached by a mapped name), a plain TCP echo
//! server behind CONNECT.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use relay_gateway::dial::DialConfig;
use relay_gateway::{
    ApiKind, Authority, DomainSecret, EgressMode, EgressPolicy, Gateway, GatewayConfig, Limits,
    ProviderRoute, Routes,
};
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio_util::sync::CancellationToken;

const KEY: &str = "sk-real-secret-key";

/// What the provider saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
}

/// A provider over TLS on loopback: `llm.test` by its certificate, signed by a test CA.
struct Provider {
    port: u16,
    ca: rustls_pki_types::CertificateDer<'static>,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<tokio::sync::Notify>,
}

impl Provider {
    async fn start() -> Provider {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["llm.test".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(tokio::sync::Notify::new());
        let (s, r) = (seen.clone(), release.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, seen, release) = (acceptor.clone(), s.clone(), r.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        answer(req, seen.clone(), release.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Provider {
            port,
            ca: ca_cert.der().clone(),
            seen,
            release,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<tokio::sync::Notify>,
) -> Result<Response<Body>, std::convert::Infallible> {
    seen.lock().unwrap().push(Seen {
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: req.headers().clone(),
    });
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {KEY}"));
    if !authorized {
        let mut res = Response::new(Full::new(Bytes::from("{\"error\":\"bad key\"}")).boxed());
        *res.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(res);
    }
    if req.uri().path() != "/v1/chat/completions" {
        return Ok(Response::new(
            Full::new(Bytes::from("{\"data\":[]}")).boxed(),
        ));
    }
    // The second event waits for the test's word: the sandbox can only have read the first
    // one if the gateway passed it on at once.
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(4);
    tokio::spawn(async move {
        let _ = tx
            .send_data(Bytes::from(
                "data: {\"choices\":[{\"delta\":{\"content\":\"he\"}}]}\n\n",
            ))
            .await;
        release.notified().await;
        let _ = tx
            .send_data(Bytes::from(
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n",
            ))
            .await;
    });
    let mut res = Response::new(body.boxed());
    res.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    Ok(res)
}

/// A TCP server that echoes what it reads.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

struct Setup {
    gateway: Gateway,
    socket: PathBuf,
    provider: Provider,
    echo: SocketAddr,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

async fn setup(mode: EgressMode, allow: &[&str], limits: Limits) -> Setup {
    setup_with(mode, allow, limits, None).await
}

async fn setup_with(
    mode: EgressMode,
    allow: &[&str],
    limits: Limits,
    authority: Option<Arc<Authority>>,
) -> Setup {
    let provider = Provider::start().await;
    let echo = echo_server().await;
    let resolve = HashMap::from([
        ("llm.test".to_owned(), vec!["127.0.0.1".parse().unwrap()]),
        ("echo.test".to_owned(), vec!["127.0.0.1".parse().unwrap()]),
    ]);
    let stop = CancellationToken::new();
    let gateway = Gateway::new(
        GatewayConfig {
            dial: DialConfig {
                resolve,
                connect_timeout: Duration::from_millis(500),
                proxy: None,
            },
            extra_ca: vec![provider.ca.clone()],
            limits,
            authority,
        },
        stop.clone(),
    )
    .unwrap();
    gateway.set_routes(Routes::new([ProviderRoute {
        id: "mock".into(),
        upstream: format!("https://llm.test:{}/v1", provider.port)
            .parse()
            .unwrap(),
        api: ApiKind::OpenAiCompletions,
        bearer: false,
        key: Some(SecretString::from(KEY)),
        headers: vec![],
    }]));
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("egress.sock");
    let policy = EgressPolicy {
        mode,
        allow: allow.iter().map(|a| a.parse().unwrap()).collect(),
    };
    gateway.open("s1", &socket, policy).unwrap();
    Setup {
        gateway,
        socket,
        provider,
        echo,
        _dir: dir,
        stop,
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(socket: &Path) -> Sender {
    let unix = UnixStream::connect(socket).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(unix))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    send
}

fn post(path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "127.0.0.1:18080")
        .header(
            "authorization",
            format!("Bearer {}", relay_gateway::provider::PLACEHOLDER_KEY),
        )
        .header("x-api-key", "a-key-the-agent-found")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

async fn text(res: Response<Incoming>) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn a_model_call_reaches_the_provider_with_the_relays_key_and_streams_back() {
    let s = setup(EgressMode::Allowlist, &[], Limits::default()).await;
    let mut send = connect(&s.socket).await;
    let res = send
        .send_request(post(
            "/p/mock/v1/chat/completions",
            r#"{"model":"m","stream":true}"#,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("\"he\""),
        "the first event arrives before the provider sends the rest"
    );
    s.provider.release.notify_one();
    let mut rest = Vec::new();
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            rest.extend_from_slice(&d);
        }
    }
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));

    let seen = s.provider.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].headers["authorization"], format!("Bearer {KEY}"));
    assert!(
        !seen[0].headers.contains_key("x-api-key"),
        "the sandbox's key is gone"
    );
    assert_eq!(
        seen[0].headers["host"],
        format!("llm.test:{}", s.provider.port)
    );
    assert_eq!(seen[0].headers["accept-encoding"], "identity");

    // The same connection serves the next request (kept alive both ways).
    let res = send
        .send_request(
            Request::get("/p/mock/v1/models")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(text(res).await, "{\"data\":[]}");

    let usage = s.gateway.usage("s1");
    let mock = &usage.providers["mock"];
    assert_eq!((mock.requests, mock.failed), (2, 0));
    assert_eq!((mock.input_tokens, mock.output_tokens), (21, 4));
    assert_eq!(
        mock.bytes_sent,
        r#"{"model":"m","stream":true}"#.len() as u64
    );
    assert!(mock.bytes_received > 100);
    s.stop.cancel();
    s.gateway.stopped().await;
}

#[tokio::test]
async fn requests_outside_the_providers_api_are_refused_with_a_reason() {
    let s = setup(EgressMode::Allowlist, &[], Limits::default()).await;
    let mut send = connect(&s.socket).await;
    for (path, status, says) in [
        (
            "/p/mock/files",
            403,
            "not one of the provider's model API paths",
        ),
        (
            "/p/mock/v1/chat/completions/../../admin",
            403,
            "'..' segments",
        ),
        (
            "/p/other/v1/messages",
            404,
            "no model provider \\\"other\\\"",
        ),
        ("/", 404, "egress gateway"),
    ] {
        let res = send.send_request(post(path, "{}")).await.unwrap();
        assert_eq!(res.status(), status, "{path}");
        let body = text(res).await;
        assert!(body.contains(says), "{path}: {body}");
    }
    let res = send
        .send_request(
            Request::get("http://example.com/")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(text(res).await.contains("plain-HTTP proxy requests"));
    assert!(s.provider.seen().is_empty(), "nothing reached the provider");
    let mock = &s.gateway.usage("s1").providers["mock"];
    assert_eq!((mock.requests, mock.failed), (2, 2));
}

async fn connect_to(send: &mut Sender, target: &str) -> Response<Incoming> {
    send.send_request(
        Request::connect(target)
            .header("host", target)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn connect_tunnels_allowed_hosts_and_answers_every_other_with_a_status() {
    let s = setup(
        EgressMode::Allowlist,
        &["*.test:1"], // a wildcard on another port: echo.test's port is not allowed by it
        Limits::default(),
    )
    .await;
    let echo = format!("echo.test:{}", s.echo.port());
    let mut send = connect(&s.socket).await;
    let res = connect_to(&mut send, &echo).await;
    assert_eq!(res.status(), 403);
    assert!(
        text(res)
            .await
            .contains("not on this session's egress allowlist")
    );

    s.gateway
        .open(
            "s1",
            &s.socket,
            EgressPolicy {
                mode: EgressMode::Allowlist,
                allow: vec![echo.parse().unwrap()],
            },
        )
        .unwrap();
    let mut send = connect(&s.socket).await;
    let res = connect_to(&mut send, &echo).await;
    assert_eq!(res.status(), 200);
    let mut tunnel = TokioIo::new(hyper::upgrade::on(res).await.unwrap());
    tunnel.write_all(b"ping through the relay").await.unwrap();
    let mut buf = [0u8; 22];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping through the relay");
    drop(tunnel);

    for (target, status, says) in [
        ("127.0.0.1:80", 403, "addresses are refused"),
        ("[::1]:443", 403, "addresses are refused"),
        (
            "evil.example:443",
            403,
            "not on this session's egress allowlist",
        ),
    ] {
        let mut send = connect(&s.socket).await;
        let res = connect_to(&mut send, target).await;
        assert_eq!(res.status(), status, "{target}");
        let body = text(res).await;
        assert!(body.contains(says), "{target}: {body}");
    }

    let report = s.gateway.usage("s1");
    let host = |t: &str| {
        report
            .hosts
            .iter()
            .find(|h| h.target == t)
            .cloned()
            .unwrap()
    };
    let e = host(&echo);
    assert_eq!((e.allowed, e.denied), (1, 1));
    assert_eq!(host("evil.example:443").denied, 1);
    assert_eq!(host("[::1]:443").denied, 1);
}

#[tokio::test]
async fn names_resolving_to_the_relays_host_are_refused_and_dead_hosts_get_502() {
    let s = setup(EgressMode::Open, &[], Limits::default()).await;
    let mut send = connect(&s.socket).await;
    // Not mapped by the operator: resolved by the relay, which refuses loopback.
    let res = connect_to(&mut send, &format!("localhost:{}", s.echo.port())).await;
    assert_eq!(res.status(), 403);
    assert!(
        text(res)
            .await
            .contains("addresses sandboxes may not reach")
    );

    // Mapped, but nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut send = connect(&s.socket).await;
    let res = connect_to(&mut send, &format!("echo.test:{port}")).await;
    assert_eq!(res.status(), 502);
    assert!(text(res).await.contains("cannot connect to echo.test"));

    // A malformed target.
    let mut send = connect(&s.socket).await;
    let res = connect_to(&mut send, "echo.test:0").await;
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn a_host_that_never_answers_the_handshake_gets_504() {
    // A listener whose accept queue is full drops further SYNs: connecting hangs.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr: SocketAddr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(c);
        }
    }
    let s = setup(EgressMode::Open, &[], Limits::default()).await;
    let mut send = connect(&s.socket).await;
    let res = connect_to(&mut send, &format!("echo.test:{}", addr.port())).await;
    assert_eq!(res.status(), 504);
    assert!(text(res).await.contains("timed out"));
    drop(socket);
}

#[tokio::test]
async fn deny_refuses_even_the_providers_hosts_but_model_calls_still_work() {
    let s = setup(EgressMode::Deny, &[], Limits::default()).await;
    let mut send = connect(&s.socket).await;
    let res = connect_to(&mut send, &format!("llm.test:{}", s.provider.port)).await;
    assert_eq!(res.status(), 403);
    assert!(text(res).await.contains("egress policy is deny"));
    let mut send = connect(&s.socket).await;
    let res = send
        .send_request(
            Request::get("/p/mock/v1/models")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn oversized_and_slow_request_heads_are_cut_off() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        max_header_bytes: 16 * 1024,
        ..Limits::default()
    };
    let s = setup(EgressMode::Allowlist, &[], limits).await;
    let mut send = connect(&s.socket).await;
    let res = send
        .send_request(
            Request::get("/p/mock/v1/models")
                .header("x-big", "a".repeat(32 * 1024))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // A client that never finishes its head is disconnected (hyper answers 408 first).
    let mut raw = UnixStream::connect(&s.socket).await.unwrap();
    raw.write_all(b"GET /p/mock/v1/models HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    raw.read_to_end(&mut out).await.unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 408"), "{out}");
}

#[tokio::test]
async fn closing_a_session_removes_its_socket_and_reopening_replaces_a_stale_one() {
    let s = setup(EgressMode::Allowlist, &[], Limits::default()).await;
    assert!(s.gateway.is_open("s1"));
    s.gateway.close("s1");
    assert!(!s.gateway.is_open("s1"));
    assert!(!s.socket.exists());
    assert!(UnixStream::connect(&s.socket).await.is_err());

    // A relay that died left its socket behind; the next one binds over it.
    let stale = std::os::unix::net::UnixListener::bind(&s.socket).unwrap();
    drop(stale);
    assert!(s.socket.exists());
    s.gateway
        .open("s1", &s.socket, EgressPolicy::default())
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o666, "the forwarder's user can connect");
    let mut send = connect(&s.socket).await;
    let res = send
        .send_request(
            Request::get("/p/mock/v1/models")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Never anything but a socket is replaced.
    let file = s.socket.with_file_name("not-a-socket");
    std::fs::write(&file, "x").unwrap();
    let e = s
        .gateway
        .open("s2", &file, EgressPolicy::default())
        .unwrap_err();
    assert!(e.to_string().contains("cannot serve the egress socket"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

#[tokio::test]
async fn an_unreachable_provider_is_a_502_with_the_cause() {
    let s = setup(EgressMode::Allowlist, &[], Limits::default()).await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    s.gateway.set_routes(Routes::new([ProviderRoute {
        id: "mock".into(),
        upstream: format!("https://llm.test:{port}/v1").parse().unwrap(),
        api: ApiKind::OpenAiCompletions,
        bearer: false,
        key: Some(SecretString::from(KEY)),
        headers: vec![],
    }]));
    let mut send = connect(&s.socket).await;
    let res = send
        .send_request(post("/p/mock/v1/chat/completions", "{}"))
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let body = text(res).await;
    assert!(body.contains("could not reach https://llm.test"), "{body}");
    assert!(body.contains("cannot connect to llm.test"), "{body}");
}

/// An HTTP proxy for the relay itself, as a host that needs one has: it records what it was
/// asked for and tunnels every name to the echo server.
async fn upstream_proxy(echo: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<(String, String)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let auth = req
                            .headers()
                            .get("proxy-authorization")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        log.lock().unwrap().push((req.uri().to_string(), auth));
                        let upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let mut client = TokioIo::new(upgrade.await.unwrap());
                            let mut server = tokio::net::TcpStream::connect(echo).await.unwrap();
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        });
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, asked)
}

#[tokio::test]
async fn with_an_upstream_proxy_tunnels_go_through_it_and_mapped_names_do_not() {
    let echo = echo_server().await;
    let (proxy, asked) = upstream_proxy(echo).await;
    let stop = CancellationToken::new();
    let gateway = Gateway::new(
        GatewayConfig {
            dial: DialConfig {
                resolve: HashMap::from([("echo.test".to_owned(), vec![echo.ip()])]),
                connect_timeout: Duration::from_secs(5),
                proxy: Some(format!("http://relay:s3cret@{proxy}").parse().unwrap()),
            },
            extra_ca: vec![],
            limits: Limits::default(),
            authority: None,
        },
        stop.clone(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("egress.sock");
    let open = EgressPolicy {
        mode: EgressMode::Open,
        allow: vec![],
    };
    gateway.open("s1", &socket, open).unwrap();

    // A name the relay does not know: the proxy resolves it.
    let mut send = connect(&socket).await;
    let res = connect_to(&mut send, "far.example:4443").await;
    assert_eq!(res.status(), 200);
    let mut tunnel = TokioIo::new(hyper::upgrade::on(res).await.unwrap());
    tunnel.write_all(b"via proxy").await.unwrap();
    let mut buf = [0u8; 9];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"via proxy");
    {
        let asked = asked.lock().unwrap();
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].0, "far.example:4443");
        use base64::Engine;
        let expected = base64::engine::general_purpose::STANDARD.encode("relay:s3cret");
        assert_eq!(asked[0].1, format!("Basic {expected}"));
    }

    // A mapped name is reached directly.
    let mut send = connect(&socket).await;
    let res = connect_to(&mut send, &format!("echo.test:{}", echo.port())).await;
    assert_eq!(res.status(), 200);
    assert_eq!(asked.lock().unwrap().len(), 1, "not through the proxy");
    stop.cancel();
}

/// A rustls client trusting only `ca_pem`.
fn client_trusting(ca_pem: &str) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn a_domain_bound_secret_is_put_in_only_on_requests_to_its_domain() {
    let ca_dir = tempfile::tempdir().unwrap();
    let authority = Arc::new(Authority::load_or_create(ca_dir.path()).unwrap());
    let s = setup_with(
        EgressMode::Allowlist,
        &[],
        Limits::default(),
        Some(authority.clone()),
    )
    .await;
    let target = format!("llm.test:{}", s.provider.port);
    s.gateway.set_domain_secrets(vec![DomainSecret {
        name: "TOKEN".into(),
        placeholder: "pi-relay-secret-x".into(),
        value: SecretString::from(KEY),
        domains: vec![target.parse().unwrap()],
    }]);
    // The sandbox finds the relay's CA beside its socket.
    let dir = s.socket.parent().unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        authority.ca_pem()
    );

    // The secret's host needs no allowlist entry; the relay ends the TLS with its own CA.
    let mut send = connect(&s.socket).await;
    let res = connect_to(&mut send, &target).await;
    assert_eq!(res.status(), 200);
    let tunnel = TokioIo::new(hyper::upgrade::on(res).await.unwrap());
    let name = rustls_pki_types::ServerName::try_from("llm.test").unwrap();
    let tls = client_trusting(authority.ca_pem())
        .connect(name, tunnel)
        .await
        .expect("the relay's certificate for llm.test, trusted through its CA");
    let (mut inner, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let res = inner
        .send_request(
            Request::get("/v1/models?key=pi-relay-secret-x&x=1")
                .header("host", "llm.test")
                .header("authorization", "Bearer pi-relay-secret-x")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the provider got the real key");
    let seen = s.provider.seen().pop().unwrap();
    assert_eq!(seen.path, format!("/v1/models?key={KEY}&x=1"));
    assert_eq!(seen.headers["authorization"], format!("Bearer {KEY}"));

    // With no secret bound to it the host is tunneled untouched: the sandbox meets the host's
    // own certificate, which the relay's CA did not sign.
    s.gateway.set_domain_secrets(vec![]);
    s.gateway
        .open(
            "s1",
            &s.socket,
            EgressPolicy {
                mode: EgressMode::Open,
                allow: vec![],
            },
        )
        .unwrap();
    let mut send = connect(&s.socket).await;
    let res = connect_to(&mut send, &target).await;
    assert_eq!(res.status(), 200);
    let tunnel = TokioIo::new(hyper::upgrade::on(res).await.unwrap());
    let name = rustls_pki_types::ServerName::try_from("llm.test").unwrap();
    assert!(
        client_trusting(authority.ca_pem())
            .connect(name, tunnel)
            .await
            .is_err()
    );
    s.stop.cancel();
}

/// The relay's own requests (the packages catalogue) use the gateway's dialer: the operator's
/// name mappings and CA, a bounded body, a deadline.
#[tokio::test]
async fn the_relays_own_fetches_use_the_mappings_and_ca_and_are_bounded() {
    let s = setup(EgressMode::Deny, &[], Limits::default()).await;
    let url = format!("https://llm.test:{}/v1/models", s.provider.port);
    let got = s
        .gateway
        .fetch(&url, 1024, Duration::from_secs(10))
        .await
        .unwrap();
    // No key: the relay's own requests never carry a provider's.
    assert_eq!(got.status, 401);
    assert_eq!(&got.body[..], b"{\"error\":\"bad key\"}");
    assert!(
        s.provider
            .seen()
            .last()
            .unwrap()
            .headers
            .get("authorization")
            .is_none()
    );
    let err = s
        .gateway
        .fetch(&url, 4, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(err, relay_gateway::FetchError::Body { .. }),
        "{err}"
    );
    for bad in ["ftp://llm.test/x", "not a url", "/relative"] {
        let err = s
            .gateway
            .fetch(bad, 4, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, relay_gateway::FetchError::BadUrl(_)),
            "{bad}: {err}"
        );
    }
    // A name nobody maps and the resolver cannot find is an error, not a hang.
    let err = s
        .gateway
        .fetch("https://nowhere.invalid/x", 4, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(err, relay_gateway::FetchError::Request { .. }),
        "{err}"
    );
    s.stop.cancel();
}
