//! pi packages as the npm registry describes them: the catalogue (`GET /api/packages`, a search
//! by keyword) and a package's manifest (its latest version's description, links, what it
//! provides from the `pi` field of its `package.json`, and its configuration schema). The
//! registry's base URL is the operator's (a mirror, a private registry); answers are kept five
//! minutes, the registry is asked at most every 300 ms, and a catalogue the registry cannot give
//! is answered from the last one it did, marked stale.

use std::collections::HashMap;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use relay_gateway::Gateway;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::SessionError;

/// The public npm registry.
pub const DEFAULT_NPM_REGISTRY: &str = "https://registry.npmjs.org";
/// Where packages' files are read (`<cdn>/<name>@<version>/schema.json`).
pub const DEFAULT_PACKAGE_CDN: &str = "https://unpkg.com";
/// How long an answer is kept.
const CACHE_FOR: Duration = Duration::from_secs(5 * 60);
/// How long a manifest the registry could not give is taken as missing: listing configurations
/// with the registry unreachable must not wait for it once per package and request.
const FAILURE_KEPT_FOR: Duration = Duration::from_secs(60);
/// Least time between two requests to the registry.
const REQUEST_GAP: Duration = Duration::from_millis(300);
/// Largest registry answer read (a package document lists every version).
const MAX_DOCUMENT: usize = 32 * 1024 * 1024;
/// Largest schema read.
const MAX_SCHEMA: usize = 1024 * 1024;
/// Deadline of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// What JavaScript's `encodeURIComponent` leaves as is.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// A search of the catalogue.
#[derive(Clone, Debug, PartialEq)]
pub struct PackageSearch {
    /// The packages found, each as the protocol shows it.
    pub packages: Vec<Value>,
    /// When the registry gave them (ISO 8601).
    pub fetched_at: String,
    /// Whether they come from an earlier answer because the registry gave none now.
    pub stale: bool,
}

struct Kept<T> {
    value: T,
    until: Instant,
}

impl<T: Clone> Kept<T> {
    fn new(value: T, for_: Duration) -> Kept<T> {
        Kept {
            value,
            until: Instant::now() + for_,
        }
    }

    fn fresh(&self) -> Option<T> {
        (Instant::now() < self.until).then(|| self.value.clone())
    }
}

/// The catalogue and manifests, cached.
pub(crate) struct Packages {
    gateway: Gateway,
    registry: String,
    cdn: String,
    searches: Mutex<HashMap<(String, String, u32), Kept<PackageSearch>>>,
    manifests: Mutex<HashMap<String, Kept<Option<Value>>>>,
    last_request: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Packages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packages")
            .field("registry", &self.registry)
            .field("cdn", &self.cdn)
            .finish_non_exhaustive()
    }
}

impl Packages {
    pub(crate) fn new(gateway: Gateway, registry: &str, cdn: &str) -> Packages {
        Packages {
            gateway,
            registry: registry.trim_end_matches('/').to_owned(),
            cdn: cdn.trim_end_matches('/').to_owned(),
            searches: Mutex::default(),
            manifests: Mutex::default(),
            last_request: Mutex::default(),
        }
    }

    /// GETs `url` as JSON, keeping the gap between registry requests. `Ok(None)` for a 404.
    async fn get_json(&self, url: &str, max: usize) -> Result<Option<Value>, String> {
        {
            let mut last = self.last_request.lock().await;
            if let Some(at) = *last {
                tokio::time::sleep_until(at + REQUEST_GAP).await;
            }
            *last = Some(Instant::now());
        }
        let got = self
            .gateway
            .fetch(url, max, REQUEST_TIMEOUT)
            .await
            .map_err(|e| relay_gateway::error_chain(&e))?;
        match got.status {
            200..=299 => serde_json::from_slice(&got.body)
                .map(Some)
                .map_err(|e| format!("{url} answered something that is not JSON: {e}")),
            404 => Ok(None),
            s => Err(format!("{url} answered {s}")),
        }
    }

    /// Searches packages with keyword `tag` and text `query`, at most `limit` (1 to 50).
    pub(crate) async fn search(
        &self,
        tag: &str,
        query: &str,
        limit: u32,
    ) -> Result<PackageSearch, SessionError> {
        let limit = limit.clamp(1, 50);
        let key = (tag.to_owned(), query.to_owned(), limit);
        if let Some(hit) = self.searches.lock().await.get(&key).and_then(Kept::fresh) {
            return Ok(hit);
        }
        match self.search_registry(tag, query, limit).await {
            Ok(packages) => {
                let found = PackageSearch {
                    packages,
                    fetched_at: relay_hub::timestamp(),
                    stale: false,
                };
                let kept = Kept::new(found.clone(), CACHE_FOR);
                self.searches.lock().await.insert(key, kept);
                Ok(found)
            }
            Err(why) => {
                tracing::warn!(registry = %self.registry, error = %why, "package catalogue unavailable");
                match self.searches.lock().await.get(&key) {
                    Some(old) => Ok(PackageSearch {
                        stale: true,
                        ..old.value.clone()
                    }),
                    None => Err(SessionError::CatalogUnavailable),
                }
            }
        }
    }

    async fn search_registry(
        &self,
        tag: &str,
        query: &str,
        limit: u32,
    ) -> Result<Vec<Value>, String> {
        let text = format!("keywords:{tag} {query}");
        let url = format!(
            "{}/-/v1/search?text={}&size={limit}",
            self.registry,
            utf8_percent_encode(text.trim_end(), COMPONENT)
        );
        let found = self
            .get_json(&url, MAX_DOCUMENT)
            .await?
            .ok_or_else(|| format!("{url} answered 404"))?;
        let objects = found["objects"]
            .as_array()
            .ok_or_else(|| format!("{url} answered no `objects`"))?;
        let mut out = Vec::with_capacity(objects.len());
        for o in objects {
            let Some(p) = o.get("package").filter(|p| p["name"].is_string()) else {
                continue;
            };
            let name = p["name"].as_str().unwrap_or_default();
            // A manifest that cannot be read leaves the search's own description.
            let manifest = match self.manifest(name).await {
                Ok(m) => m,
                Err(why) => {
                    tracing::debug!(package = name, error = %why, "no manifest");
                    None
                }
            };
            out.push(catalogue_entry(p, manifest.as_ref()));
        }
        Ok(out)
    }

    /// The manifest of the package `reference` names (`npm:@scope/pkg@1.2.3` → `@scope/pkg`),
    /// `None` for a package the registry does not have or a reference that is not npm's (git,
    /// URL, path). An error when the registry cannot be asked; the package then counts as
    /// missing for a minute.
    pub(crate) async fn manifest(&self, reference: &str) -> Result<Option<Value>, String> {
        let Some(name) = npm_name(reference) else {
            return Ok(None);
        };
        if let Some(hit) = self.manifests.lock().await.get(&name).and_then(Kept::fresh) {
            return Ok(hit);
        }
        let url = format!(
            "{}/{}",
            self.registry,
            utf8_percent_encode(&name, COMPONENT)
        );
        let document = match self.get_json(&url, MAX_DOCUMENT).await {
            Ok(d) => d,
            Err(why) => {
                let kept = Kept::new(None, FAILURE_KEPT_FOR);
                self.manifests.lock().await.insert(name, kept);
                return Err(why);
            }
        };
        let manifest = match document {
            None => None,
            Some(doc) => {
                let mut m = manifest_of(&doc);
                if let Some(m) = m.as_mut() {
                    let version = m["version"].as_str().unwrap_or_default();
                    let url = format!("{}/{name}@{version}/schema.json", self.cdn);
                    match self.get_json(&url, MAX_SCHEMA).await {
                        Ok(Some(schema)) if schema.is_object() => m["schema"] = schema,
                        Ok(_) => {}
                        Err(why) => tracing::debug!(package = %name, error = %why, "no schema"),
                    }
                }
                m
            }
        };
        let kept = Kept::new(manifest.clone(), CACHE_FOR);
        self.manifests.lock().await.insert(name, kept);
        Ok(manifest)
    }
}

/// The npm name in a pi package reference: `npm:` and a version or `#fragment` removed; `None`
/// for git, URL and path references.
pub fn npm_name(reference: &str) -> Option<String> {
    let r = reference.trim();
    let r = r.strip_prefix("npm:").unwrap_or(r);
    if r.is_empty()
        || r.starts_with("git:")
        || r.starts_with("git+")
        || r.starts_with("http://")
        || r.starts_with("https://")
        || r.starts_with('.')
        || r.starts_with('/')
        || r.starts_with('~')
    {
        return None;
    }
    let r = r.split('#').next().unwrap_or_default();
    let name = match r.strip_prefix('@') {
        // `@scope/name@version`: the version is after the second `@`.
        Some(rest) => match rest.split_once('@') {
            Some((scoped, _)) => format!("@{scoped}"),
            None => r.to_owned(),
        },
        None => r.split('@').next().unwrap_or_default().to_owned(),
    };
    let valid = !name.is_empty()
        && name.len() <= 214
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@/-._~".contains(c))
        && name.matches('/').count() == usize::from(name.starts_with('@'));
    valid.then_some(name)
}

/// A manifest from a registry package document: its latest version (`dist-tags.latest`, else
/// the last listed) with what it provides to pi.
pub fn manifest_of(doc: &Value) -> Option<Value> {
    let versions = doc["versions"].as_object()?;
    let latest = doc["dist-tags"]["latest"]
        .as_str()
        .filter(|v| versions.contains_key(*v))
        .or_else(|| versions.keys().next_back().map(String::as_str))?;
    let v = &versions[latest];
    let pi = &v["pi"];
    let list = |key: &str| -> Value {
        match &pi[key] {
            Value::Array(a) => Value::Array(a.clone()),
            _ => json!([]),
        }
    };
    Some(json!({
        "name": doc["name"].as_str().or(v["name"].as_str()).unwrap_or_default(),
        "version": latest,
        "description": v["description"].as_str(),
        "keywords": v["keywords"].as_array().cloned().unwrap_or_default(),
        "homepage": v["homepage"].as_str(),
        "repository": repository_url(&v["repository"]),
        "tools": list("tools"),
        "providers": list("providers"),
        "skills": list("skills"),
        "schema": Value::Null,
        "fetchedAt": relay_hub::timestamp(),
    }))
}

fn repository_url(r: &Value) -> Value {
    match r {
        Value::String(s) => json!(s),
        Value::Object(o) => o.get("url").cloned().unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// One catalogue entry: the search's own fields, the manifest's where it has them.
fn catalogue_entry(p: &Value, manifest: Option<&Value>) -> Value {
    let mut out = Map::new();
    let m = |key: &str| manifest.map(|m| &m[key]).filter(|v| !v.is_null());
    out.insert("name".into(), p["name"].clone());
    out.insert(
        "version".into(),
        p["version"].as_str().map_or(Value::Null, |v| json!(v)),
    );
    if let Some(d) = p["description"]
        .as_str()
        .map(|d| json!(d))
        .or(m("description").cloned())
    {
        out.insert("description".into(), d);
    }
    out.insert(
        "keywords".into(),
        p["keywords"]
            .as_array()
            .cloned()
            .map_or(json!([]), Value::Array),
    );
    let links = &p["links"];
    if let Some(h) = links["homepage"]
        .as_str()
        .map(|h| json!(h))
        .or(m("homepage").cloned())
    {
        out.insert("homepage".into(), h);
    }
    if let Some(r) = links["repository"]
        .as_str()
        .map(|r| json!(r))
        .or(m("repository").cloned())
    {
        out.insert("repository".into(), r);
    }
    if let Some(m) = manifest {
        out.insert(
            "extensionMeta".into(),
            json!({"tools": m["tools"], "providers": m["providers"], "skills": m["skills"]}),
        );
    }
    Value::Object(out)
}

/// The fields a manifest's schema requires that `config` leaves missing, null or blank.
pub fn missing_required(config: &Value, manifest: Option<&Value>) -> Vec<String> {
    let Some(required) = manifest.and_then(|m| m["schema"]["required"].as_array()) else {
        return Vec::new();
    };
    required
        .iter()
        .filter_map(Value::as_str)
        .filter(|field| match config.get(*field) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.trim().is_empty(),
            Some(_) => false,
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_npm_packages_or_nothing() {
        for (reference, name) in [
            ("npm:@scope/pkg@1.2.3", Some("@scope/pkg")),
            ("@scope/pkg", Some("@scope/pkg")),
            ("  pkg@^2  ", Some("pkg")),
            ("pkg#main", Some("pkg")),
            ("git:github.com/a/b@v1", None),
            ("https://github.com/a/b", None),
            ("./local", None),
            ("/abs/path", None),
            ("", None),
            ("a/b/c", None),
            ("bad name", None),
        ] {
            assert_eq!(npm_name(reference).as_deref(), name, "{reference}");
        }
    }

    /// The registry's own document for pi (its latest version, as the npm registry answered
    /// it; `testdata/npm`).
    #[test]
    fn a_real_package_document_gives_its_latest_version() {
        let doc: Value =
            serde_json::from_str(include_str!("../../../testdata/npm/pi-coding-agent.json"))
                .unwrap();
        let m = manifest_of(&doc).unwrap();
        assert_eq!(m["name"], "@earendil-works/pi-coding-agent");
        assert_eq!(m["version"], doc["dist-tags"]["latest"]);
        assert_eq!(
            m["repository"],
            "git+https://github.com/earendil-works/pi.git"
        );
        assert!(
            m["keywords"]
                .as_array()
                .unwrap()
                .contains(&json!("coding-agent"))
        );
        assert_eq!(m["skills"], json!([]));
    }

    #[test]
    fn a_pi_package_says_what_it_provides_and_its_schema_what_it_needs() {
        let doc = json!({
            "name": "pi-x",
            "dist-tags": {"latest": "2.0.0"},
            "versions": {
                "1.0.0": {"description": "old"},
                "2.0.0": {"description": "new", "repository": "github:a/b",
                          "pi": {"skills": ["./skills"], "tools": ["t"]}}
            }
        });
        let mut m = manifest_of(&doc).unwrap();
        assert_eq!(m["description"], "new");
        assert_eq!(m["skills"], json!(["./skills"]));
        assert_eq!(m["tools"], json!(["t"]));
        assert_eq!(m["repository"], "github:a/b");
        m["schema"] = json!({"type": "object", "required": ["apiKey", "region", "n"]});
        let config = json!({"apiKey": "  ", "n": 0});
        assert_eq!(missing_required(&config, Some(&m)), ["apiKey", "region"]);
        assert!(missing_required(&config, None).is_empty());
        let entry = catalogue_entry(&json!({"name": "pi-x", "version": "2.0.0"}), Some(&m));
        assert_eq!(entry["description"], "new");
        assert_eq!(entry["extensionMeta"]["skills"], json!(["./skills"]));
    }
}
