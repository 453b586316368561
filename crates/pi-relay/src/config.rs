//! Command line and environment: every setting has a flag and an environment variable, with
//! defaults under the XDG directories. Validated once at startup.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

/// pi-relay: every pi coding-agent session in its own sandbox container.
#[derive(Debug, Parser)]
#[command(name = "pi-relay", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `pi-relay`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    Serve(Box<ServeArgs>),
    /// Manage the secrets vault (stop the relay first).
    #[command(subcommand)]
    Secrets(SecretsCommand),
}

/// `pi-relay secrets …`
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Re-encrypt every stored secret under a new key (key version + 1) in one transaction.
    /// With the key file, the new key replaces it; with RELAY_ENCRYPTION_KEY, the new key is
    /// printed and the variable must be set to it before the next start. Stop the relay first.
    RotateKey(RotateKeyArgs),
    /// Delete every stored secret and the key check, for when the key is lost for good.
    Forget(ForgetArgs),
}

/// Where the relay keeps its database and key file (the same flags and variables as `serve`).
#[derive(Clone, Debug, Args)]
pub struct StoreArgs {
    /// Where the database lives [default: $XDG_DATA_HOME/pi-relay]
    #[arg(long, env = "PI_RELAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Relay configuration, including the key file [default: $XDG_CONFIG_HOME/pi-relay]
    #[arg(long, env = "PI_RELAY_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// SQLite database file [default: <data dir>/relay.db]
    #[arg(long, env = "PI_RELAY_DB_PATH")]
    pub db_path: Option<PathBuf>,
}

impl StoreArgs {
    /// (config dir, database path) with the defaults of `serve`.
    pub fn resolve(&self) -> (PathBuf, PathBuf) {
        let data_dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
        let config_dir = self.config_dir.clone().unwrap_or_else(default_config_dir);
        let db_path = self
            .db_path
            .clone()
            .unwrap_or_else(|| data_dir.join("relay.db"));
        (config_dir, db_path)
    }
}

/// Settings of `pi-relay secrets rotate-key`.
#[derive(Clone, Debug, Args)]
pub struct RotateKeyArgs {
    /// Where the database is.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The new key (base64 of 32 bytes) instead of a random one. Prefer the variable: a flag
    /// shows in the process list.
    #[arg(long, env = "RELAY_NEW_ENCRYPTION_KEY", hide_env_values = true)]
    pub new_key: Option<String>,
}

/// Settings of `pi-relay secrets forget`.
#[derive(Clone, Debug, Args)]
pub struct ForgetArgs {
    /// Where the database is.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Confirms that every stored secret is to be deleted.
    #[arg(long)]
    pub yes: bool,
}

/// The key in `RELAY_ENCRYPTION_KEY`, if set. It is read from the environment only: on the
/// command line it would show in the process list.
pub fn encryption_key_from_env() -> Result<Option<SecretString>, String> {
    match std::env::var_os(relay_session::vault::KEY_ENV) {
        None => Ok(None),
        Some(v) => v
            .into_string()
            .map(|s| Some(SecretString::from(s)))
            .map_err(|_| {
                format!(
                    "{} is not valid base64 (it is not even UTF-8)",
                    relay_session::vault::KEY_ENV
                )
            }),
    }
}

/// Settings of `pi-relay serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address or host name to listen on (`localhost`, `127.0.0.1`, `::1`, `0.0.0.0`, …).
    /// Anything but loopback needs an auth token (or --insecure).
    #[arg(long, env = "PI_RELAY_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PI_RELAY_PORT", default_value_t = 31415)]
    pub port: u16,
    /// Where the database lives [default: $XDG_DATA_HOME/pi-relay]
    #[arg(long, env = "PI_RELAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Relay configuration [default: $XDG_CONFIG_HOME/pi-relay]
    #[arg(long, env = "PI_RELAY_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Session workspaces, pi's files and secrets directories [default: $XDG_STATE_HOME/pi-relay]
    #[arg(long, env = "PI_RELAY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// SQLite database file [default: <data dir>/relay.db]
    #[arg(long, env = "PI_RELAY_DB_PATH")]
    pub db_path: Option<PathBuf>,
    /// Bearer token required on every route but /health (WebSockets may pass ?token=). Prefer
    /// the environment variable or --auth-token-file: a value on the command line shows in the
    /// process list.
    #[arg(long, env = "PI_RELAY_AUTH_TOKEN", hide_env_values = true, value_parser = secret)]
    pub auth_token: Option<SecretString>,
    /// File holding the bearer token (one line; readable by its owner only).
    #[arg(long, env = "PI_RELAY_AUTH_TOKEN_FILE", conflicts_with = "auth_token")]
    pub auth_token_file: Option<PathBuf>,
    /// Allow listening on a non-loopback address without a token.
    #[arg(long, env = "PI_RELAY_INSECURE")]
    pub insecure: bool,
    /// Sandbox image used when a session's environment names none. Never pulled: it must exist
    /// on the Docker host (images/sandbox-debian/build.sh builds the default).
    #[arg(
        long,
        env = "SANDBOX_DOCKER_IMAGE",
        default_value = "pi-relay/sandbox-debian:1.6.0"
    )]
    pub sandbox_image: String,
    /// Docker Engine API endpoint (unix:///path, tcp://host:port) [default: local socket]
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Network of sandboxes whose environment names none (bridge, none, host, or a network
    /// name).
    #[arg(long, env = "PI_RELAY_SANDBOX_NETWORK", default_value = "none")]
    pub sandbox_network: relay_sandbox::Network,
    /// The forwarder run in every sandbox that reaches the world through the relay (a static
    /// build of crates/relay-forward) [default: pi-relay-forward beside the pi-relay binary]
    #[arg(long, env = "PI_RELAY_FORWARDER")]
    pub forwarder: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for the relay's own TLS connections to model
    /// providers and other upstreams, besides the built-in roots and the host's.
    #[arg(long, env = "PI_RELAY_EGRESS_CA_FILE")]
    pub egress_ca_file: Option<PathBuf>,
    /// Static name mappings for the relay's outbound connections, `host=address` (like
    /// `curl --resolve`): used as given, and the only way a sandbox reaches a private or
    /// loopback address. Repeat the flag, or separate with commas in the variable.
    #[arg(long, env = "PI_RELAY_EGRESS_RESOLVE", value_delimiter = ',', value_parser = mapping)]
    pub egress_resolve: Vec<(String, std::net::IpAddr)>,
    /// HTTP proxy for the relay's own outbound connections, `http://[user:password@]host:port`,
    /// for hosts that reach the internet only through one.
    #[arg(long, env = "PI_RELAY_EGRESS_PROXY", hide_env_values = true)]
    pub egress_proxy: Option<relay_gateway::UpstreamProxy>,
    /// Seconds the relay gives resolving and connecting to an upstream (a CONNECT that takes
    /// longer is answered 504).
    #[arg(long, env = "PI_RELAY_EGRESS_CONNECT_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub egress_connect_timeout_secs: u64,
    /// The npm registry pi packages are looked up in (the packages catalogue and the manifests
    /// of configured extensions), reached like every outbound connection of the relay (the
    /// mappings, proxy and CA above). A mirror or a private registry works.
    #[arg(long, env = "PI_RELAY_NPM_REGISTRY", default_value = relay_session::packages::DEFAULT_NPM_REGISTRY,
          value_parser = http_url)]
    pub npm_registry: String,
    /// Where packages' files are read for their configuration schema
    /// (`<url>/<name>@<version>/schema.json`).
    #[arg(long, env = "PI_RELAY_PACKAGE_CDN", default_value = relay_session::packages::DEFAULT_PACKAGE_CDN,
          value_parser = http_url)]
    pub package_cdn: String,
    /// GitHub's API (GitHub Enterprise: `https://<host>/api/v3`), for the token and repository
    /// routes; reached like every outbound connection of the relay.
    #[arg(long, env = "PI_RELAY_GITHUB_API", default_value = relay_session::github::DEFAULT_GITHUB_API,
          value_parser = http_url)]
    pub github_api: String,
    /// uid sandboxes run as when the relay runs as root (otherwise the relay's own uid).
    #[arg(long, env = "PI_RELAY_SANDBOX_UID", default_value_t = 1000)]
    pub sandbox_uid: u32,
    /// gid sandboxes run as when the relay runs as root (otherwise the relay's own gid).
    #[arg(long, env = "PI_RELAY_SANDBOX_GID", default_value_t = 1000)]
    pub sandbox_gid: u32,
    /// Turn off the hardened container flags (cap-drop ALL, no-new-privileges, init), for
    /// images that need more.
    #[arg(long, env = "PI_RELAY_NO_HARDENING")]
    pub no_hardening: bool,
    /// Id of this relay on the containers it labels [default: kept in <data dir>/instance-id]
    #[arg(long, env = "PI_RELAY_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Directory whose files are copied into every new session's pi agent directory
    /// (`/data/agent`): `models.json`, `settings.json`, extensions. Files pi has written win.
    #[arg(long, env = "PI_RELAY_AGENT_TEMPLATE_DIR")]
    pub agent_template_dir: Option<PathBuf>,
    /// Seconds activate waits for a sandbox being provisioned.
    #[arg(long, env = "PI_RELAY_ACTIVATE_TIMEOUT_SECS", default_value_t = 60)]
    pub activate_timeout_secs: u64,
    /// Seconds without activity after which a session's sandbox is paused (an environment's
    /// `idleTimeoutSeconds` overrides it).
    #[arg(long, env = "PI_RELAY_IDLE_TIMEOUT_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,
    /// Seconds after the last client disconnects during which a session is never paused.
    #[arg(long, env = "PI_RELAY_IDLE_GRACE_SECS", default_value_t = 300)]
    pub idle_grace_secs: u64,
    /// Seconds between two passes of the idle reaper.
    #[arg(long, env = "PI_RELAY_IDLE_CHECK_INTERVAL_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_check_interval_secs: u64,
    /// Seconds a client has to send a request's headers, from the connection's start or the end
    /// of its previous response; also how long an idle kept-alive connection stays open.
    #[arg(long, env = "PI_RELAY_HEADER_TIMEOUT_SECS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,
    /// Connections open at once, in all (WebSockets included); beyond it, new ones are answered
    /// 503. Lowered at start to what the open-file limit allows.
    #[arg(long, env = "PI_RELAY_MAX_CONNECTIONS", default_value_t = relay_api::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// Connections open at once from one client address; beyond it, new ones are answered 503.
    #[arg(long, env = "PI_RELAY_MAX_CONNECTIONS_PER_CLIENT",
          default_value_t = relay_api::DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections_per_client: usize,
    /// Seconds a write to a WebSocket client may take nothing (it stopped reading) before the
    /// client is cut off with close code 4008; it reconnects with lastSeq.
    #[arg(long, env = "PI_RELAY_WS_STALL_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ws_stall_timeout_secs: u64,
    /// Log filter (tracing syntax, e.g. `info`, `relay_hub=debug`).
    #[arg(long, env = "PI_RELAY_LOG", default_value = "info")]
    pub log: String,
    /// `RELAY_ENCRYPTION_KEY` (see [`encryption_key_from_env`]); `None` uses the key file
    /// `<config dir>/encryption.key`.
    #[arg(skip)]
    pub encryption_key: Option<SecretString>,
}

/// Settings resolved to concrete values.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// Where to listen: the addresses `--host` resolves to, with the port.
    pub listen: Vec<SocketAddr>,
    /// Database and instance id.
    pub data_dir: PathBuf,
    /// Relay configuration (the key file).
    pub config_dir: PathBuf,
    /// Session files and secrets directories.
    pub state_dir: PathBuf,
    /// The SQLite file.
    pub db_path: PathBuf,
}

fn default_data_dir() -> PathBuf {
    xdg("XDG_DATA_HOME", ".local/share").join("pi-relay")
}

fn default_config_dir() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config").join("pi-relay")
}

fn xdg(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => {
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
            home.join(fallback)
        }
    }
}

/// A value kept as a secret from the moment it is parsed (never printed by `Debug`).
fn mapping(s: &str) -> Result<(String, std::net::IpAddr), String> {
    relay_gateway::dial::parse_mapping(s)
}

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s))
}

impl ServeArgs {
    /// Reads the token of `--auth-token-file` into `auth_token`. Refuses a file others can read
    /// or write, as for the encryption key.
    pub fn read_token_file(&mut self) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let Some(path) = &self.auth_token_file else {
            return Ok(());
        };
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "the token file {} can be accessed by other users (mode {mode:04o}); run \
                 `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        let token = text.trim_end_matches(['\n', '\r']);
        if token.trim().is_empty() {
            return Err(format!("the token file {} is empty", path.display()));
        }
        self.auth_token = Some(SecretString::from(token));
        Ok(())
    }

    /// Checks combinations and fills in default directories.
    pub fn resolve(&self) -> Result<Resolved, String> {
        let listen: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve --host {}: {e}", self.host))?
            .collect();
        if listen.is_empty() {
            return Err(format!("--host {} resolves to no address", self.host));
        }
        let exposed = listen.iter().any(|a| !a.ip().is_loopback());
        if exposed && self.auth_token.is_none() && !self.insecure {
            return Err(format!(
                "refusing to listen on {} without an auth token: anyone who can reach it could \
                 run code in your sandboxes. Set PI_RELAY_AUTH_TOKEN (or --auth-token-file), or \
                 pass --insecure if you really mean it",
                self.host
            ));
        }
        if self
            .auth_token
            .as_ref()
            .is_some_and(|t| t.expose_secret().trim().is_empty())
        {
            return Err("PI_RELAY_AUTH_TOKEN is set but empty".into());
        }
        if self.sandbox_uid == 0 || self.sandbox_gid == 0 {
            return Err(
                "sandboxes never run as root: --sandbox-uid/--sandbox-gid must not be 0".into(),
            );
        }
        let data_dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
        let config_dir = self.config_dir.clone().unwrap_or_else(default_config_dir);
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| xdg("XDG_STATE_HOME", ".local/state").join("pi-relay"));
        if let Some(t) = &self.agent_template_dir
            && !t.is_dir()
        {
            return Err(format!("agent template {} is not a directory", t.display()));
        }
        let db_path = self
            .db_path
            .clone()
            .unwrap_or_else(|| data_dir.join("relay.db"));
        Ok(Resolved {
            listen,
            data_dir,
            config_dir,
            state_dir,
            db_path,
        })
    }
}

/// An `http://` or `https://` URL with a host.
fn http_url(raw: &str) -> Result<String, String> {
    let rest = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://"))
        .ok_or_else(|| format!("{raw:?} is not an http(s) URL"))?;
    if rest.is_empty() || rest.starts_with('/') || raw.contains(char::is_whitespace) {
        return Err(format!("{raw:?} has no host"));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ServeArgs {
        let mut full = vec!["pi-relay", "serve"];
        full.extend_from_slice(args);
        match Cli::parse_from(full).command {
            Command::Serve(s) => *s,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_auth_token_is_never_printed() {
        let a = parse(&["--auth-token", "s3cr3t-token-value"]);
        assert_eq!(
            a.auth_token.as_ref().map(|t| t.expose_secret()),
            Some("s3cr3t-token-value")
        );
        assert!(!format!("{a:?}").contains("s3cr3t-token-value"));
    }

    #[test]
    fn a_host_name_resolving_to_loopback_needs_no_token() {
        let r = parse(&["--host", "localhost", "--port", "9"])
            .resolve()
            .unwrap();
        assert!(!r.listen.is_empty());
        assert!(
            r.listen
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 9)
        );
        let e = parse(&["--host", "no-such-host.invalid"])
            .resolve()
            .unwrap_err();
        assert!(
            e.starts_with("cannot resolve --host no-such-host.invalid"),
            "{e}"
        );
    }

    #[test]
    fn the_token_can_come_from_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "t0ken-from-file\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = file.to_str().unwrap();
        let mut a = parse(&["--host", "0.0.0.0", "--auth-token-file", path]);
        a.read_token_file().unwrap();
        assert_eq!(
            a.auth_token.as_ref().map(|t| t.expose_secret()),
            Some("t0ken-from-file")
        );
        assert!(a.resolve().is_ok());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = parse(&["--auth-token-file", path])
            .read_token_file()
            .unwrap_err();
        assert!(
            e.contains("can be accessed by other users (mode 0644)"),
            "{e}"
        );
        let both = Cli::try_parse_from([
            "pi-relay",
            "serve",
            "--auth-token",
            "x",
            "--auth-token-file",
            path,
        ]);
        assert!(both.is_err());
    }

    #[test]
    fn defaults_listen_on_loopback_port_31415() {
        let a = parse(&[]);
        assert_eq!(a.host, "127.0.0.1");
        assert_eq!(a.port, 31415);
        assert!(a.resolve().is_ok());
    }

    #[test]
    fn a_public_address_without_a_token_is_refused_unless_insecure() {
        assert!(
            parse(&["--host", "0.0.0.0"])
                .resolve()
                .unwrap_err()
                .contains("auth token")
        );
        assert!(
            parse(&["--host", "0.0.0.0", "--insecure"])
                .resolve()
                .is_ok()
        );
        assert!(
            parse(&["--host", "0.0.0.0", "--auth-token", "t"])
                .resolve()
                .is_ok()
        );
        assert!(parse(&["--host", "::1"]).resolve().is_ok());
    }

    #[test]
    fn idle_settings_of_zero_or_less_are_refused() {
        let parse = |args: &[&str]| {
            let mut full = vec!["pi-relay", "serve"];
            full.extend_from_slice(args);
            Cli::try_parse_from(full).map(|_| ())
        };
        assert!(parse(&["--idle-timeout-secs", "0"]).is_err());
        assert!(parse(&["--idle-timeout-secs", "-5"]).is_err());
        assert!(parse(&["--idle-check-interval-secs", "0"]).is_err());
        assert!(parse(&["--idle-timeout-secs", "60"]).is_ok());
        assert!(parse(&["--idle-grace-secs", "0"]).is_ok());
    }

    #[test]
    fn secrets_commands_share_the_store_location_flags_of_serve() {
        let cli = Cli::parse_from([
            "pi-relay",
            "secrets",
            "rotate-key",
            "--data-dir",
            "/d",
            "--config-dir",
            "/c",
        ]);
        let Command::Secrets(SecretsCommand::RotateKey(a)) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(
            a.store.resolve(),
            (PathBuf::from("/c"), PathBuf::from("/d/relay.db"))
        );
        assert!(a.new_key.is_none());
        let cli = Cli::parse_from(["pi-relay", "secrets", "forget", "--yes"]);
        assert!(matches!(
            cli.command,
            Command::Secrets(SecretsCommand::Forget(ForgetArgs { yes: true, .. }))
        ));
        // The key itself has no flag: it would show in the process list.
        assert!(Cli::try_parse_from(["pi-relay", "serve", "--encryption-key", "x"]).is_err());
    }

    #[test]
    fn root_sandboxes_are_refused() {
        assert!(parse(&["--sandbox-uid", "0"]).resolve().is_err());
    }

    #[test]
    fn explicit_dirs_win_over_xdg_defaults() {
        let r = parse(&["--data-dir", "/d", "--state-dir", "/s"])
            .resolve()
            .unwrap();
        assert_eq!(r.db_path, PathBuf::from("/d/relay.db"));
        assert_eq!(r.state_dir, PathBuf::from("/s"));
    }

    #[test]
    fn the_npm_registry_is_an_http_url() {
        assert_eq!(
            http_url("https://npm.example.com/").as_deref(),
            Ok("https://npm.example.com")
        );
        for bad in [
            "npm.example.com",
            "ftp://x",
            "https://",
            "https:///x",
            "http://a b",
        ] {
            assert!(http_url(bad).is_err(), "{bad}");
        }
    }
}
