//! Host resources per instance, against real engines and the real Nova API:
//! the root disk held to the flavor's root_gb (a quota on a quota-capable
//! storage driver, a measurement elsewhere), the console log bounded by the
//! service, image health checks never run, and nothing of an instance left
//! on the host after its deletion.
//!
//! The quota path needs a storage driver that can cap a container. On the
//! test machines' kernel XFS has no quota support (`CONFIG_XFS_QUOTA` is
//! unset: `mount -o prjquota` of a loop-mounted xfs fails with "XFS (loopN):
//! quota support not available in this kernel"), so overlay2 on xfs cannot
//! enforce `--storage-opt size`; btrfs can (a qgroup per container), and the
//! quota test runs a private engine with the btrfs driver on a loop-mounted
//! btrfs. The overlay2-on-xfs engine is still started, to show the mode is
//! decided from its mount options and agrees with what the engine refuses.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::InspectContainerOptions;
use serde_json::{Value, json};

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::{self, Release, check, line, wait_for};

const T: Duration = Duration::from_secs(120);

fn machine_docker() -> Docker {
    Docker::connect_with_unix_defaults().unwrap()
}

async fn inspect(docker: &Docker, id: &str) -> Option<bollard::models::ContainerInspectResponse> {
    docker.inspect_container(&format!("nova-{id}"), None::<InspectContainerOptions>).await.ok()
}

/// Runs `docker [-H socket] args...`: success and combined output.
fn docker_cli(socket: Option<&Path>, args: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new("docker");
    if let Some(s) = socket {
        cmd.arg("-H").arg(format!("unix://{}", s.display()));
    }
    let out = cmd.args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The instance faults Nova's cell database holds for a server (the API
/// shows a fault only for ERROR and DELETED servers).
fn faults_in_db(cloud: &Cloud, server: &str) -> Vec<String> {
    let db = PathBuf::from(cloud.var("ND_STATE")).join("db/nova.sqlite");
    let script = "import sqlite3, sys, json\n\
                  c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True, timeout=30)\n\
                  rows = c.execute('select message from instance_faults where instance_uuid = ?', (sys.argv[2],))\n\
                  print(json.dumps([r[0] for r in rows]))\n";
    let out =
        std::process::Command::new("/usr/bin/python3").args(["-c", script]).arg(&db).arg(server).output().unwrap();
    assert!(out.status.success(), "reading {}: {}", db.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Boots a server with `flavor` and no network on `host`; waits for ACTIVE.
async fn boot(cloud: &Cloud, name: &str, image: &str, host: &str, flavor: &str) -> String {
    let id = cloud.create_server(name, image, host, flavor).await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    id
}

// ---------------------------------------------------------------------------
// Health checks
// ---------------------------------------------------------------------------

/// An image's HEALTHCHECK (every second here) would have the engine exec
/// into the container forever on the image's schedule. The same image run
/// by plain `docker run` shows the health check does run when not disabled.
#[tokio::test]
async fn image_health_check_cannot_make_the_host_exec() {
    let cloud = Cloud::get(Release::Newest);
    let docker = machine_docker();
    let name = host_name("health");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.docker_image_in_glance(&host.conf, "nd-busybox:healthcheck", "nd-busybox-healthcheck", &[]).await;
    let id = boot(&cloud, "health", &image, &name, "42").await;
    let since = chrono::Utc::now().timestamp() - 1;

    // The control: the same image without our create settings.
    let control = common::unique("nd-health-control");
    let (ok, out) = docker_cli(None, &["run", "-d", "--name", &control, "--network", "none", "nd-busybox:healthcheck"]);
    assert!(ok, "{out}");
    wait_for("the control container's health check to run", T, async || {
        docker_cli(None, &["exec", &control, "test", "-e", "/tmp/healthcheck-ran"]).0
    })
    .await;
    let until = chrono::Utc::now().timestamp() + 1;
    let _ = docker_cli(None, &["rm", "-f", &control]);

    let c = inspect(&docker, &id).await.expect("the instance's container");
    let cid = c.id.unwrap();
    let (ok, events) = docker_cli(
        None,
        &[
            "events",
            "--since",
            &since.to_string(),
            "--until",
            &until.to_string(),
            "--filter",
            &format!("container={cid}"),
            "--format",
            "{{.Action}}",
        ],
    );
    assert!(ok, "{events}");
    assert!(!events.contains("exec_create") && !events.contains("health_status"), "events: {events}");
    let (ran, _) = docker_cli(None, &["exec", &format!("nova-{id}"), "test", "-e", "/tmp/healthcheck-ran"]);
    assert!(!ran, "the image's health check ran in the instance");
    // The engine keeps no health state for it.
    assert_eq!(
        c.config.as_ref().unwrap().healthcheck.as_ref().unwrap().test.as_deref(),
        Some(&["NONE".to_string()][..])
    );
    assert!(c.state.as_ref().unwrap().health.is_none(), "no health state: {:?}", c.state);
    cloud.delete_server(&id, T).await;
    host.stop().await;
}

// ---------------------------------------------------------------------------
// Console log
// ---------------------------------------------------------------------------

const FLOOD_LINES: u32 = 20000;

/// A tenant whose instance prints far more than the cap: the host keeps at
/// most the cap on disk whatever the daemon's log defaults are, and the
/// console output API still returns the newest lines.
#[tokio::test]
async fn console_flood_is_capped_on_the_host_and_the_newest_lines_stay_readable() {
    let cloud = Cloud::get(Release::Newest);
    let docker = machine_docker();
    let name = host_name("flood");
    let cap: u64 = 128 * 1024;
    let mut host = ComputeHost::start(&cloud, &name, &format!("[docker]\nconsole_log_max_bytes = {cap}\n")).await;
    let command = format!(
        "os_command_line=/bin/sh -c 'i=0; while [ $i -lt {FLOOD_LINES} ]; do i=$((i+1)); echo flood line $i; done; \
         echo flood done; trap \"exit 0\" TERM; while true; do sleep 1 & wait $!; done'"
    );
    let image = cloud.docker_image_in_glance(&host.conf, "nd-busybox:latest", "nd-busybox-flood", &[&command]).await;
    let id = boot(&cloud, "flood", &image, &name, "42").await;
    let mut last = Value::Null;
    wait_for("the flood to end", T, async || {
        let (status, out) = cloud.action(&id, json!({"os-getConsoleOutput": {"length": 3}})).await;
        last = out.clone();
        status == 200 && out["output"].as_str().unwrap_or_default().contains("flood done")
    })
    .await;
    let output = last["output"].as_str().unwrap().to_string();
    assert_eq!(output, format!("flood line {}\nflood line {FLOOD_LINES}\nflood done\n", FLOOD_LINES - 1), "{last}");
    let (_, all) = cloud.action(&id, json!({"os-getConsoleOutput": {}})).await;
    let all = all["output"].as_str().unwrap();
    assert!(all.ends_with("flood done\n") && !all.contains("flood line 1\n"), "the oldest lines are gone");

    // On the host: the log files of the container, at most the cap.
    let c = inspect(&docker, &id).await.unwrap();
    let log_path = PathBuf::from(c.log_path.unwrap());
    let prefix = log_path.file_name().unwrap().to_string_lossy().to_string();
    let files: Vec<(String, u64)> = std::fs::read_dir(log_path.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| (e.file_name().to_string_lossy().to_string(), e.metadata().unwrap().len()))
        .collect();
    let total: u64 = files.iter().map(|(_, n)| n).sum();
    // json-file rotates before a write once a file reached its size: each
    // file may pass it by one line.
    let slack = 4 * 1024;
    assert!(files.len() <= 4 && total <= cap + slack, "{total} bytes in {files:?}, cap {cap}");
    assert!(total > cap / 2, "the log holds the newest output ({total} bytes in {files:?})");
    cloud.delete_server(&id, T).await;
    host.stop().await;
}

// ---------------------------------------------------------------------------
// Nothing left after delete
// ---------------------------------------------------------------------------

/// A deleted instance leaves nothing on the host: no container, no
/// anonymous volume (its image declares one), no log, no file under
/// instances_path.
#[tokio::test]
async fn deleted_instance_leaves_no_volume_file_or_log_on_the_host() {
    let cloud = Cloud::get(Release::Newest);
    let docker = machine_docker();
    let name = host_name("leftover");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.docker_image_in_glance(&host.conf, "nd-busybox:volume", "nd-busybox-volume", &[]).await;
    let id = boot(&cloud, "leftover", &image, &name, "42").await;
    let c = inspect(&docker, &id).await.unwrap();
    let volumes: Vec<String> = c
        .mounts
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.typ.as_ref().map(|t| t.to_string()).as_deref() == Some("volume"))
        .filter_map(|m| m.name)
        .collect();
    if volumes.is_empty() {
        eprintln!("the image's VOLUME was not mounted (stripped when the image was loaded): no volume to check");
    } else {
        // The tenant fills it: it must go with the instance.
        let (ok, out) = docker_cli(None, &["exec", &format!("nova-{id}"), "sh", "-c", "echo data > /data/f"]);
        assert!(ok, "{out}");
    }
    let dir = host.state.join("instances").join(&id);
    assert!(dir.join("resolv.conf").is_file(), "{} holds the instance's files", dir.display());
    let log_path = PathBuf::from(c.log_path.unwrap());
    assert!(log_path.is_file());

    cloud.delete_server(&id, T).await;
    assert!(inspect(&docker, &id).await.is_none(), "the container is gone");
    for v in &volumes {
        let (exists, _) = docker_cli(None, &["volume", "inspect", v]);
        assert!(!exists, "volume {v} of the deleted instance is still there");
    }
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(!log_path.exists(), "{} is still there", log_path.display());
    host.stop().await;
}

// ---------------------------------------------------------------------------
// Root disk: measured
// ---------------------------------------------------------------------------

/// A tenant writing past its flavor's root_gb on an engine that cannot cap
/// a container (this machine's fuse-overlayfs): the measurement finds it and
/// the instance is stopped as Nova's power sync stops one, with a fault.
#[tokio::test]
async fn root_disk_filled_past_root_gb_is_stopped_with_a_fault() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("diskfull");
    let mut host = ComputeHost::start(&cloud, &name, "[docker]\nroot_disk_measure_interval = 1\n").await;
    let image = cloud.busybox_image(&host.conf).await;
    // m1.nano: root_gb = 1.
    let id = boot(&cloud, "diskfull", &image, &name, "42").await;
    // The tenant's own process writes 1.1 GiB (what a shell in it would
    // do); the stop may cut it short.
    let _ = docker_cli(None, &["exec", &format!("nova-{id}"), "dd", "if=/dev/zero", "of=/fill", "bs=1M", "count=1100"]);
    let s = cloud.wait_status(&id, "SHUTOFF", T).await;
    assert_eq!(s["OS-EXT-STS:power_state"], 4, "{s}");
    let faults = faults_in_db(&cloud, &id);
    assert!(
        faults.iter().any(|f| f.contains("over its limit of 1 GiB") && !f.contains("/var/lib")),
        "faults: {faults:?}"
    );
    let actions = cloud.actions(&id).await;
    let stop = actions.iter().find(|a| a["action"] == "stop").unwrap_or_else(|| panic!("no stop action: {actions:?}"));
    assert_eq!(stop["events"][0]["event"], "compute_stop_instance", "{stop}");
    assert_eq!(stop["events"][0]["result"], "Success", "{stop}");
    assert!(host.log_text().contains("root disk over its limit: stopping the instance"));
    cloud.delete_server(&id, T).await;
    host.stop().await;
}

// ---------------------------------------------------------------------------
// Root disk: quota, and how the mode is decided
// ---------------------------------------------------------------------------

/// A private Docker engine whose data root is a loop-mounted filesystem.
struct LoopEngine {
    dir: PathBuf,
    mnt: PathBuf,
    child: Option<std::process::Child>,
}

/// Runs a setup command; its command line and output when it fails.
fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{cmd} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl LoopEngine {
    /// mkfs `fs` on a sparse 4 GiB file, mounts it with `options`, starts
    /// dockerd with `driver` on it.
    async fn start(fs: &str, options: &str, driver: &str) -> Result<LoopEngine, String> {
        let dir = std::env::temp_dir().join(common::unique(&format!("nd-{fs}")));
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let img = dir.join("fs.img").display().to_string();
        let mut e = LoopEngine { dir: dir.clone(), mnt: mnt.clone(), child: None };
        run("truncate", &["-s", "4G", &img])?;
        run(&format!("mkfs.{fs}"), &["-q", "-f", &img])?;
        let mount_opts = if options.is_empty() { "loop".to_string() } else { format!("loop,{options}") };
        run("mount", &["-o", &mount_opts, &img, &mnt.display().to_string()])?;
        std::fs::write(dir.join("daemon.json"), "{}").unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let tag = dir.file_name().unwrap().to_string_lossy().to_string();
        let child = std::process::Command::new("dockerd")
            .arg(format!("--config-file={}", dir.join("daemon.json").display()))
            .arg(format!("--data-root={}", mnt.join("data").display()))
            .arg(format!("--exec-root={}", dir.join("exec").display()))
            .arg(format!("--pidfile={}", dir.join("dockerd.pid").display()))
            .arg(format!("--host=unix://{}", e.socket().display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-masq=false"])
            .args(["--userland-proxy=false", &format!("--storage-driver={driver}")])
            .arg(format!("--containerd-namespace={tag}"))
            .arg(format!("--containerd-plugins-namespace={tag}-plugins"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("dockerd: {e}"))?;
        e.child = Some(child);
        let socket = e.socket();
        wait_for("the private dockerd", Duration::from_secs(60), async || docker_cli(Some(&socket), &["version"]).0)
            .await;
        Ok(e)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// Copies a machine image into this engine (there is no registry).
    fn load(&self, image: &str) {
        let mut save =
            std::process::Command::new("docker").args(["save", image]).stdout(Stdio::piped()).spawn().unwrap();
        let out = std::process::Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("load")
            .stdin(save.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(save.wait().unwrap().success(), "docker save {image}");
        assert!(out.status.success(), "docker load: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for LoopEngine {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        if std::process::Command::new("umount").arg(&self.mnt).status().map(|s| !s.success()).unwrap_or(true) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// On a storage driver that can cap a container (btrfs here: see the module
/// doc for xfs), the flavor's root_gb is the container's size: a tenant's
/// write past it fails inside the instance, which keeps running.
#[tokio::test]
async fn root_disk_quota_on_btrfs_stops_writes_at_root_gb() {
    let cloud = Cloud::get(Release::Newest);
    let engine = LoopEngine::start("btrfs", "", "btrfs").await.unwrap_or_else(|e| panic!("{e}"));
    let name = host_name("quota");
    let extra = format!("[docker]\nhost_url = unix://{}\nroot_disk_measure_interval = 1\n", engine.socket().display());
    let mut host = ComputeHost::start(&cloud, &name, &extra).await;
    let (_, report) = check(&host.conf).await;
    let mode = line(&report, "root disk");
    assert!(mode.starts_with("[ OK ] root disk: quota: storage driver btrfs"), "{report}");

    let image = cloud.busybox_image(&host.conf).await;
    let id = boot(&cloud, "quota", &image, &name, "42").await;
    let private =
        Docker::connect_with_unix(&engine.socket().display().to_string(), 60, bollard::API_DEFAULT_VERSION).unwrap();
    let (ok, out) = docker_cli(
        Some(&engine.socket()),
        &["exec", &format!("nova-{id}"), "sh", "-c", "dd if=/dev/zero of=/fill bs=1M count=1100; ls -l /fill"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("Disk quota exceeded") || out.contains("No space left"), "{out}");
    let written: u64 = out
        .lines()
        .find(|l| l.ends_with("/fill"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(written <= 1 << 30, "{written} bytes written past a 1 GiB quota");
    // The engine was asked for exactly the flavor's root_gb.
    let c = inspect(&private, &id).await.unwrap();
    assert_eq!(c.host_config.unwrap().storage_opt.unwrap()["size"], "1G");
    // The quota did the work: the instance is not stopped.
    assert_eq!(cloud.server(&id).await.unwrap()["status"], "ACTIVE");
    assert!(!host.log_text().contains("root disk over its limit"));
    cloud.delete_server(&id, T).await;
    host.stop().await;
}

/// The mode comes from the engine's driver and its filesystem's mount
/// options, never from a guess: fuse-overlayfs is measured; overlay2 on an
/// xfs without prjquota is measured, and that engine does refuse a size; a
/// quota forced where the engine cannot enforce one fails `check` and
/// `serve`.
#[tokio::test]
async fn root_disk_mode_is_decided_from_the_engine_and_its_mounts() {
    let cloud = Cloud::get(Release::Newest);
    let host = ComputeHost::configure(&cloud, &host_name("diskmode"), "");
    let (ok, report) = check(&host.conf).await;
    assert!(ok, "{report}");
    let mode = line(&report, "root disk");
    assert!(
        mode.starts_with("[ OK ] root disk: measure: storage driver fuse-overlayfs cannot limit"),
        "this machine's engine: {report}"
    );
    assert!(line(&report, "zero-disk flavors").starts_with("[WARN]"), "{report}");

    let xfs = LoopEngine::start("xfs", "", "overlay2").await.unwrap_or_else(|e| panic!("{e}"));
    let conf = host.state.join("xfs.conf");
    let text = std::fs::read_to_string(&host.conf).unwrap();
    std::fs::write(&conf, format!("{text}\n[docker]\nhost_url = unix://{}\n", xfs.socket().display())).unwrap();
    let (_, report) = check(&conf).await;
    let mode = line(&report, "root disk");
    assert!(
        mode.contains("measure: storage driver overlay2 is on xfs at") && mode.contains("mounted without prjquota"),
        "{report}"
    );
    xfs.load("nd-busybox:latest");
    let (created, out) = docker_cli(
        Some(&xfs.socket()),
        &["create", "--network", "none", "--storage-opt", "size=1G", "nd-busybox:latest"],
    );
    assert!(!created && out.contains("storage-opt"), "the engine agrees it cannot: {out}");

    let forced = host.state.join("forced.conf");
    std::fs::write(&forced, format!("{text}\n[docker]\nroot_disk_limit = quota\n")).unwrap();
    let (ok, report) = check(&forced).await;
    assert!(!ok, "{report}");
    assert!(line(&report, "root disk").starts_with("[FAIL] root disk: root_disk_limit = quota, but"), "{report}");
    let out = tokio::time::timeout(
        T,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_nova-docker"))
            .args(["serve", "--config-file"])
            .arg(&forced)
            .output(),
    )
    .await
    .expect("serve refuses at once")
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("root_disk_limit = quota, but"), "{out:?}");
}
