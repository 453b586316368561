//! pi-relay runs every session of the pi coding agent in its own sandbox container and lets
//! clients create sessions, talk to pi over a WebSocket, leave, and come back.
//!
//! Layout of the workspace (one crate per layer, none depending on one above it):
//! - `relay-api`: HTTP + WebSocket (axum, hyper), the only crate that knows HTTP;
//! - `relay-session`: the session domain and [`relay_session::SessionService`];
//! - `relay-hub`: one hub per running sandbox: line framing, journal, fan-out;
//! - `relay-sandbox`: the provider contract, host-directory session files, a fake for tests;
//!   `relay-docker`: the Docker provider (bollard);
//! - `relay-store`: SQLite, the only crate that knows SQL;
//! - `relay-model`: session status and mode, shared by all of them.
//!
//! This crate wires them together ([`app`]) and holds the command line ([`config`]), the
//! operator's `secrets` commands ([`secrets_cli`]) and the database lock that keeps them apart
//! from a running relay ([`lock`]). The benchmark is a separate program (`relay-bench`).

pub mod app;
pub mod config;
pub mod lock;
pub mod secrets_cli;
