//! The relay's own requests to the outside world (the npm registry, for the packages catalogue
//! and package manifests; GitHub's API): requests without a body, through the same dialer as the gateway (the operator's name
//! mappings, upstream proxy and extra CA), with a deadline and a bounded body.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, Uri};

use crate::Gateway;

/// An answer to [`Gateway::fetch`].
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Its HTTP status.
    pub status: u16,
    /// Its headers.
    pub headers: hyper::HeaderMap,
    /// Its body.
    pub body: Bytes,
}

/// Why [`Gateway::fetch`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not an `http` or `https` one with a host.
    #[error("{0:?} is not an http(s) URL")]
    BadUrl(String),
    /// The request failed (name, connection, TLS, protocol).
    #[error("cannot reach {url}")]
    Request {
        /// What was asked.
        url: String,
        /// Why.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The body could not be read, or is larger than allowed.
    #[error("cannot read the answer of {url}")]
    Body {
        /// What was asked.
        url: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No whole answer within the deadline.
    #[error("{url} did not answer within {after:?}")]
    Timeout {
        /// What was asked.
        url: String,
        /// The deadline.
        after: Duration,
    },
}

impl Gateway {
    /// GETs `url` with `accept: application/json`, reading at most `max` bytes of body, all
    /// within `within`.
    pub async fn fetch(
        &self,
        url: &str,
        max: usize,
        within: Duration,
    ) -> Result<Fetched, FetchError> {
        self.request(hyper::Method::GET, url, &[], max, within)
            .await
    }

    /// [`Gateway::fetch`] with another method (the body is empty) and more request headers
    /// (which replace the defaults of the same name); an `authorization` value is marked
    /// sensitive.
    pub async fn request(
        &self,
        method: hyper::Method,
        url: &str,
        headers: &[(&str, &str)],
        max: usize,
        within: Duration,
    ) -> Result<Fetched, FetchError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| FetchError::BadUrl(url.to_owned()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(FetchError::BadUrl(url.to_owned()));
        }
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("pi-relay/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|_| FetchError::BadUrl(url.to_owned()))?;
        for (name, value) in headers {
            let name = hyper::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| FetchError::BadUrl(url.to_owned()))?;
            let mut value = hyper::header::HeaderValue::from_str(value)
                .map_err(|_| FetchError::BadUrl(url.to_owned()))?;
            if name == hyper::header::AUTHORIZATION {
                value.set_sensitive(true);
            }
            request.headers_mut().insert(name, value);
        }
        let client = self.inner.fetch_client().clone();
        let whole = async move {
            let response = client
                .request(request)
                .await
                .map_err(|source| FetchError::Request {
                    url: url.to_owned(),
                    source,
                })?;
            let status = response.status().as_u16();
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, max)
                .collect()
                .await
                .map_err(|source| FetchError::Body {
                    url: url.to_owned(),
                    source,
                })?
                .to_bytes();
            Ok(Fetched {
                status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(within, whole)
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::Timeout {
                    url: url.to_owned(),
                    after: within,
                })
            })
    }
}
