//! Startup and shutdown: locks the database, opens the store and the secrets vault (refusing a
//! key that cannot decrypt the stored secrets), builds the sandbox provider and the services
//! from the configuration, recovers what a previous run left, serves the API, and on
//! SIGINT/SIGTERM closes clients and stops background work while leaving sandboxes running.

use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use relay_api::AppState;
use relay_sandbox::Sandbox;
use relay_sandbox::host::HostStorage;
use relay_session::environments::EnvironmentService;
use relay_session::secrets::SecretService;
use relay_session::settings::SettingsService;
use relay_session::vault::{self, KeySource};
use relay_session::{SessionConfig, SessionService};
use relay_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Resolved, ServeArgs};
use crate::lock::StoreLock;

type BoxError = Box<dyn Error + Send + Sync>;

/// How long shutdown waits for background work before giving up on it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The idle reaper (running on its own; tests may also run a pass by hand).
    pub reaper: Arc<relay_session::reaper::IdleReaper>,
    /// The API's connections.
    pub connections: Arc<relay_api::ConnectionStats>,
    sessions: SessionService,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Resolves when the API thread has stopped serving.
    server: tokio::sync::oneshot::Receiver<()>,
    /// Held until the relay is dropped: no second relay or `secrets` command on this database.
    _lock: StoreLock,
}

fn effective_ids() -> (u32, u32) {
    #[allow(unsafe_code)]
    // SAFETY: geteuid/getegid have no preconditions and cannot fail.
    unsafe {
        (libc::geteuid(), libc::getegid())
    }
}

/// Nice value of the work runtime's threads (sessions' streams, handlers, store reads). The API
/// thread keeps the normal priority: when streaming saturates the machine, the kernel still runs
/// it first, so requests are accepted and `/health` answered at once. pi's normal output rates
/// need a small fraction of one core, which this leaves them even on a busy host.
const WORK_NICE: i32 = 5;

/// The runtime `pi-relay serve` runs on: multi-threaded, its threads at [`WORK_NICE`].
pub fn work_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(|| lower_thread_priority(WORK_NICE))
        .build()
}

/// Lowers the calling thread's priority (Linux nice values are per thread). Failing to is
/// harmless: the thread keeps the normal priority.
#[allow(unsafe_code)]
fn lower_thread_priority(nice: i32) {
    // SAFETY: gettid and setpriority take no pointers and only affect the calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a thread's priority");
    }
}

/// The uid:gid sandboxes run as: the configured one when the relay runs as root (never root
/// itself), otherwise the relay's own, so that the session directories it creates stay usable.
pub fn sandbox_user(args: &ServeArgs) -> (u32, u32) {
    match effective_ids() {
        (0, _) => (args.sandbox_uid, args.sandbox_gid),
        ids => ids,
    }
}

/// Where sessions' files live on this host: under the state directory (created if needed), handed
/// to the sandbox user when the relay runs as root.
pub fn host_storage(dirs: &Resolved) -> Result<HostStorage, BoxError> {
    create_private_dir(&dirs.state_dir)?;
    // Absolute: the paths are handed to the engine as bind-mount sources.
    let state_dir = std::fs::canonicalize(&dirs.state_dir)?;
    Ok(HostStorage::new(state_dir, effective_ids().0 == 0))
}

/// The host account that has `uid`, if any (from `/etc/passwd`).
fn host_account(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

/// Warns when sandboxes would run as the uid of a real account of this host: the files they
/// write belong to that account here, and a sandbox that escaped its container would act as it.
fn warn_about_the_sandbox_uid(args: &ServeArgs) {
    if effective_ids().0 != 0 {
        // Sandboxes run as the relay's own user: that is the account they are meant to be.
        return;
    }
    if let Some(account) = host_account(args.sandbox_uid) {
        tracing::warn!(
            uid = args.sandbox_uid,
            %account,
            "sandboxes run as the uid of a host account: the files they write are that account's \
             on this host; consider --sandbox-uid/--sandbox-gid with ids no account has (e.g. 100000)"
        );
    }
}

/// Descriptors kept for everything but client connections: the database, the engine, session
/// logs, files being written.
const RESERVED_DESCRIPTORS: u64 = 128;

/// Raises this process's open-file limit to its hard limit (the soft limit is often 1,024) and
/// returns the connection cap that fits in it with [`RESERVED_DESCRIPTORS`] to spare.
fn connection_budget(wanted: usize) -> usize {
    #[allow(unsafe_code)]
    // SAFETY: getrlimit/setrlimit read and write the plain struct passed by pointer, which lives
    // on this stack frame for the calls.
    let limit = unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return wanted;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    let fits =
        usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS).max(1)).unwrap_or(usize::MAX);
    if fits < wanted {
        tracing::warn!(
            open_file_limit = limit,
            max_connections = fits,
            "the open-file limit allows fewer connections than --max-connections; raise it (ulimit -n) to allow more"
        );
    }
    wanted.min(fits)
}

/// Creates `dir` (and missing parents) private to the relay's user (0700). An existing one keeps
/// its mode: the operator chose it.
fn create_private_dir(dir: &Path) -> Result<(), BoxError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()).into())
}

/// How the egress gateway reaches upstreams, from the flags.
fn gateway_config(
    args: &ServeArgs,
    dirs: &Resolved,
) -> Result<relay_gateway::GatewayConfig, BoxError> {
    // The CA for hosts that get domain-bound secrets, kept beside the encryption key.
    let authority = relay_gateway::Authority::load_or_create(&dirs.config_dir)?;
    let mut resolve = std::collections::HashMap::<String, Vec<std::net::IpAddr>>::new();
    for (name, ip) in &args.egress_resolve {
        resolve.entry(name.clone()).or_default().push(*ip);
    }
    let extra_ca = match &args.egress_ca_file {
        Some(path) => relay_gateway::read_pem_certificates(path)
            .map_err(|e| format!("cannot use --egress-ca-file {}: {e}", path.display()))?,
        None => Vec::new(),
    };
    Ok(relay_gateway::GatewayConfig {
        dial: relay_gateway::DialConfig {
            resolve,
            connect_timeout: Duration::from_secs(args.egress_connect_timeout_secs),
            proxy: args.egress_proxy.clone(),
        },
        extra_ca,
        limits: relay_gateway::Limits::default(),
        authority: Some(Arc::new(authority)),
    })
}

/// The sandbox forwarder: `--forwarder`, else `pi-relay-forward` beside this binary.
fn forwarder(args: &ServeArgs) -> Result<PathBuf, BoxError> {
    let path = match &args.forwarder {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("pi-relay-forward"),
    };
    if !path.is_file() {
        return Err(format!(
            "the sandbox forwarder {} does not exist: build it with `bash scripts/build-forwarder.sh` \
             (scripts/up.sh does), or give its path with --forwarder",
            path.display()
        )
        .into());
    }
    Ok(path)
}

/// Reads this relay's instance id, creating it on first start.
fn instance_id(args: &ServeArgs, data_dir: &Path) -> Result<String, BoxError> {
    if let Some(id) = args.instance_id.as_deref().filter(|s| !s.is_empty()) {
        return Ok(id.to_owned());
    }
    let path = data_dir.join("instance-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    let id = uuid_like();
    std::fs::write(&path, format!("{id}\n"))?;
    Ok(id)
}

fn uuid_like() -> String {
    // The hub crate already depends on a clock; an instance id only needs to be unique per host.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("relay-{:x}-{:x}", nanos, std::process::id())
}

impl Relay {
    /// Starts a relay with `sandbox` as its provider, listening as configured.
    pub async fn start(
        args: &ServeArgs,
        dirs: &Resolved,
        sandbox: Arc<dyn Sandbox>,
    ) -> Result<Relay, BoxError> {
        for dir in [&dirs.data_dir, &dirs.config_dir] {
            create_private_dir(dir)?;
        }
        if let Some(parent) = dirs.db_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let lock = StoreLock::acquire(&dirs.db_path)?;
        let store = Store::open(&dirs.db_path)?;
        // Before anything else writes: a key that cannot decrypt the stored secrets stops the
        // start here, with nothing changed.
        let key_source = KeySource::new(args.encryption_key.clone(), &dirs.config_dir);
        let key_file = dirs.config_dir.join(vault::KEY_FILE_NAME);
        if matches!(key_source, KeySource::Env(_)) && key_file.exists() {
            // One key source only: two that disagree is how secrets become undecryptable.
            tracing::warn!(path = %key_file.display(), "RELAY_ENCRYPTION_KEY is set; the key file is not used");
        }
        let vault = vault::open(&store, &key_source).await?;
        tracing::info!(key_version = vault.version(), "secrets vault ready");
        let secrets = SecretService::new(store.clone(), vault);
        let environments =
            EnvironmentService::new(store.clone(), sandbox.clone(), args.sandbox_image.clone());
        let settings = SettingsService::new(store.clone());
        warn_about_the_sandbox_uid(args);
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let gateway = relay_gateway::Gateway::new(gateway_config(args, dirs)?, cancel.clone())?;
        let cfg = SessionConfig {
            default_image: args.sandbox_image.clone(),
            sandbox_user: sandbox_user(args),
            network: args.sandbox_network.clone(),
            instance_id: instance_id(args, &dirs.data_dir)?,
            hardened: !args.no_hardening,
            agent_template: args.agent_template_dir.clone(),
            activate_timeout: Duration::from_secs(args.activate_timeout_secs),
            trust_env: gateway.trust_variables(relay_sandbox::EGRESS_DIR_PATH),
            packages: relay_session::PackageSources {
                registry: args.npm_registry.clone(),
                cdn: args.package_cdn.clone(),
            },
            github_api: args.github_api.clone(),
        };
        let sessions = SessionService::new(
            store,
            sandbox,
            cfg,
            secrets,
            gateway,
            tasks.clone(),
            cancel.clone(),
        );
        sessions.ensure_default_environment().await?;
        // The model providers the gateway serves, from the stored keys, before any session runs.
        sessions.refresh_providers().await?;
        match sessions.warm_image(&args.sandbox_image).await {
            Ok(id) => tracing::info!(image = %args.sandbox_image, id = %id, "sandbox image ready"),
            Err(e) => {
                tracing::warn!(image = %args.sandbox_image, error = %e, "sandbox image not available yet; sessions will fail until it is built (images/sandbox-debian/build.sh)")
            }
        }
        sessions.recover().await?;
        // Secrets may have been deleted (`pi-relay secrets forget`) while the relay was down.
        sessions.refresh_secret_files().await;
        let reaper = relay_session::reaper::IdleReaper::new(
            sessions.clone(),
            relay_session::reaper::IdlePolicy {
                timeout: Duration::from_secs(args.idle_timeout_secs),
                grace: Duration::from_secs(args.idle_grace_secs),
            },
            Duration::from_secs(args.idle_check_interval_secs),
        )
        .with_settings(settings.clone());
        let reaper = Arc::new(reaper);
        let running = reaper.clone();
        let stop = cancel.clone();
        tasks.spawn(async move { running.run(stop).await });
        let listener = tokio::net::TcpListener::bind(&dirs.listen[..])
            .await
            .map_err(|e| format!("cannot listen on {}:{}: {e}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        let state = AppState {
            sessions: sessions.clone(),
            environments,
            settings,
            auth_token: args.auth_token.clone(),
            commit: std::env::var("GIT_COMMIT")
                .ok()
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "dev".into()),
            write_stall_timeout: Duration::from_secs(args.ws_stall_timeout_secs),
        };
        let limits = relay_api::HttpLimits {
            header_read_timeout: Duration::from_secs(args.header_timeout_secs),
            max_connections: connection_budget(args.max_connections),
            max_connections_per_client: args.max_connections_per_client,
        };
        let connections = Arc::new(relay_api::ConnectionStats::default());
        let server =
            spawn_api_thread(listener, state, limits, connections.clone(), cancel.clone())?;
        tracing::info!(%addr, "pi-relay listening");
        Ok(Relay {
            addr,
            reaper,
            connections,
            sessions,
            cancel,
            tasks,
            server,
            _lock: lock,
        })
    }

    /// The session service.
    pub fn sessions(&self) -> &SessionService {
        &self.sessions
    }

    /// Stops serving, closes clients and background work; sandboxes keep running.
    pub async fn shutdown(self) {
        self.sessions.shutdown().await;
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background work did not stop in time");
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, self.server).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::warn!("the API thread ended without a result"),
            Err(_) => tracing::warn!("open connections did not close in time"),
        }
        // The journal is written in batches: commit what is queued before the process goes.
        if let Err(e) = self.sessions.flush().await {
            tracing::error!(error = %e, "could not flush the journal");
        }
    }
}

/// Serves the API from a thread of its own with a single-threaded runtime: it accepts
/// connections and speaks HTTP, while handlers run on the calling (work) runtime. Kept apart
/// from the threads that stream sessions, it is answered promptly by the kernel when a request
/// arrives, however busy streaming keeps them.
fn spawn_api_thread(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: relay_api::HttpLimits,
    connections: Arc<relay_api::ConnectionStats>,
    stop: CancellationToken,
) -> Result<tokio::sync::oneshot::Receiver<()>, BoxError> {
    let work = tokio::runtime::Handle::current();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Registered with the API thread's runtime, before it runs, so a failure stops the start.
    let listener = {
        let _api = runtime.enter();
        tokio::net::TcpListener::from_std(listener.into_std()?)?
    };
    let (done, server) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            runtime.block_on(relay_api::serve(
                listener,
                state,
                work,
                limits,
                connections,
                stop,
            ));
            drop(runtime);
            let _ = done.send(());
        })?;
    Ok(server)
}

async fn signalled() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `pi-relay serve`.
pub async fn serve(mut args: ServeArgs) -> Result<(), BoxError> {
    args.encryption_key = crate::config::encryption_key_from_env()?;
    args.read_token_file()?;
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .map_err(|e| format!("invalid --log filter {:?}: {e}", args.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let dirs = args.resolve()?;
    let storage = host_storage(&dirs)?;
    let forwarder = forwarder(&args)?;
    let docker = relay_docker::DockerSandbox::connect(args.docker_host.as_deref(), storage)
        .await
        .map_err(|e| {
            format!(
                "{e}\nIs the Docker engine running? `bash scripts/docker-up.sh` installs and \
                 starts one; DOCKER_HOST selects another endpoint."
            )
        })?
        .with_forwarder(forwarder);
    let relay = Relay::start(&args, &dirs, Arc::new(docker)).await?;
    signalled().await;
    tracing::info!("shutting down; sandboxes keep running");
    relay.shutdown().await;
    Ok(())
}
