//! The operators' surface: every shell script of the project (shellcheck),
//! the DevStack plugin's functions (against stub DevStack helpers, on the
//! nova.conf the all-in-one writes), the rootwrap filters (with the real
//! oslo.rootwrap, against the `ovs-vsctl` argument lists the service's own
//! plugging code produces) and the all-in-one itself (`devstack/aio.sh up`
//! on the shared `newest` control plane).
//!
//! The all-in-one runs here under a unique host name with `--nic none`:
//! Neutron binds ports only to `ND_NET_HOST`, and `tests/it/network.rs` runs
//! compute services under that name at the same time; two services must
//! never consume one host's queue. Its default, networked configuration is
//! what an operator gets from `sudo devstack/aio.sh up` (README).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nova_docker::config::{AuthSettings, Settings};
use nova_docker::net::{PlugOptions, Vif, plug, unplug};
use serde_json::{Value, json};

use crate::cloud::{Cloud, host_name};
use crate::common::{Release, repo};

/// Runs a command with a deadline; returns (success, stdout, stderr).
fn run(cmd: &mut Command, timeout: Duration) -> (bool, String, String) {
    let shown = format!("{cmd:?}");
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let child = child.unwrap_or_else(|e| panic!("{shown}: {e}"));
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(r) => r.unwrap_or_else(|e| panic!("{shown}: {e}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            panic!("{shown} did not finish within {timeout:?}");
        }
    };
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

// ------------------------------------------------------------ install.sh

/// `tests/env/install.sh` (which `tests/run` and the all-in-one run first)
/// forbids services to start only while it installs: a policy-rc.d it put
/// in place is gone when it exits, one that was there before stays.
#[test]
fn install_leaves_no_policy_rc_d_behind() {
    let dir = std::env::temp_dir().join(crate::common::unique("nd-policy-rc"));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy-rc.d");
    let install = || {
        let (ok, stdout, stderr) = run(
            Command::new(repo().join("tests/env/install.sh")).env("ND_POLICY_RC_D", &policy),
            Duration::from_secs(600),
        );
        assert!(ok, "install.sh failed:\n{stdout}{stderr}");
    };
    install();
    assert!(!policy.exists(), "install.sh left {} behind", policy.display());
    std::fs::write(&policy, "#!/bin/sh\n# the machine's own\nexit 101\n").unwrap();
    install();
    assert!(
        std::fs::read_to_string(&policy).unwrap().contains("the machine's own"),
        "a policy-rc.d it did not create stays"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- shellcheck

/// Shell scripts of the repository: `*.sh`, files with a sh/bash shebang,
/// and sourced files that declare `# shellcheck shell=...`.
fn shell_scripts(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if entry.file_type().unwrap().is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | "node_modules" | "__pycache__")
                && !name.starts_with(".harness")
            {
                shell_scripts(&path, out);
            }
            continue;
        }
        let first = std::fs::read(&path)
            .ok()
            .and_then(|b| b.split(|&c| c == b'\n').next().map(|l| String::from_utf8_lossy(l).to_string()))
            .unwrap_or_default();
        let shebang = first.strip_prefix("#!").map(|s| s.trim().to_string()).unwrap_or_default();
        let interp = shebang.split_whitespace().last().unwrap_or("").rsplit('/').next().unwrap_or("").to_string();
        let is_sh = name.ends_with(".sh")
            || matches!(interp.as_str(), "sh" | "bash" | "dash")
            || first.starts_with("# shellcheck shell=");
        if is_sh {
            out.push(path);
        }
    }
}

#[test]
fn shellcheck_every_script() {
    let root = repo();
    let mut scripts = Vec::new();
    shell_scripts(&root, &mut scripts);
    scripts.sort();
    let rel: Vec<String> = scripts.iter().map(|p| p.strip_prefix(&root).unwrap().display().to_string()).collect();
    for must in [
        "tests/run",
        ".ci/run",
        "tests/env/lib.sh",
        "tests/env/controlplane.sh",
        "devstack/aio.sh",
        "devstack/plugin.sh",
        "devstack/lib/nova-docker",
        "devstack/settings",
        "devstack/override-defaults",
        "rootwrap/ovs-vsctl",
        "tests/operators/devstack-plugin.sh",
    ] {
        assert!(rel.iter().any(|r| r == must), "{must} not found among the shell scripts: {rel:?}");
    }
    let (ok, stdout, stderr) = run(
        Command::new("shellcheck").args(["-x", "-P", "SCRIPTDIR", "--color=never"]).args(&rel).current_dir(&root),
        Duration::from_secs(120),
    );
    assert!(ok, "shellcheck found problems in {rel:?}:\n{stdout}{stderr}");
    println!("shellcheck: {} scripts clean", rel.len());
}

// --------------------------------------------------------- DevStack plugin

/// The sample a DevStack user starts from: what the plugin needs is set,
/// Neutron is the ML2/OVS setup the tests run against, and every
/// nova-docker knob it mentions is read by devstack/settings or
/// override-defaults.
#[test]
fn devstack_local_conf_sample_is_complete() {
    let sample = std::fs::read_to_string(repo().join("devstack/local.conf.sample")).unwrap();
    let settings = std::fs::read_to_string(repo().join("devstack/settings")).unwrap()
        + &std::fs::read_to_string(repo().join("devstack/override-defaults")).unwrap();
    let mut sections = sample.lines().filter(|l| l.starts_with("[[")).collect::<Vec<_>>();
    sections.dedup();
    assert_eq!(sections, ["[[local|localrc]]"], "one localrc section");
    let lines: Vec<&str> = sample.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    for want in [
        "VIRT_DRIVER=docker",
        "enable_plugin nova-docker file:///opt/stack/nova-docker main",
        "Q_AGENT=openvswitch",
        "Q_ML2_PLUGIN_MECHANISM_DRIVERS=openvswitch",
    ] {
        assert!(lines.contains(&want), "{want} missing from local.conf.sample");
    }
    for password in ["ADMIN_PASSWORD=", "DATABASE_PASSWORD=", "RABBIT_PASSWORD=", "SERVICE_PASSWORD="] {
        assert!(lines.iter().any(|l| l.starts_with(password)), "{password} unset: stack.sh would prompt");
    }
    // VIRT_DRIVER before the plugin (override-defaults reads it)
    let pos = |s: &str| lines.iter().position(|l| l.starts_with(s)).unwrap();
    assert!(pos("VIRT_DRIVER=") < pos("enable_plugin"));
    assert!(lines.iter().any(|l| l.starts_with("disable_service") && l.contains("ovn-northd")));
    assert!(lines.iter().any(|l| l.starts_with("enable_service") && l.contains("q-agt")));
    for knob in
        sample.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("NOVA_DOCKER_"))
    {
        assert!(
            settings.contains(&format!("{knob}=")) || settings.contains(&format!("{{{knob}:-")),
            "{knob} in the sample is not read by devstack/settings or override-defaults"
        );
    }
}

/// `devstack/aio.sh conf` for a fresh host name: the all-in-one's nova.conf.
fn aio_nova_conf(host: &str, state: &Path) -> PathBuf {
    let (ok, stdout, stderr) = run(
        Command::new(repo().join("devstack/aio.sh")).arg("conf").env("AIO_HOST", host).env("AIO_STATE", state),
        Duration::from_secs(120),
    );
    assert!(ok, "aio.sh conf failed (is the newest control plane up? tests/env/controlplane.sh newest up):\n{stderr}");
    PathBuf::from(stdout.lines().last().expect("aio.sh conf prints the path").trim())
}

#[test]
fn devstack_plugin_functions() {
    // the control plane's env.sh must exist (aio.sh conf reads its template)
    let _cloud = Cloud::get(Release::Newest);
    let host = host_name("aioconf");
    let state = std::env::temp_dir().join(format!("nd-it-{host}"));
    let work = state.join("devstack");
    let conf = aio_nova_conf(&host, &state);

    // the all-in-one's own file is what the service reads
    let s = Settings::load(std::slice::from_ref(&conf)).expect("aio nova.conf loads");
    assert_eq!(s.host, host);
    assert_eq!(s.docker.socket_path, PathBuf::from("/var/run/docker.sock"));
    assert_eq!(s.neutron_ovs_bridge, "br-int");
    assert_eq!(s.state_path, state.join("state"));
    // Keystone logins, no static token (the all-in-one's cloud has Keystone)
    for (what, auth) in [("placement", &s.placement.auth), ("neutron", &s.neutron.auth)] {
        assert!(matches!(auth, AuthSettings::Keystone(_)), "[{what}] of the all-in-one: {auth:?}");
    }
    assert_eq!(s.glance.auth, AuthSettings::User, "Glance with the user's token, as Nova");

    let (ok, stdout, stderr) = run(
        Command::new(repo().join("tests/operators/devstack-plugin.sh")).arg(&conf).arg(&work),
        // a hang guard: about 80 Python start-ups, slow on a busy machine
        Duration::from_secs(300),
    );
    assert!(ok, "devstack-plugin.sh failed:\n{stdout}{stderr}");

    // n-cpu's command line (the last run_process call) names files that
    // nova-docker loads, with DevStack's nova-cpu.conf first
    let log = std::fs::read_to_string(work.join("run_process.log")).unwrap();
    let line = log.lines().last().expect("a run_process call");
    let fields: Vec<&str> = line.split('|').collect();
    assert_eq!(fields[0], "n-cpu", "{line}");
    let argv: Vec<&str> = fields[1].split_whitespace().collect();
    assert_eq!(&argv[..2], ["/usr/local/bin/nova-docker", "serve"], "{line}");
    let files: Vec<PathBuf> = argv[2..]
        .chunks(2)
        .map(|c| {
            assert_eq!(c[0], "--config-file", "{line}");
            PathBuf::from(c[1])
        })
        .collect();
    assert_eq!(files, [work.join("etc/nova/nova-cpu.conf"), work.join("etc/nova/nova-docker.conf")]);
    let s = Settings::load(&files).expect("nova-cpu.conf + nova-docker.conf load");
    assert_eq!(s.host, host, "nova-cpu.conf is nova.conf's copy");
    assert_eq!(s.metrics_listen.as_deref(), Some("127.0.0.1:9777"));
    assert_eq!(s.docker.socket_path, PathBuf::from("/var/run/docker.sock"));
    assert_eq!(s.neutron_ovs_bridge, "br-int");
    let _ = std::fs::remove_dir_all(&state);
}

// ---------------------------------------------------------------- rootwrap

fn ovs_vif(hybrid: bool) -> Vif {
    let id = uuid::Uuid::new_v4().to_string();
    let b = uuid::Uuid::new_v4().into_bytes();
    let mac = format!("fa:16:3e:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2]);
    let v = json!({
        "id": id, "address": mac, "type": "ovs", "devname": format!("tap{}", &id[..11]),
        "ovs_interfaceid": id, "active": false, "vnic_type": "normal",
        "details": {"port_filter": !hybrid, "ovs_hybrid_plug": hybrid}, "profile": {},
        "qbh_params": null, "qbg_params": null, "preserve_on_delete": false, "meta": {},
        "network": {"id": uuid::Uuid::new_v4().to_string(), "bridge": "br-int", "label": "test",
                    "meta": {"mtu": 1450, "tenant_id": "t"}, "subnets": [{
            "cidr": "10.78.0.0/24", "version": 4, "meta": {}, "dns": [], "routes": [],
            "gateway": {"address": "10.78.0.1", "type": "gateway", "version": 4, "meta": {}},
            "ips": [{"address": "10.78.0.9", "type": "fixed", "version": 4, "meta": {}, "floating_ips": []}]}]}
    });
    serde_json::from_value(v).expect("vif json")
}

/// The ovs-vsctl argument lists of a real plug and unplug of a plain and a
/// hybrid "ovs" port, recorded by a stand-in ovs-vsctl, inside a private
/// network namespace (the "container" is `unshare -n sleep`).
fn recorded_vsctl_calls(dir: &Path) -> Vec<Vec<String>> {
    let log = dir.join("vsctl.log");
    let fake = dir.join("ovs-vsctl");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\nprintf '%s\\037' \"$@\" >> {}\necho >> {}\n", log.display(), log.display()),
    )
    .unwrap();
    Command::new("chmod").arg("755").arg(&fake).status().unwrap();
    let fake2 = fake.clone();
    let t = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET): run as root");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut sleeper = tokio::process::Command::new("unshare")
                .args(["-n", "sleep", "60"])
                .kill_on_drop(true)
                .spawn()
                .expect("unshare -n sleep");
            let pid = sleeper.id().unwrap() as i32;
            // until the child has its own netns (a loaded machine may take
            // a while to exec unshare; plugging before would target ours)
            let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
            let waiting = std::time::Instant::now();
            while std::fs::read_link(format!("/proc/{pid}/ns/net")).ok().is_none_or(|l| l == own) {
                assert!(waiting.elapsed() < Duration::from_secs(60), "unshare -n never made its own netns");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for (i, hybrid) in [false, true].into_iter().enumerate() {
                let vif = ovs_vif(hybrid);
                let opts = PlugOptions {
                    instance_uuid: Some(uuid::Uuid::new_v4().to_string()),
                    ovs_vsctl: fake2.clone(),
                    ..PlugOptions::default()
                };
                plug(&vif, pid, &format!("eth{i}"), &opts)
                    .await
                    .unwrap_or_else(|e| panic!("plug (hybrid {hybrid}): {e}"));
                unplug(&vif, &opts).await.unwrap_or_else(|e| panic!("unplug (hybrid {hybrid}): {e}"));
            }
            let _ = sleeper.kill().await;
        });
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
    std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut argv = vec!["ovs-vsctl".to_string()];
            argv.extend(l.trim_end_matches('\x1f').split('\x1f').map(str::to_string));
            argv
        })
        .collect()
}

const MATCH_PY: &str = r#"
import json, sys
from oslo_rootwrap import wrapper
filters = wrapper.load_filters([sys.argv[1]])
out = []
for argv in json.load(sys.stdin):
    try:
        out.append(wrapper.match_filter(filters, argv, exec_dirs=['/usr/bin', '/usr/sbin']).name)
    except wrapper.NoFilterMatched:
        out.append(None)
print(json.dumps(out))
"#;

/// Which filter (by name) lets each argv through, None if none does.
fn rootwrap_match(filters_dir: &Path, argvs: &[Vec<String>]) -> Vec<Option<String>> {
    let mut child = Command::new(Release::Newest.python())
        .arg("-c")
        .arg(MATCH_PY)
        .arg(filters_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python with oslo.rootwrap (tests/env/install.sh)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(serde_json::to_string(argvs).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "oslo.rootwrap matcher failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    v.into_iter().map(|x| x.as_str().map(str::to_string)).collect()
}

#[test]
fn rootwrap_filters_allow_exactly_what_the_service_runs() {
    if !Path::new("/usr/bin/ovs-vsctl").exists() {
        // rootwrap resolves the filter's command in exec_dirs
        panic!("/usr/bin/ovs-vsctl missing: run tests/env/install.sh (openvswitch-switch)");
    }
    let dir = std::env::temp_dir().join(format!("nd-it-{}", host_name("rootwrap")));
    let filters = dir.join("rootwrap.d");
    std::fs::create_dir_all(&filters).unwrap();
    std::fs::copy(repo().join("rootwrap/nova-docker.filters"), filters.join("nova-docker.filters")).unwrap();

    let calls = recorded_vsctl_calls(&dir);
    let verbs: Vec<&str> =
        calls.iter().filter_map(|a| a.iter().find(|w| w.ends_with("-port")).map(String::as_str)).collect();
    assert!(verbs.contains(&"add-port") && verbs.contains(&"del-port"), "recorded: {calls:?}");
    assert!(calls.iter().any(|a| a.iter().any(|w| w.starts_with("qvo"))), "no hybrid (qvo) port in {calls:?}");

    // everything the service ran is allowed ...
    let got = rootwrap_match(&filters, &calls);
    for (argv, m) in calls.iter().zip(&got) {
        assert!(m.is_some(), "the filters refuse what nova-docker runs: {argv:?}");
    }
    // ... and variations of it are not
    let mut bad: Vec<Vec<String>> = Vec::new();
    for argv in &calls {
        let mut extra = argv.clone();
        extra.extend(["--".into(), "del-br".into(), "br-int".into()]);
        bad.push(extra);
        let mut short = argv.clone();
        short.pop();
        bad.push(short);
        let port_at = argv.iter().rposition(|w| w.starts_with("tap") || w.starts_with("qvo")).unwrap();
        for other in ["eth0", "br-int", "tap../../x", "-tap12345678-12"] {
            let mut a = argv.clone();
            a[port_at] = other.into();
            bad.push(a);
        }
        let mut no_timeout = argv.clone();
        no_timeout.remove(1);
        bad.push(no_timeout);
    }
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    bad.push(s(&["ovs-vsctl", "--timeout=5", "--", "--if-exists", "del-br", "br-int"]));
    bad.push(s(&["ovs-vsctl", "--timeout=5", "--", "set-manager", "ptcp:6640"]));
    bad.push(s(&["ip", "netns", "exec", "x", "sh"]));
    bad.push(s(&[
        "ovs-vsctl",
        "--timeout=5",
        "--",
        "add-port",
        "br-int",
        "tapa1b2c3d4-00",
        "--",
        "set",
        "Interface",
        "tapa1b2c3d4-00",
        "type=internal",
    ]));
    let got = rootwrap_match(&filters, &bad);
    for (argv, m) in bad.iter().zip(&got) {
        assert!(m.is_none(), "filter {m:?} lets through {argv:?}");
    }
    // the wrapper the README and the DevStack plugin install
    let wrapper = std::fs::read_to_string(repo().join("rootwrap/ovs-vsctl")).unwrap();
    assert!(wrapper.contains("exec sudo -n") && wrapper.contains(" ovs-vsctl \"$@\""), "{wrapper}");
    println!("{} recorded ovs-vsctl calls allowed, {} variations refused", calls.len(), bad.len());
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------- all-in-one

/// `aio.sh` with this test's settings; `down` (control plane kept) on drop.
struct Aio {
    host: String,
    state: PathBuf,
}

impl Aio {
    fn cmd(&self, action: &str) -> Command {
        let mut c = Command::new(repo().join("devstack/aio.sh"));
        c.arg(action)
            .env("AIO_HOST", &self.host)
            .env("AIO_SERVER", &self.host)
            .env("AIO_NIC", "none")
            .env("AIO_STATE", &self.state)
            .env("AIO_BINARY", env!("CARGO_BIN_EXE_nova-docker"))
            .env("AIO_TIMEOUT", "180")
            .env("AIO_KEEP_CONTROLPLANE", "1");
        c
    }

    fn run(&self, action: &str, timeout: Duration) -> (bool, String, String) {
        run(&mut self.cmd(action), timeout)
    }

    fn pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.state.join("pids/nova-docker.pid")).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }
}

impl Drop for Aio {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.cmd("down").stdout(Stdio::null()).stderr(Stdio::null()).status();
            if let Ok(out) = Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("label=nova.host={}", self.host)])
                .output()
            {
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("docker").args(["rm", "-f", id]).output();
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.state);
        }
    }
}

/// Runs the openstack CLI commands `aio.sh up` printed, as printed (the
/// admin's, then the tenant's: one shell, in order; `NAME` replaced by a
/// fresh name). Each server created boots on the all-in-one's host, in the
/// project of the user who created it; both are deleted afterwards.
async fn printed_commands_work(cloud: &Cloud, stdout: &str, host: &str) {
    let block: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Use the cloud with the openstack CLI"))
        .take_while(|l| !l.starts_with("Inside the container"))
        .filter(|l| l.starts_with("  "))
        .collect();
    assert!(block.iter().filter(|l| l.contains("token issue")).count() == 2, "{stdout}");
    let names = [crate::common::unique("nd-aio-admin"), crate::common::unique("nd-aio-tenant")];
    let mut created = 0;
    let mut script = String::from("set -euo pipefail\nshopt -s expand_aliases\n");
    for l in &block {
        let mut line = l.trim().to_string();
        if line.ends_with(" NAME") {
            line = format!("{} {}", line.trim_end_matches(" NAME"), names[created]);
            created += 1;
        }
        script.push_str(&format!("echo '+ {}'\n{line}\n", line.replace('\'', "")));
    }
    assert_eq!(created, 2, "two server create commands: {block:?}");
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run(Command::new("bash").arg("-c").arg(&script).env_remove("OS_CLOUD"), Duration::from_secs(300))
    });
    assert!(ok, "the printed commands failed:\n{out}\n{err}");
    for (name, project) in names.iter().zip(["admin", "nd-tenant-a"]) {
        let (_, v) = cloud
            .nova(reqwest::Method::GET, &format!("/servers/detail?all_tenants=1&name=^{name}$"), None, "2.88")
            .await;
        let s = &v["servers"][0];
        let id = s["id"].as_str().unwrap_or_else(|| panic!("no server {name}: {v}\n{out}")).to_string();
        assert_eq!(s["tenant_id"].as_str(), Some(cloud.project_id(project).as_str()), "{s}");
        let s = cloud.wait_status(&id, "ACTIVE", Duration::from_secs(180)).await;
        assert_eq!(s["OS-EXT-SRV-ATTR:host"], host, "{s}");
        cloud.delete_server(&id, Duration::from_secs(180)).await;
    }
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aio_up_boots_a_server_is_idempotent_and_goes_down() {
    let cloud = Cloud::get(Release::Newest);
    let host = host_name("aio");
    let aio = Aio { state: std::env::temp_dir().join(format!("nd-it-{host}")), host: host.clone() };
    let t = Duration::from_secs(600);

    let started = std::time::Instant::now();
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| aio.run("up", t));
    assert!(ok, "aio.sh up failed:\n{stdout}\n{stderr}");
    println!("aio.sh up: {:?}", started.elapsed());
    assert!(stdout.contains("nova-docker all-in-one is up"), "{stdout}");
    assert!(stdout.contains("nova-docker test instance"), "no console output in:\n{stdout}");
    assert!(stdout.contains("openstack console log show"), "{stdout}");
    printed_commands_work(&cloud, &stdout, &host).await;

    let find = |name: String| {
        let cloud = &cloud;
        async move {
            let (_, v) =
                cloud.nova(reqwest::Method::GET, &format!("/servers/detail?name=^{name}$"), None, "2.88").await;
            v["servers"].as_array().cloned().unwrap_or_default()
        }
    };
    let servers = find(host.clone()).await;
    assert_eq!(servers.len(), 1, "{servers:?}");
    let id = servers[0]["id"].as_str().unwrap().to_string();
    assert_eq!(servers[0]["status"], "ACTIVE");
    assert_eq!(servers[0]["OS-EXT-SRV-ATTR:host"], host.as_str());
    let pid = aio.pid().expect("PID file");
    assert!(alive(pid));
    let conf = Settings::load(&[aio.state.join("nova.conf")]).expect("the aio's nova.conf loads");
    assert_eq!(conf.host, host);

    // again: nothing new, nothing restarted
    let started = std::time::Instant::now();
    let (ok, stdout2, stderr) = tokio::task::block_in_place(|| aio.run("up", t));
    assert!(ok, "second aio.sh up failed:\n{stdout2}\n{stderr}");
    println!("aio.sh up again: {:?}", started.elapsed());
    assert!(stderr.contains("already running"), "{stderr}");
    assert_eq!(aio.pid(), Some(pid), "the service was restarted");
    let again = find(host.clone()).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0]["id"].as_str(), Some(id.as_str()), "the server was recreated");

    let (ok, stdout, stderr) = tokio::task::block_in_place(|| aio.run("status", Duration::from_secs(120)));
    assert!(ok, "aio.sh status:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ACTIVE"), "{stdout}");

    let (ok, stdout, stderr) = tokio::task::block_in_place(|| aio.run("down", t));
    assert!(ok, "aio.sh down failed:\n{stdout}\n{stderr}");
    assert!(cloud.server(&id).await.is_none(), "server {id} still there after down");
    assert!(!alive(pid), "nova-docker (pid {pid}) still running after down");
    let out =
        Command::new("docker").args(["ps", "-aq", "--filter", &format!("label=nova.host={host}")]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty(), "containers of {host} left behind");
    let (ok, stdout, _) = tokio::task::block_in_place(|| aio.run("status", Duration::from_secs(120)));
    assert!(!ok && stdout.contains("STOPPED"), "{stdout}");
}
