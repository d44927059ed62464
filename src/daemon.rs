//! The composition root of `lbmesh serve`: builds every subsystem in a straight
//! line, hands each the same shutdown signal, and stops them in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, ApiState};
use crate::clock::{Clock, SystemClock};
use crate::config::{ApiTls, GossipTls, HaproxyMode, Settings};
use crate::haproxy::apply::Applier;
use crate::haproxy::process::{Haproxy, Mode};
use crate::keepalived::{self, Vrrp};
use crate::mesh::quic::QuicTransport;
use crate::mesh::transport::{Transport, UdpTransport};
use crate::mesh::{Mesh, MeshSettings};
use crate::metrics::Metrics;
use crate::preflight::Created;
use crate::registry::{Origin, PortPolicy, Registry};
use crate::secret::Token;
use crate::shared::SharedRegistry;
use crate::store::Store;
use crate::tasks::{Stage, Tasks};
use crate::tls::{self, PeerTls};

/// Holds the data directory lock for the life of the daemon.
struct DirLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

/// Creates the data directory (mode 0700), makes an existing one private,
/// and locks it.
fn lock_data_dir(settings: &Settings) -> anyhow::Result<DirLock> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = &settings.data_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create data directory {}", dir.display()))?;
    // The registry, token and keys live here: whatever mode the directory
    // had before, nobody else may look inside.
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("data directory {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("make data directory {} private", dir.display()))?;
        tracing::info!(dir = %dir.display(), "data directory was open to others ({:o}); made it 0700", mode & 0o777);
    }
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map(DirLock)
        .map_err(|(_, e)| {
            anyhow::anyhow!(
                "data directory {} is in use by another lbmesh ({e}); give each daemon its own --data-dir",
                dir.display()
            )
        })
}

/// Runs the daemon until `stop` resolves. Everything it needs is checked
/// before anything is written; a start that fails anyway removes what it
/// created. Once running, a subsystem task that ends on its own stops the
/// daemon (in order) with an error, so a service manager restarts it.
pub async fn run(
    settings: Settings,
    api_listener: TcpListener,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    crate::preflight::check(&settings).await?;

    let mut created = Created::default();
    created.will_create(&settings.data_dir);
    let _lock = lock_data_dir(&settings)?;
    let (store, recovered) = Store::open(&settings.data_dir)?;
    let generation = crate::store::next_generation(&settings.data_dir, SystemClock.now_ms())?;

    let metrics = Arc::new(Metrics::new());

    // Secrets last: a start that fails before here makes none.
    created.will_create(&settings.token_file);
    let (token, generated) = Token::load_or_generate(&settings.token_file)?;
    if token.is_short() {
        tracing::warn!(
            file = %settings.token_file.display(),
            "the API token is shorter than {} characters and easy to guess; make a new one \
             (head -c 32 /dev/urandom | xxd -p -c 64) and give it to every client",
            crate::secret::SHORT
        );
    }
    let quic = match &settings.gossip.tls {
        GossipTls::None => {
            tracing::warn!(
                "gossip runs over plain UDP (mesh.transport = \"udp\"): unauthenticated and unencrypted"
            );
            None
        }
        GossipTls::Quic { files, create, crl } => {
            if *create && !(files.ca_cert.exists() && files.cert.exists() && files.key.exists()) {
                if let Some(dir) = files.cert.parent() {
                    for f in [&files.ca_cert, &files.cert, &files.key] {
                        created.will_create(f);
                    }
                    created.will_create(&dir.join(tls::CA_KEY));
                    tls::ensure_single_peer_tls(dir, &settings.node_id)?;
                }
            }
            let peer_tls = PeerTls::load(files, &settings.node_id)
                .map_err(|e| anyhow::anyhow!("peer TLS: {e}"))?;
            Some(
                QuicTransport::new(peer_tls, settings.gossip.interval)
                    .with_identities(Arc::new(crate::mesh::trust::Identities::persistent(
                        &settings.data_dir,
                    )))
                    .with_metrics(metrics.clone())
                    .with_crl(crl.clone(), files.ca_cert.clone()),
            )
        }
    };
    let api_addr = api_listener.local_addr()?;
    let (api_tls, tls_files) = match &settings.api.tls {
        Some(ApiTls::Files { cert, key }) => (Some((cert.clone(), key.clone())), true),
        Some(ApiTls::SelfSigned { dir, names }) => {
            let mut all = vec!["localhost".to_string(), settings.node_id.to_string()];
            if !api_addr.ip().is_unspecified() {
                all.push(api_addr.ip().to_string());
            }
            all.extend(names.iter().cloned());
            created.will_create(&dir.join("api.crt"));
            created.will_create(&dir.join("api.key"));
            (Some(tls::ensure_self_signed_api(dir, &all)?), false)
        }
        None => (None, false),
    };
    let tls: Option<api::SharedTls> = match &api_tls {
        Some((cert, key)) => Some(Arc::new(arc_swap::ArcSwap::from_pointee(
            api::tls_acceptor(cert, key)?,
        ))),
        None => None,
    };

    let policy = PortPolicy::new(
        settings.registry.allowed_ports.clone(),
        [api_addr.port(), settings.gossip.listen.port()],
    );
    let origin = Origin::new(settings.node_id.clone(), generation);
    let registry = Registry::new(origin, settings.registry.limits.clone(), policy)
        .with_backends(settings.registry.backends.clone());
    let shared = Arc::new(SharedRegistry::new(
        registry,
        store,
        recovered,
        Arc::new(SystemClock),
        settings.registry.ack,
    ));
    let h = &settings.haproxy;
    let mode = match h.mode {
        HaproxyMode::Supervised => Mode::Supervised {
            master_socket: h.master_socket.clone(),
            pid_file: settings.data_dir.join("haproxy.pid"),
        },
        HaproxyMode::External => Mode::External {
            reload_command: h.reload_command.clone(),
        },
    };
    let haproxy = Haproxy::new(
        h.binary.clone(),
        h.config_path.clone(),
        h.render.runtime_socket.clone(),
        h.render.health_socket.clone(),
        mode,
    );
    let mut render = h.render.clone();
    let haproxy_log = match render.log_socket.as_deref().map(crate::haproxy::log::bind) {
        Some(Ok(socket)) => Some(socket),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot bind haproxy.log-socket; HAProxy's own log will not reach lbmesh's");
            render.log_socket = None;
            None
        }
        None => None,
    };
    let (mut applier, apply_rx) = Applier::new(
        shared.clone(),
        haproxy.clone(),
        render.clone(),
        h.timing.clone(),
        h.exec.clone(),
        metrics.clone(),
    );
    let (vrrp, vrrp_rx) = Vrrp::new(settings.keepalived.hooks.clone(), shared.events().clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let scheme = if settings.api.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let gossip_transport: &dyn Transport = match &quic {
        Some(q) => q,
        None => &UdpTransport,
    };
    let mut mesh = Mesh::start(
        MeshSettings {
            origin: shared.with(|r| r.origin().clone()),
            listen: settings.gossip.listen,
            advertise: settings.gossip.advertise,
            seeds: settings.gossip.seeds.clone(),
            cluster_id: settings.gossip.cluster_id.clone(),
            gossip_interval: settings.gossip.interval,
            // Longer than any lease: a dead peer's registrations stay until they end.
            dead_node_grace: settings.registry.limits.max_ttl + Duration::from_secs(3600),
            deleted_key_grace: Duration::from_secs(3600),
            api_url: format!("{scheme}://{api_addr}"),
            identities: quic.as_ref().map(QuicTransport::identities),
            vrrp: vrrp_rx,
            metrics: Some(metrics.clone()),
            own_ports: [api_addr.port(), settings.gossip.listen.port()].into(),
            local_addrs: Some(crate::mesh::addresses::local_addrs),
            floating_ips: settings
                .keepalived
                .handoff
                .iter()
                .map(|h| std::net::IpAddr::V4(h.vip))
                .collect(),
        },
        gossip_transport,
        shared.clone(),
        apply_rx.clone(),
        shutdown_rx.clone(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot join the mesh on {} (gossip-listen)",
            settings.gossip.listen
        )
    })?;
    // Nothing below can fail: the start has succeeded.
    created.keep();
    applier.hold_until_caught_up(mesh.view().caught_up());
    let mut tasks = Tasks::new();

    let failover =
        crate::failover::Failover::new(&settings.data_dir, settings.keepalived.track_file.clone());
    if let Some(h) = settings.keepalived.handoff.clone() {
        tasks.spawn(
            Stage::First,
            "handoff",
            crate::failover::handoff::run(
                h,
                settings.node_id.to_string(),
                mesh.view(),
                failover.handoff_status(),
                shutdown_rx.clone(),
            ),
        );
    }
    haproxy.adopt_existing();
    // HAProxy stops last, once nothing can ask it to reload any more.
    let (haproxy_stop_tx, haproxy_stop_rx) = watch::channel(false);
    // External mode: HAProxy is another service's, nothing to supervise.
    if haproxy.is_supervised() {
        tasks.spawn(
            Stage::Haproxy,
            "haproxy-supervisor",
            haproxy.clone().supervise(haproxy_stop_rx.clone()),
        );
    }
    if let Some((socket, path)) = haproxy_log.zip(render.log_socket) {
        tasks.spawn(
            Stage::Haproxy,
            "haproxy-log",
            crate::haproxy::log::receive(socket, path, haproxy_stop_rx.clone()),
        );
    }
    let (health_tx, health_rx) = watch::channel(Arc::default());
    tasks.spawn(
        Stage::First,
        "haproxy-stats",
        crate::haproxy::stats::observe(
            haproxy.clone(),
            metrics.clone(),
            shared.events().clone(),
            h.render.check_interval.max(Duration::from_secs(1)),
            health_tx,
            shutdown_rx.clone(),
        ),
    );
    tasks.spawn(Stage::First, "applier", applier.run(shutdown_rx.clone()));
    // Writes own entries; at shutdown it answers what is queued and writes
    // the lease ends renewed from memory.
    tasks.spawn(
        Stage::First,
        "committer",
        shared.clone().run(shutdown_rx.clone()),
    );
    tasks.spawn(
        Stage::First,
        "maintenance",
        maintain(shared.clone(), shutdown_rx.clone()),
    );
    tasks.spawn(
        Stage::First,
        "memory",
        crate::memory::release_when_asked(Duration::from_secs(5), shutdown_rx.clone()),
    );
    if let Some(path) = settings.keepalived.notify_fifo.clone() {
        tasks.spawn(
            Stage::First,
            "notify-fifo",
            keepalived::read_fifo(path, vrrp.clone(), shutdown_rx.clone()),
        );
    }
    for handle in mesh.take_tasks() {
        tasks.adopt(Stage::First, "mesh", handle);
    }
    let gossip = mesh.gossip_ended();
    tasks.spawn(Stage::Gossip, "gossip", async move {
        if let Err(e) = gossip.await {
            panic!("{e:#}");
        }
    });
    if let (Some(shared_tls), (Some((cert, key)), true)) = (&tls, (&api_tls, tls_files)) {
        tasks.spawn(
            Stage::First,
            "api-certificate-reload",
            api::reload_tls_on_change(
                shared_tls.clone(),
                cert.clone(),
                key.clone(),
                Duration::from_secs(5),
                shutdown_rx.clone(),
            ),
        );
    }
    let api_limits = settings.api.limits.clone();
    let state = ApiState {
        registry: shared.clone(),
        token: Arc::new(token.clone()),
        apply: apply_rx,
        haproxy: haproxy.clone(),
        metrics: metrics.clone(),
        body_timeout: api_limits.body_timeout,
        max_body_bytes: settings.api.max_body_bytes,
        max_wait: settings.api.max_wait,
        started,
        mesh: mesh.view(),
        vrrp: Some(vrrp.clone()),
        failover: Some(failover.clone()),
        max_lag: settings.keepalived.max_lag,
        health: health_rx,
    };
    tasks.spawn(
        Stage::First,
        "failover",
        crate::failover::run(
            failover.clone(),
            crate::failover::Sources {
                me: settings.node_id.to_string(),
                vrrp,
                mesh: state.mesh.clone(),
                api: state.clone(),
                metrics: state.metrics.clone(),
            },
            shutdown_rx.clone(),
        ),
    );
    tasks.spawn(
        Stage::First,
        "api",
        api::serve(
            api_listener,
            tls,
            api::router(state),
            api::Admission::new(api_limits.clone()),
            Some(metrics.clone()),
            shutdown_rx.clone(),
        ),
    );
    tracing::info!(
        node = %settings.node_id,
        api = %format!("{scheme}://{api_addr}"),
        data_dir = %settings.data_dir.display(),
        haproxy = ?settings.haproxy.mode,
        "lbmesh is serving"
    );
    if generated {
        announce_token(&settings.token_file, &token);
    }
    println!("lbmesh: phone-home API on {scheme}://{api_addr}/hooks/update-haproxy");

    let died = tokio::select! {
        () = stop => None,
        ended = tasks.next_end() => Some(ended),
    };
    match &died {
        None => tracing::info!("shutting down"),
        Some(e) => tracing::error!(task = e.name, "{e}; stopping everything else and exiting"),
    }
    let _ = shutdown_tx.send(true);
    let mut failed: Vec<String> = died.iter().map(ToString::to_string).collect();
    let mut note = |bad: Vec<crate::tasks::Ended>| {
        for e in bad {
            tracing::error!(task = e.name, "{e}");
            failed.push(e.to_string());
        }
    };
    note(tasks.stop(Stage::First, Duration::from_secs(15)).await);
    mesh.stop().await;
    note(tasks.stop(Stage::Gossip, Duration::from_secs(5)).await);
    let leave_haproxy = leave_haproxy(&haproxy, &failover).await;
    let _ = haproxy_stop_tx.send(true);
    note(tasks.stop(Stage::Haproxy, Duration::from_secs(10)).await);
    // The handoff lives as long as the HAProxy it serves.
    if let (Some(h), true, false) = (
        &settings.keepalived.handoff,
        haproxy.is_supervised(),
        leave_haproxy,
    ) {
        if let Err(e) = crate::failover::handoff::remove(h).await {
            tracing::error!(error = %e, "cannot remove the connection handoff");
        }
    }
    // Everything is in the log already; a compaction that fails (a full
    // disk) loses nothing.
    if let Err(e) = shared.compact().await {
        tracing::warn!(error = %e, "final compaction of the registry failed; the log keeps everything");
    }
    if failed.is_empty() {
        tracing::info!("stopped");
        Ok(())
    } else {
        anyhow::bail!("{}", failed.join("; "))
    }
}

/// Whether to leave the supervised HAProxy serving when the daemon stops:
/// on a drained VM that still serves client connections (an upgrade), the
/// next daemon adopts it and the connections outlive the restart.
async fn leave_haproxy(haproxy: &Haproxy, failover: &crate::failover::Failover) -> bool {
    if !haproxy.is_supervised() || !failover.is_drained() {
        return false;
    }
    let Some(sessions) = crate::haproxy::stats::client_sessions(haproxy)
        .await
        .filter(|n| *n > 0)
    else {
        return false;
    };
    haproxy.leave_running_on_shutdown();
    tracing::warn!(
        sessions,
        pid = haproxy.state().master_pid(),
        "this VM is drained and HAProxy still serves connections: HAProxy keeps serving them \
         for the next lbmesh to adopt (to end them, stop that pid)"
    );
    true
}

/// Shows a freshly generated token to the person at the terminal, once.
/// Under a service manager stdout is a log that is kept: there, only where
/// the token is.
fn announce_token(path: &std::path::Path, token: &Token) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        println!(
            "lbmesh: generated an API token, stored in {} (mode 0600). It is shown only this once:\n\n    {}\n",
            path.display(),
            token.expose()
        );
    } else {
        tracing::info!(file = %path.display(), "generated an API token (mode 0600); read it from that file");
    }
}

/// Logs lease ends as they pass.
async fn maintain(shared: Arc<SharedRegistry>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut leases_checked = shared.now_ms();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = crate::shutdown::signalled(&mut shutdown) => return,
        }
        crate::events::note_lease_ends(&shared, &mut leases_checked);
    }
}
