//! `nova-docker serve`: wires the pieces together and runs the compute host
//! until SIGTERM/SIGINT.
//!
//! Order matters: the RPC queues are declared (and ping answered) before the
//! host is advertised, so no cast to `compute.<host>` is ever dropped; compute
//! requests wait until registration and start-up recovery are done.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::auth::ServiceClient;
use crate::compute::host::HostRegistrar;
use crate::compute::{ComputeEndpoint, ComputeManager};
use crate::conductor::Conductor;
use crate::config::{AuthSettings, Settings};
use crate::image::{Glance, ImageService};
use crate::network::Neutron;
use crate::placement::Placement;
use crate::release::{self, Release};
use crate::rpc::{
    BaseApi, Dispatcher, Endpoint, RequestContext, RpcClient, RpcServer, ServerOptions, Topology, Transport,
    TransportOptions,
};
use crate::virt::docker::DockerDriver;
use crate::virt::host_network::HostNetwork;
use crate::{health, metrics};

/// The transport options of the settings.
pub fn transport_options(settings: &Settings) -> TransportOptions {
    TransportOptions {
        brokers: settings.transport_url.brokers.clone(),
        heartbeat: settings.rabbit.heartbeat_timeout_threshold,
        retry_interval: settings.rabbit.retry_interval,
        retry_backoff: settings.rabbit.retry_backoff,
        interval_max: settings.rabbit.interval_max,
        connect_timeout: Duration::from_secs(10),
        prefetch: settings.rabbit.prefetch_count,
        connection_name: format!("nova-docker:{}:{}", std::process::id(), uuid::Uuid::new_v4()),
        login_method: settings.rabbit.login_method,
        tls: settings.rabbit.tls.clone(),
    }
}

async fn connect_docker(settings: &Settings, stop: &CancellationToken) -> anyhow::Result<DockerDriver> {
    let mut attempt = 0u32;
    loop {
        match DockerDriver::connect(&settings.docker, &settings.host).await {
            Ok(d) => {
                let mut network = HostNetwork::new(&settings.neutron_ovs_bridge);
                network.options.metadata_route = settings.docker.metadata_route;
                return Ok(d.with_network(network));
            }
            Err(e) => {
                attempt += 1;
                if attempt == 1 || attempt.is_multiple_of(10) {
                    tracing::error!(error = %e, "cannot reach the Docker engine; retrying");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.cancelled() => anyhow::bail!("stopped before the Docker engine answered"),
        }
    }
}

/// Says how root disks are limited; refuses to serve when `quota` was
/// configured on an engine that cannot enforce one (every boot would fail).
fn announce_root_disk_mode(settings: &Settings, driver: &DockerDriver) -> anyhow::Result<()> {
    use crate::virt::Driver;
    use crate::virt::root_disk::Enforcement;
    let mode = driver.root_disk_mode();
    if mode.quota_unsupported {
        anyhow::bail!("[docker] {}", mode.reason);
    }
    match mode.enforcement {
        Enforcement::Off => tracing::warn!(reason = %mode.reason, "root disks are not limited"),
        e => {
            tracing::info!(mode = ?e, reason = %mode.reason, "root disks limited to the flavor's root_gb");
            if settings.docker.zero_disk_flavor_root_gb == 0 {
                tracing::warn!(
                    "instances of flavors with root_gb = 0 have no root disk limit ([docker] zero_disk_flavor_root_gb = 0)"
                );
            }
        }
    }
    Ok(())
}

fn placement_client(settings: &Settings) -> Option<Placement> {
    let configured = settings.placement.endpoint_override.is_some() || settings.placement.auth != AuthSettings::None;
    if !configured {
        tracing::warn!("[placement] is not configured: the host will not be schedulable");
        return None;
    }
    Some(Placement::new(ServiceClient::new(settings.placement.clone(), "placement", "placement")))
}

fn neutron_client(settings: &Settings) -> Option<Neutron> {
    let configured = settings.neutron.endpoint_override.is_some() || settings.neutron.auth != AuthSettings::None;
    if !configured {
        tracing::warn!("[neutron] is not configured: only servers without networks (--nic none) can boot");
        return None;
    }
    let client = ServiceClient::new(settings.neutron.clone(), "neutron", "neutron");
    Some(Neutron::new(client, &settings.host, &settings.neutron_ovs_bridge))
}

/// Re-reads `[DEFAULT] debug` from the configuration files and applies it
/// to the log filter (what oslo services reload on SIGHUP). A file that no
/// longer parses keeps the current levels and says why.
fn reload_log_levels(config_files: &[PathBuf], force_debug: bool) {
    let debug = crate::config::Layered::load(config_files)
        .and_then(|l| l.bool(&crate::config::options::DEBUG))
        .map(|d| d || force_debug);
    match debug {
        Ok(on) => match crate::logging::set_debug(on) {
            Ok(()) => {
                tracing::info!(debug = on, files = ?config_files, "SIGHUP: reloaded the log levels from the configuration files");
                tracing::debug!("debug logging is on");
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: cannot change the log levels"),
        },
        Err(e) => tracing::error!(error = %e, "SIGHUP: cannot read the configuration; log levels unchanged"),
    }
}

/// Installs the handlers now (so no signal arrives before they exist):
/// SIGTERM and SIGINT stop the service gracefully; SIGHUP reloads the log
/// levels and never stops it.
fn spawn_signal_handler(stop: CancellationToken, config_files: Vec<PathBuf>, force_debug: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down gracefully"); break }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down gracefully"); break }
                _ = hup.recv() => {
                    let files = config_files.clone();
                    // Reading files is blocking I/O: off the async workers.
                    let _ = tokio::task::spawn_blocking(move || reload_log_levels(&files, force_debug)).await;
                }
            }
        }
        stop.cancel();
        // Later signals are absorbed while the drain runs; a second SIGHUP
        // still reloads.
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: already shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: already shutting down"),
                _ = hup.recv() => {
                    let files = config_files.clone();
                    let _ = tokio::task::spawn_blocking(move || reload_log_levels(&files, force_debug)).await;
                }
            }
        }
    });
    Ok(())
}

async fn choose_release(settings: &Settings, conductor: &Conductor) -> &'static Release {
    if let Some(r) = release::by_name(&settings.nova_release) {
        return r;
    }
    let ctx = RequestContext::admin();
    loop {
        match conductor.service_minimum_version(&ctx, "nova-conductor").await {
            Ok(v) => {
                let r = release::detect(v);
                tracing::info!(
                    conductor_version = v,
                    release = r.name,
                    "detected the Nova release of the control plane"
                );
                return r;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the conductor for its version; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// How the service was started, beyond its settings.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// The configuration files, in order: SIGHUP reads them again.
    pub config_files: Vec<PathBuf>,
    /// `--debug` on the command line: debug logging whatever the files say.
    pub force_debug: bool,
}

/// Runs the compute service until a termination signal.
pub async fn serve(settings: Settings, launch: Launch) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let stop = CancellationToken::new();
    spawn_signal_handler(stop.clone(), launch.config_files, launch.force_debug)?;
    let notifier = crate::notify::Notifier::from_env()?;
    let watchdog = crate::notify::watchdog_period()?;
    tracing::info!(host = %settings.host, brokers = ?settings.transport_url.brokers, "nova-docker starting");
    std::fs::create_dir_all(&settings.state_path)
        .with_context(|| format!("cannot create state_path {}", settings.state_path.display()))?;

    let driver = Arc::new(connect_docker(&settings, &stop).await?);
    announce_root_disk_mode(&settings, &driver)?;
    if !settings.hard_reboot_vif_wait.iter().any(|t| t == "normal") {
        tracing::warn!(
            "hard reboots do not wait for Neutron to see ports go and come back: an L2 agent can miss the re-plug \
             and leave a port without its security groups (set [workarounds] \
             wait_for_vif_plugged_event_during_hard_reboot = normal)"
        );
    }
    for unknown in &settings.unknown_options {
        tracing::warn!("{unknown} is not an option of nova-docker: ignored");
    }
    for line in &settings.unused_options {
        tracing::info!("{line}");
    }
    let topology = Topology::new(settings.rabbit.clone(), settings.control_exchange.clone());
    let transport = Transport::start(transport_options(&settings));
    let client = RpcClient::start(transport.clone(), &topology, settings.rpc_response_timeout).await?;
    let conductor = Conductor::new(client.clone(), &settings.host);
    if let Some(r) = release::by_name(&settings.nova_release) {
        conductor.set_release(r);
    }
    let placement = placement_client(&settings);
    let glance = Glance::new(ServiceClient::new(settings.glance.clone(), "glance", "glance"));
    let images = ImageService::new(glance, driver.clone(), crate::image::archive_limits(&settings.docker));
    let registrar = HostRegistrar {
        settings: settings.clone(),
        conductor: conductor.clone(),
        placement: placement.clone(),
        driver: driver.clone(),
    };
    let manager = Arc::new(ComputeManager::new(
        settings.clone(),
        conductor.clone(),
        placement.clone().map(|p| Arc::new(p) as Arc<dyn crate::placement::Allocations>),
        driver.clone(),
        images,
        registrar,
        neutron_client(&settings).map(|n| Arc::new(n) as Arc<dyn crate::network::PortService>),
    ));

    // RPC first: queues exist and ping answers before Nova knows this host.
    let endpoints: Vec<Arc<dyn Endpoint>> = vec![
        Arc::new(BaseApi::new("compute")),
        Arc::new(ComputeEndpoint::new(manager.clone(), release::HIBISCUS.compute_rpc)),
    ];
    let mut topics = vec!["compute".to_string()];
    if release::by_name(&settings.nova_release).is_some_and(|r| r.alt_topic) {
        topics.push("compute-alt".into());
    }
    let server = RpcServer::new(
        transport.clone(),
        topology.clone(),
        Dispatcher::new(endpoints),
        ServerOptions {
            topics,
            server: settings.host.clone(),
            max_message_bytes: settings.rpc_max_message_bytes,
            concurrency: settings.executor_pool_size,
            missing_consumer_retry_timeout: settings.rabbit.missing_consumer_retry_timeout,
            drain_timeout: settings.graceful_shutdown_timeout,
        },
    );
    server.declare().await?;
    // A host whose RPC server has ended looks up (it still heartbeats) but
    // drops every request: if that ever happens, the service stops and says
    // so, for its supervisor to start it again.
    let server_ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server_task = tokio::spawn({
        let (server, stop, ended) = (server.clone(), stop.clone(), server_ended.clone());
        async move {
            let result = server.run(stop.clone()).await;
            if !stop.is_cancelled() {
                tracing::error!(result = ?result, "the RPC server ended while the service runs; stopping");
                ended.store(true, std::sync::atomic::Ordering::SeqCst);
                stop.cancel();
            }
            result
        }
    });

    // The last heartbeat's outcome (true until the first one fails).
    let heartbeat_ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
    if let Some(period) = watchdog {
        spawn_watchdog(notifier.clone(), period, transport.clone(), server_ended.clone(), heartbeat_ok.clone());
    }

    if let Some(listen) = settings.metrics_listen.clone() {
        let (t, m) = (transport.clone(), manager.clone());
        let ready: health::ReadyCheck = Arc::new(move || {
            let (t, m) = (t.clone(), m.clone());
            Box::pin(async move {
                if !t.is_connected() {
                    return Err("no RabbitMQ connection".to_string());
                }
                if m.records.get().is_none() {
                    return Err("host not registered yet".to_string());
                }
                m.driver.client().ping().await.map(|_| ()).map_err(|e| format!("Docker: {e}"))
            })
        });
        // Measured at each scrape: is the broker connected, does Docker answer.
        let (t, m) = (transport.clone(), manager.clone());
        let scrape: health::ScrapeHook = Arc::new(move || {
            let (t, m) = (t.clone(), m.clone());
            Box::pin(async move {
                let metrics = crate::metrics::global();
                metrics.set("nova_docker_broker_connected", &[], if t.is_connected() { 1.0 } else { 0.0 });
                let ping = tokio::time::timeout(Duration::from_secs(5), m.driver.client().ping()).await;
                let docker = matches!(ping, Ok(Ok(_)));
                metrics.set("nova_docker_docker_connected", &[], if docker { 1.0 } else { 0.0 });
            })
        });
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = health::serve(&listen, ready, scrape, stop).await {
                tracing::error!(error = %e, listen = %listen, "the health/metrics endpoint failed");
            }
        });
    }

    // The conductor, then the release, then the host records.
    tokio::select! {
        _ = conductor.wait_until_ready() => {}
        _ = stop.cancelled() => return shutdown(&notifier, transport, server_task, &server_ended).await,
    }
    let release = tokio::select! {
        r = choose_release(&settings, &conductor) => r,
        _ = stop.cancelled() => return shutdown(&notifier, transport, server_task, &server_ended).await,
    };
    conductor.set_release(release);
    if release.alt_topic {
        server.add_topic("compute-alt").await?;
    }
    let ctx = RequestContext::admin();
    let records = loop {
        let attempt = tokio::select! {
            r = manager.registrar.register(&ctx) => r,
            _ = stop.cancelled() => return shutdown(&notifier, transport, server_task, &server_ended).await,
        };
        match attempt {
            Ok(r) => break Arc::new(r),
            Err(e) => {
                tracing::error!(error = %e, "host registration failed; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    tracing::info!(node = %records.node_uuid, release = release.name, "host registered");
    let _ = manager.records.set(records.clone());
    if let Err(e) = manager.init_host(&ctx).await {
        tracing::warn!(error = %e, "start-up recovery incomplete");
    }
    manager.mark_ready();
    tracing::info!("ready: serving compute requests");
    notifier.notify("READY=1");

    spawn_periodic_tasks(manager.clone(), records, stop.clone(), transport.clone(), heartbeat_ok);
    // One full pass now: containers whose instance is gone, power states.
    let first_pass = manager.clone();
    tokio::spawn(async move { first_pass.sync_all(&RequestContext::admin()).await });
    tokio::spawn(manager.clone().watch_events(stop.clone()));

    stop.cancelled().await;
    shutdown(&notifier, transport, server_task, &server_ended).await
}

/// Keeps systemd's watchdog (`WatchdogSec`) fed at half its period while
/// the RPC server runs, the broker connection is up and the last heartbeat
/// succeeded; otherwise it lets the watchdog fire, and systemd restarts the
/// service.
fn spawn_watchdog(
    notifier: crate::notify::Notifier,
    period: Duration,
    transport: Transport,
    server_ended: Arc<std::sync::atomic::AtomicBool>,
    heartbeat_ok: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_healthy = true;
        loop {
            tick.tick().await;
            let problem = if server_ended.load(SeqCst) {
                Some("the RPC server ended")
            } else if !transport.is_connected() {
                Some("no RabbitMQ connection")
            } else if !heartbeat_ok.load(SeqCst) {
                Some("the last service heartbeat failed")
            } else {
                None
            };
            match problem {
                None => {
                    notifier.notify("WATCHDOG=1");
                    was_healthy = true;
                }
                Some(why) => {
                    if was_healthy {
                        tracing::warn!(reason = why, "not feeding the systemd watchdog");
                    }
                    was_healthy = false;
                }
            }
        }
    });
}

/// Lets the RPC server drain, closes the broker connection; an error when
/// the stop came from the RPC server ending on its own (`server_ended`).
async fn shutdown(
    notifier: &crate::notify::Notifier,
    transport: Transport,
    server_task: tokio::task::JoinHandle<Result<(), crate::rpc::TransportError>>,
    server_ended: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    notifier.notify("STOPPING=1");
    match server_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "RPC server ended with an error"),
        Err(e) => tracing::warn!(error = %e, "RPC server task failed"),
    }
    transport.close().await;
    tracing::info!("stopped");
    if server_ended.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!("the RPC server ended unexpectedly (see the log above)");
    }
    Ok(())
}

/// Whether this host measures root disks (no quota, limits not off).
fn measures_root_disks(manager: &ComputeManager<DockerDriver>) -> bool {
    use crate::virt::Driver;
    manager.driver.root_disk_mode().enforcement == crate::virt::root_disk::Enforcement::Measure
}

fn spawn_periodic_tasks(
    manager: Arc<ComputeManager<DockerDriver>>,
    records: Arc<crate::compute::host::HostRecords>,
    stop: CancellationToken,
    transport: Transport,
    heartbeat_ok: Arc<std::sync::atomic::AtomicBool>,
) {
    let s = manager.settings.clone();
    // Heartbeat: report_count every report_interval.
    {
        let (m, r, stop) = (manager.clone(), records.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(s.report_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_connects = 0;
            loop {
                tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => return }
                let connects = transport.connection_count();
                if connects > last_connects {
                    metrics::global().add("nova_docker_amqp_connections_total", &[], (connects - last_connects) as f64);
                    last_connects = connects;
                }
                let beat = m.registrar.heartbeat(&RequestContext::admin(), &r).await;
                heartbeat_ok.store(beat.is_ok(), std::sync::atomic::Ordering::SeqCst);
                match beat {
                    Ok(true) => {
                        if let Err(e) = m.registrar.sync_traits(&r).await {
                            tracing::warn!(error = %e, "could not sync the disabled trait");
                        }
                    }
                    Ok(false) => {}
                    Err(crate::compute::host::HostError::Conductor(e)) if e.is_nova("ServiceNotFound") => {
                        match m.registrar.reregister(&RequestContext::admin(), &r).await {
                            Ok(_) => heartbeat_ok.store(true, std::sync::atomic::Ordering::SeqCst),
                            Err(e) => tracing::error!(error = %e, "registering again failed"),
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "service heartbeat failed"),
                }
            }
        });
    }
    // Resources and placement.
    {
        let (m, r, stop) = (manager.clone(), records.clone(), stop.clone());
        let every = m.settings.update_resources_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => return }
                if let Err(e) = m.registrar.refresh(&RequestContext::admin(), &r).await {
                    tracing::warn!(error = %e, "periodic resource update failed");
                }
            }
        });
    }
    // Root disks measured where the storage driver cannot cap them.
    if measures_root_disks(&manager) {
        let (m, stop) = (manager.clone(), stop.clone());
        let every = m.settings.docker.root_disk_measure_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            // A pass longer than the interval is followed by the next one
            // an interval later, never by a burst.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => return }
                m.enforce_root_disks().await;
            }
        });
    }
    // Soft-deleted instances deleted for good (reclaim_instance_interval).
    crate::compute::reclaim::spawn(manager.clone(), stop.clone());
    // Resizes left unconfirmed confirmed automatically (resize_confirm_window).
    crate::compute::confirm::spawn(manager.clone(), stop.clone());
    // Glance images no instance uses any more ([image_cache]).
    crate::image::cache::spawn(
        &manager.settings,
        manager.driver.client().clone(),
        manager.conductor.clone(),
        stop.clone(),
    );
    // Full power-state reconciliation and deleted-instance cleanup.
    let sync_every =
        [manager.settings.sync_power_state_interval, manager.settings.running_deleted_instance_poll_interval]
            .into_iter()
            .flatten()
            .min();
    if let Some(every) = sync_every {
        let (m, stop) = (manager.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => return }
                m.sync_all(&RequestContext::admin()).await;
            }
        });
    }
}
