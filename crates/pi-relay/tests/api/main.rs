//! API tests: the real relay on port 0 with a temporary database and state directory, and the
//! fake sandbox provider running the fake pi (checked against real pi captures in its crate).

mod conformance;
mod connections;
mod egress;
mod environments;
mod extensions;
mod github;
mod helpers;
mod limits;
mod providers;
mod secrets;
mod sessions;
mod settings;
mod vault;
mod websocket;
