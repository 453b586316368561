//! pi-relay runs every session of the pi coding agent in its own sandbox container and lets
//! clients create sessions, talk to pi over a WebSocket, leave, and come back.
//!
//! Layout of the workspace (one crate per layer):
//! - `relay-api`: HTTP + WebSocket (axum), the only crate that knows HTTP;
//! - `relay-session`: the session domain and [`relay_session::SessionService`];
//! - `relay-hub`: one hub per running sandbox: line framing, journal, fan-out;
//! - `relay-sandbox`: the provider trait (and a fake for tests); `relay-docker`: Docker;
//! - `relay-store`: SQLite, the only crate that knows SQL.
//!
//! This crate wires them together ([`app`]) and holds the command line ([`config`]), the
//! benchmark ([`bench`]), the operator's `secrets` commands ([`secrets_cli`]) and the database
//! lock that keeps them apart from a running relay ([`lock`]).

pub mod app;
pub mod bench;
pub mod config;
pub mod lock;
pub mod secrets_cli;
