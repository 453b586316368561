//! [`FakeRegistry`]: an npm registry on loopback for the packages catalogue's tests, answering
//! in the shapes of the real one (`testdata/npm` holds the registry's own document for pi, which
//! the relay's parser is checked against): `GET /-/v1/search?text=&size=`, `GET /<name>` (a
//! package document) and, as a CDN, `GET /cdn/<name>@<version>/schema.json`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One package the registry knows.
#[derive(Clone, Debug)]
pub struct FakePackage {
    /// Its name (`@scope/name` or `name`).
    pub name: String,
    /// Its latest version.
    pub version: String,
    /// Its keywords (`pi-package` makes it part of the catalogue).
    pub keywords: Vec<String>,
    /// The `pi` field of its `package.json`.
    pub pi: Value,
    /// Its configuration schema on the CDN, if it has one.
    pub schema: Option<Value>,
}

#[derive(Debug, Default)]
struct Shared {
    packages: Mutex<Vec<FakePackage>>,
    searches: AtomicUsize,
    documents: AtomicUsize,
    down: AtomicBool,
    asked: Mutex<Vec<String>>,
}

/// The registry; it stops when dropped.
#[derive(Debug)]
pub struct FakeRegistry {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl FakeRegistry {
    /// Serves `packages` on `127.0.0.1:0`, inside the current tokio runtime.
    pub async fn start(packages: Vec<FakePackage>) -> std::io::Result<FakeRegistry> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            packages: Mutex::new(packages),
            ..Shared::default()
        });
        let app = Router::new()
            .route("/-/v1/search", axum::routing::get(search))
            .fallback(document)
            .with_state(shared.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(FakeRegistry {
            addr,
            shared,
            shutdown,
        })
    }

    /// The registry's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The CDN's base URL.
    pub fn cdn_url(&self) -> String {
        format!("http://{}/cdn", self.addr)
    }

    /// Searches answered so far.
    pub fn searches(&self) -> usize {
        self.shared.searches.load(Ordering::SeqCst)
    }

    /// Package documents answered so far.
    pub fn documents(&self) -> usize {
        self.shared.documents.load(Ordering::SeqCst)
    }

    /// Every path and query asked, in order.
    pub fn asked(&self) -> Vec<String> {
        self.shared
            .asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// From now on every request is answered 503 (`true`) or served again (`false`).
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn record(shared: &Shared, req: &str) -> bool {
    shared
        .asked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(req.to_owned());
    !shared.down.load(Ordering::SeqCst)
}

async fn search(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    if !record(&shared, &req.uri().to_string()) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    shared.searches.fetch_add(1, Ordering::SeqCst);
    let text = q.get("text").cloned().unwrap_or_default();
    let size: usize = q.get("size").and_then(|s| s.parse().ok()).unwrap_or(20);
    let mut keyword = None;
    let mut words = Vec::new();
    for w in text.split_whitespace() {
        match w.strip_prefix("keywords:") {
            Some(k) => keyword = Some(k.to_owned()),
            None => words.push(w.to_lowercase()),
        }
    }
    let packages = shared
        .packages
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let objects: Vec<Value> = packages
        .iter()
        .filter(|p| keyword.as_ref().is_none_or(|k| p.keywords.contains(k)))
        .filter(|p| words.iter().all(|w| p.name.to_lowercase().contains(w)))
        .take(size)
        .map(|p| {
            json!({
                "package": {
                    "name": p.name,
                    "scope": "unscoped",
                    "version": p.version,
                    "description": format!("{} for pi", p.name),
                    "keywords": p.keywords,
                    "date": "2026-11-20T11:09:15.000Z",
                    "links": {
                        "npm": format!("https://www.npmjs.com/package/{}", p.name),
                        "repository": format!("https://github.com/example/{}", p.name.trim_start_matches('@')),
                    },
                    "publisher": {"username": "example"},
                },
                "score": {"final": 0.5, "detail": {"quality": 0.5, "popularity": 0.1, "maintenance": 0.9}},
                "searchScore": 1.0,
            })
        })
        .collect();
    let total = objects.len();
    Json(json!({"objects": objects, "total": total, "time": "Thu Dec 03 2026"})).into_response()
}

async fn document(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    if !record(&shared, &path) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let packages = shared
        .packages
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let decoded = percent_encoding::percent_decode_str(path.trim_start_matches('/'))
        .decode_utf8_lossy()
        .into_owned();
    if let Some(rest) = decoded.strip_prefix("cdn/") {
        let Some(spec) = rest.strip_suffix("/schema.json") else {
            return StatusCode::NOT_FOUND.into_response();
        };
        return match packages
            .iter()
            .find(|p| format!("{}@{}", p.name, p.version) == spec)
            .and_then(|p| p.schema.clone())
        {
            Some(s) => Json(s).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    let Some(p) = packages.iter().find(|p| p.name == decoded) else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "Not found"}))).into_response();
    };
    shared.documents.fetch_add(1, Ordering::SeqCst);
    // The shape of the registry's document (see testdata/npm): every version, dist-tags.
    Json(json!({
        "_id": p.name,
        "name": p.name,
        "dist-tags": {"latest": p.version},
        "versions": {
            "0.0.1": {"name": p.name, "version": "0.0.1", "description": "an old version"},
            p.version.clone(): {
                "name": p.name,
                "version": p.version,
                "description": format!("{} for pi", p.name),
                "keywords": p.keywords,
                "repository": {"type": "git", "url": format!("git+https://github.com/example/{}.git", p.name.trim_start_matches('@'))},
                "pi": p.pi,
                "_id": format!("{}@{}", p.name, p.version),
            }
        },
        "time": {p.version.clone(): "2026-11-20T11:09:15+00:00"},
    }))
    .into_response()
}
