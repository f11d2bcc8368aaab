//! Signals of `nova-docker serve` as an operator sends them: SIGHUP (what
//! `systemctl reload`, logrotate and DevStack send) reloads the log levels
//! and never stops the service; SIGTERM drains and exits 0.
//!
//! The service runs on a control exchange of its own, so no conductor ever
//! answers: it stays in its start-up wait, which needs only RabbitMQ and
//! Docker (not the control planes).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use crate::common;

const T: Duration = Duration::from_secs(60);

/// A running `nova-docker serve` whose stderr lines the test reads.
pub struct Service {
    pub child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
}

impl Service {
    /// Starts the binary with `args` and extra environment (RUST_LOG unset:
    /// the configuration decides the levels).
    pub fn spawn(args: &[&std::ffi::OsStr], env: &[(&str, &std::ffi::OsStr)]) -> Service {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nova-docker"))
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("nova-docker starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Service { child, lines, seen: Vec::new() }
    }

    /// Waits for a line containing every one of `parts`; returns it.
    pub async fn expect(&mut self, parts: &[&str]) -> String {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if parts.iter().all(|p| line.contains(p)) {
                    return Some(line);
                }
            }
            None
        };
        match tokio::time::timeout(T, wait).await {
            Ok(Some(line)) => line,
            _ => panic!("no line with {parts:?}; the service wrote:\n{}", self.seen.join("\n")),
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().expect("still running") as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// A configuration for a host that nothing else uses, on an exchange no
/// conductor listens to.
pub fn isolated_conf(dir: &Path, name: &str, extra: &str) -> String {
    format!(
        "[DEFAULT]\nhost = {name}\ntransport_url = {url}\ncontrol_exchange = {name}\nstate_path = {state}\n{extra}\n",
        url = common::rabbit_url(),
        state = dir.join("state").display(),
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nd-it-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn sighup_reloads_log_levels_and_never_stops_the_service() {
    use nix::sys::signal::Signal;
    let name = common::unique("nd-sighup");
    let dir = scratch(&name);
    let conf = dir.join("nova.conf");
    std::fs::write(&conf, isolated_conf(&dir, &name, "debug = false")).unwrap();
    let mut svc = Service::spawn(&["serve".as_ref(), "--config-file".as_ref(), conf.as_os_str()], &[]);
    svc.expect(&["nova-docker starting"]).await;

    // debug turned on in the file: SIGHUP applies it, and debug lines appear.
    std::fs::write(&conf, isolated_conf(&dir, &name, "debug = true")).unwrap();
    svc.signal(Signal::SIGHUP);
    svc.expect(&["SIGHUP: reloaded the log levels", "debug=true"]).await;
    svc.expect(&["DEBUG", "debug logging is on"]).await;
    assert!(svc.running(), "SIGHUP stopped the service");

    // And off again.
    std::fs::write(&conf, isolated_conf(&dir, &name, "debug = false")).unwrap();
    svc.signal(Signal::SIGHUP);
    svc.expect(&["SIGHUP: reloaded the log levels", "debug=false"]).await;

    // A file broken meanwhile: the service says so and keeps running.
    std::fs::write(&conf, "debug = true\n[DEFAULT\n").unwrap();
    svc.signal(Signal::SIGHUP);
    svc.expect(&["SIGHUP: cannot read the configuration"]).await;
    assert!(svc.running(), "a SIGHUP with a broken file stopped the service");

    // SIGTERM still stops it, cleanly.
    svc.signal(Signal::SIGTERM);
    svc.expect(&["SIGTERM: shutting down gracefully"]).await;
    let status = tokio::time::timeout(T, svc.child.wait()).await.expect("exits after SIGTERM").unwrap();
    assert!(status.success(), "SIGTERM exit status: {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Datagrams received on a `NOTIFY_SOCKET` the test binds, until `until`.
async fn notifications_until(socket: &tokio::net::UnixDatagram, until: &str) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let len = tokio::time::timeout(T, socket.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {until:?} notification; got {got:?}"))
            .unwrap();
        let msg = String::from_utf8_lossy(&buf[..len]).to_string();
        got.push(msg.clone());
        if msg.lines().any(|l| l == until) {
            return got;
        }
    }
}

#[tokio::test]
async fn systemd_notify_watchdog_while_healthy_stopping_on_drain_no_early_ready() {
    use nix::sys::signal::Signal;
    let name = common::unique("nd-notify");
    let dir = scratch(&name);
    let conf = dir.join("nova.conf");
    std::fs::write(&conf, isolated_conf(&dir, &name, "")).unwrap();
    let sock_path = dir.join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let mut svc = Service::spawn(
        &["serve".as_ref(), "--config-file".as_ref(), conf.as_os_str()],
        &[("NOTIFY_SOCKET", sock_path.as_os_str()), ("WATCHDOG_USEC", "400000".as_ref())],
    );
    svc.expect(&["nova-docker starting"]).await;

    // The RPC server runs (no conductor answers on this exchange): the
    // watchdog is fed, but the host is not registered, so it is not READY.
    let before = notifications_until(&socket, "WATCHDOG=1").await;
    let again = notifications_until(&socket, "WATCHDOG=1").await;
    svc.signal(Signal::SIGTERM);
    let after = notifications_until(&socket, "STOPPING=1").await;
    let all: Vec<&String> = before.iter().chain(&again).chain(&after).collect();
    assert!(!all.iter().any(|m| m.contains("READY=1")), "READY before registration: {all:?}");
    let status = tokio::time::timeout(T, svc.child.wait()).await.expect("exits after SIGTERM").unwrap();
    assert!(status.success(), "SIGTERM exit status: {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn oslo_style_command_line_config_dir_debug_log_file_version() {
    use nix::sys::signal::Signal;
    let version =
        tokio::process::Command::new(env!("CARGO_BIN_EXE_nova-docker")).arg("--version").output().await.unwrap();
    assert!(version.status.success());
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("nova-docker {}", env!("CARGO_PKG_VERSION")));

    let name = common::unique("nd-cli");
    let dir = scratch(&name);
    let conf = dir.join("nova.conf");
    // The base file says debug = false; a later --config-dir file turns it
    // on: only honoured if the directory is read, after the file.
    // An option of Nova's this host does not use is listed, once.
    let extra = "debug = false\ncompute_driver = libvirt.LibvirtDriver";
    std::fs::write(&conf, isolated_conf(&dir, &name, extra)).unwrap();
    let conf_d = dir.join("nova.conf.d");
    std::fs::create_dir_all(&conf_d).unwrap();
    std::fs::write(conf_d.join("50-debug.conf"), "[DEFAULT]\ndebug = true\n").unwrap();
    std::fs::write(conf_d.join("README"), "not a config file [\n").unwrap();
    let log = dir.join("service.log");
    // Options before and after the subcommand, as oslo services accept them.
    let mut svc = Service::spawn(
        &[
            "--config-file".as_ref(),
            conf.as_os_str(),
            "serve".as_ref(),
            "--config-dir".as_ref(),
            conf_d.as_os_str(),
            "--log-file".as_ref(),
            log.as_os_str(),
        ],
        &[],
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    common::wait_for("the log file to show the start", T, async || log_text().contains("nova-docker starting")).await;
    let text = log_text();
    assert!(
        text.lines()
            .any(|l| l.contains("DEBUG") && l.contains("configuration files read") && l.contains("50-debug.conf")),
        "{text}"
    );
    common::wait_for("the unused options listed", T, async || {
        log_text().contains("[DEFAULT] not used by this host: compute_driver")
    })
    .await;
    svc.signal(Signal::SIGTERM);
    let status = tokio::time::timeout(T, svc.child.wait()).await.expect("exits after SIGTERM").unwrap();
    assert!(status.success(), "SIGTERM exit status: {status:?}");
    assert!(log_text().contains("stopped"), "{}", log_text());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn logging_options_of_nova_conf_are_honoured_at_start() {
    use nix::sys::signal::Signal;
    let name = common::unique("nd-logopts");
    let dir = scratch(&name);
    let conf = dir.join("nova.conf");

    // use_journal without journald's socket: refused at start, saying why.
    if !Path::new("/run/systemd/journal/socket").exists() {
        std::fs::write(&conf, isolated_conf(&dir, &name, "use_journal = true")).unwrap();
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_nova-docker"))
            .args(["serve".as_ref(), "--config-file".as_ref(), conf.as_os_str()])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(T, run).await.expect("serve exits at once without journald").unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started without journald: {stderr}");
        assert!(stderr.contains("use_journal = true but journald's socket /run/systemd/journal/socket"), "{stderr}");
    }

    // log_dir (interpolated from state_path) and use_json from the file: the
    // log is <log_dir>/nova-docker.log, in oslo.log's JSON.
    let logs = dir.join("state").join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(&conf, isolated_conf(&dir, &name, "log_dir = $state_path/logs\nuse_json = true")).unwrap();
    let mut svc = Service::spawn(&["serve".as_ref(), "--config-file".as_ref(), conf.as_os_str()], &[]);
    let log = logs.join("nova-docker.log");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    common::wait_for("the JSON log to show the start", T, async || log_text().contains("nova-docker starting")).await;
    let line = log_text().lines().find(|l| l.contains("nova-docker starting")).unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["message"], "nova-docker starting", "{line}");
    assert_eq!(v["levelname"], "INFO", "{line}");
    assert_eq!(v["process"], svc.child.id().unwrap(), "{line}");
    assert!(v["name"].as_str().unwrap().starts_with("nova_docker."), "{line}");
    svc.signal(Signal::SIGTERM);
    let status = tokio::time::timeout(T, svc.child.wait()).await.expect("exits after SIGTERM").unwrap();
    assert!(status.success(), "SIGTERM exit status: {status:?}");

    // log_file relative to log_dir, text: oslo.log's line without a context.
    std::fs::write(&conf, isolated_conf(&dir, &name, &format!("log_dir = {}\nlog_file = text.log", logs.display())))
        .unwrap();
    let mut svc = Service::spawn(&["serve".as_ref(), "--config-file".as_ref(), conf.as_os_str()], &[]);
    let log = logs.join("text.log");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    common::wait_for("the text log to show the start", T, async || log_text().contains("nova-docker starting")).await;
    let text = log_text();
    let line = text.lines().find(|l| l.contains("nova-docker starting")).unwrap();
    // 2026-12-06 08:00:00.123 1234 INFO nova_docker.service [-] nova-docker starting ...
    let fields: Vec<&str> = line.splitn(6, ' ').collect();
    assert!(
        chrono::NaiveDateTime::parse_from_str(&format!("{} {}", fields[0], fields[1]), "%Y-%m-%d %H:%M:%S%.3f").is_ok(),
        "{line}"
    );
    assert_eq!(fields[2], svc.child.id().unwrap().to_string(), "{line}");
    assert_eq!(fields[3], "INFO", "{line}");
    assert!(fields[4].starts_with("nova_docker."), "{line}");
    assert!(fields[5].starts_with("[-] nova-docker starting"), "{line}");
    svc.signal(Signal::SIGTERM);
    let status = tokio::time::timeout(T, svc.child.wait()).await.expect("exits after SIGTERM").unwrap();
    assert!(status.success(), "SIGTERM exit status: {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// READY=1 only once the host is registered: when the notification
/// arrives, Nova already lists the service and Placement has the host's
/// provider (a real control plane, a real NOTIFY_SOCKET listener);
/// STOPPING=1 on SIGTERM.
#[tokio::test]
async fn systemd_ready_is_sent_after_the_host_registered() {
    use crate::cloud::{Cloud, ComputeHost, host_name};
    let cloud = Cloud::get(common::Release::Newest);
    let name = host_name("ready");
    let mut host = ComputeHost::configure(&cloud, &name, "");
    let sock_path = host.state.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let socket = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    host.set_env("NOTIFY_SOCKET", &sock_path.display().to_string());
    host.spawn();
    let got = notifications_until(&socket, "READY=1").await;
    // Checked at once, before anything else can happen.
    let (service, provider) = tokio::join!(cloud.compute_service(&name), cloud.provider(&name));
    assert!(service.is_some(), "READY=1 before Nova lists the service: {got:?}");
    assert!(provider.is_some(), "READY=1 before the Placement provider exists: {got:?}");
    let log = host.log_text();
    let registered = log.find("host registered").expect("a 'host registered' line");
    let ready = log.find("ready: serving compute requests").expect("a 'ready' line");
    assert!(registered < ready, "{log}");
    assert_eq!(host.stop().await.map(|s| s.success()), Some(true), "graceful exit 0");
    let after = notifications_until(&socket, "STOPPING=1").await;
    assert!(after.iter().all(|m| !m.contains("READY=1")), "{after:?}");
}
