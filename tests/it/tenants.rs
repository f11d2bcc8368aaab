//! Hostile tenants' images through the real cloud: each test is one attack
//! a tenant can make with the bytes of a Glance image, run as the tenant
//! would (upload to Glance, boot through nova-api), against a real host,
//! Docker and Glance. Named after the threat they defend against.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::{self, Release};

const T: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Docker and archives
// ---------------------------------------------------------------------------

fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker").args(args).output().expect("docker runs");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The ID of a local image, if it exists.
fn image_id(reference: &str) -> Option<String> {
    let out = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", reference])
        .output()
        .expect("docker runs");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn docker_save(reference: &str) -> Vec<u8> {
    let out = std::process::Command::new("docker").args(["save", reference]).output().expect("docker save");
    assert!(out.status.success(), "docker save: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The regular files of a `docker save` archive, in order (symlinks as the
/// data of their target: enough for the engine's own archives).
fn files(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut a = tar::Archive::new(archive);
    for e in a.entries().expect("tar") {
        let mut e = e.expect("entry");
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = String::from_utf8_lossy(&e.path_bytes()).to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("data");
        out.push((name, data));
    }
    out
}

/// A tar of these files.
fn archive(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).expect("append");
    }
    b.into_inner().expect("tar")
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A `docker save` archive taken apart: config and layers, to put back
/// together with changes.
struct Saved {
    files: Vec<(String, Vec<u8>)>,
    manifest: Value,
}

impl Saved {
    fn of(reference: &str) -> Saved {
        let files = files(&docker_save(reference));
        let manifest = serde_json::from_slice(&files.iter().find(|(n, _)| n == "manifest.json").unwrap().1).unwrap();
        Saved { files, manifest }
    }

    fn config(&self) -> Value {
        let name = self.manifest[0]["Config"].as_str().unwrap();
        serde_json::from_slice(&self.files.iter().find(|(n, _)| n == name).unwrap().1).unwrap()
    }

    /// Rebuilt with this config (named as `config_name`, or after its
    /// digest), extra layers (tar bytes, diff ID) and tags.
    fn rebuilt(
        &self,
        config: &Value,
        config_name: Option<&str>,
        extra: &[(Vec<u8>, String)],
        tags: &[&str],
    ) -> Vec<u8> {
        let mut config = config.clone();
        let mut layers: Vec<String> =
            self.manifest[0]["Layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect();
        let mut files: Vec<(String, Vec<u8>)> = self
            .files
            .iter()
            .filter(|(n, _)| {
                n != "manifest.json" && n != "repositories" && Some(n.as_str()) != self.manifest[0]["Config"].as_str()
            })
            .cloned()
            .collect();
        for (i, (bytes, diff_id)) in extra.iter().enumerate() {
            let path = format!("extra{i}/layer.tar");
            files.push((path.clone(), bytes.clone()));
            layers.push(path);
            config["rootfs"]["diff_ids"].as_array_mut().unwrap().push(json!(diff_id));
        }
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let name = config_name.map(str::to_string).unwrap_or_else(|| format!("{}.json", sha256_hex(&config_bytes)));
        files.push((name.clone(), config_bytes));
        files.push((
            "manifest.json".into(),
            serde_json::to_vec(&json!([{"Config": name, "RepoTags": tags, "Layers": layers}])).unwrap(),
        ));
        archive(&files)
    }
}

// ---------------------------------------------------------------------------
// The cloud
// ---------------------------------------------------------------------------

async fn exec(container: &str, cmd: &str) -> String {
    let out = tokio::process::Command::new("docker").args(["exec", container, "sh", "-c", cmd]).output().await.unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Boots a server and waits for ACTIVE or ERROR; the server document.
async fn boot(cloud: &Cloud, host: &str, image: &str) -> (String, Value) {
    let id = cloud.create_server(&common::unique("nd-tenant"), image, host, "42").await;
    let started = std::time::Instant::now();
    loop {
        let s = cloud.server(&id).await.expect("server");
        if (s["status"] == "ACTIVE" || s["status"] == "ERROR") && s["OS-EXT-STS:task_state"].is_null() {
            return (id, s);
        }
        assert!(started.elapsed() < T, "server {id} neither ACTIVE nor ERROR: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Boots and expects ERROR with a fault saying `why`.
async fn boot_refused(cloud: &Cloud, host: &str, image: &str, why: &str) -> String {
    let (id, s) = boot(cloud, host, image).await;
    assert_eq!(s["status"], "ERROR", "a hostile image booted: {s}");
    let message = s["fault"]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains(why), "fault {message:?} does not say {why:?}");
    cloud.delete_server(&id, T).await;
    message
}

async fn upload(cloud: &Cloud, data: Vec<u8>) -> String {
    cloud.raw_glance_image(&common::unique("nd-hostile"), "docker", data).await
}

/// A victim: a public image of another tenant with its own /marker.
async fn victim(cloud: &Cloud, host: &ComputeHost) -> (String, String) {
    let tag = format!("nd-victim:{}", common::unique("v"));
    let marker = common::unique("victim");
    common::build_marked(&tag, &marker);
    let glance = cloud.docker_image_in_glance(&host.conf, &tag, &common::unique("nd-victim"), &[]).await;
    docker(&["rmi", &tag]);
    (glance, marker)
}

// ---------------------------------------------------------------------------
// The attacks
// ---------------------------------------------------------------------------

/// An archive tagged with another Glance image's references (and the
/// host's own images') changes nothing but its own image: the victim's
/// servers still run the victim's image, and local tags stay where they were.
#[tokio::test]
async fn archive_tags_cannot_change_what_another_tenant_boots() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("tags");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let (victim, marker) = victim(&cloud, &host).await;
    let (first, s) = boot(&cloud, &name, &victim).await;
    assert_eq!(s["status"], "ACTIVE", "{s}");
    assert_eq!(exec(&format!("nova-{first}"), "cat /marker").await, marker);
    let victim_docker = docker(&["inspect", "--format", "{{.Image}}", &format!("nova-{first}")]);

    let attacker_tag = format!("nd-attacker:{}", common::unique("a"));
    common::build_marked(&attacker_tag, "attacker");
    let saved = Saved::of(&attacker_tag);
    docker(&["rmi", &attacker_tag]);
    let hex = victim_docker.trim_start_matches("sha256:");
    let tags = [
        format!("glance/{victim}:latest"),
        format!("glance/{victim}:{hex}"),
        "nd-busybox:latest".to_string(),
        "busybox:latest".to_string(),
    ];
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let hostile = upload(&cloud, saved.rebuilt(&saved.config(), None, &[], &tags)).await;
    let busybox_before = image_id("nd-busybox:latest");

    let (attack, s) = boot(&cloud, &name, &hostile).await;
    assert_eq!(s["status"], "ACTIVE", "{s}");
    assert_eq!(exec(&format!("nova-{attack}"), "cat /marker").await, "attacker");
    assert_eq!(image_id("nd-busybox:latest"), busybox_before, "the archive moved a local tag");
    assert_eq!(image_id("busybox:latest"), None, "the archive created a local tag");
    // The victim's next server runs the victim's image.
    let (second, s) = boot(&cloud, &name, &victim).await;
    assert_eq!(s["status"], "ACTIVE", "{s}");
    assert_eq!(exec(&format!("nova-{second}"), "cat /marker").await, marker, "the victim booted the attacker's image");
    for id in [first, attack, second] {
        cloud.delete_server(&id, T).await;
    }
    host.stop().await;
}

/// A config file named after an image already on the host (holding other
/// content) does not make the host boot that image: the name must match
/// the content.
#[tokio::test]
async fn a_config_named_after_another_image_cannot_boot_it() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("cfgname");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let (victim, _) = victim(&cloud, &host).await;
    let (first, s) = boot(&cloud, &name, &victim).await;
    assert_eq!(s["status"], "ACTIVE", "{s}");
    let victim_docker = docker(&["inspect", "--format", "{{.Image}}", &format!("nova-{first}")]);

    let saved = Saved::of("nd-busybox:latest");
    let lying = format!("{}.json", victim_docker.trim_start_matches("sha256:"));
    let hostile = upload(&cloud, saved.rebuilt(&saved.config(), Some(&lying), &[], &[])).await;
    boot_refused(&cloud, &name, &hostile, "named after a digest it does not have").await;
    cloud.delete_server(&first, T).await;
    host.stop().await;
}

/// gzip-compressed archives boot (Docker loads them, so users upload them);
/// the other compressions Docker would run are refused before Docker sees a
/// byte of them.
#[tokio::test]
async fn compressed_archives_boot_only_as_gzip() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("gz");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let plain = docker_save("nd-busybox:latest");
    let gz = upload(&cloud, gzip(&plain)).await;
    let (id, s) = boot(&cloud, &name, &gz).await;
    assert_eq!(s["status"], "ACTIVE", "{s}");
    cloud.delete_server(&id, T).await;
    for (magic, format) in [
        (&b"BZh91AY&SY"[..], "bzip2"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0][..], "xz"),
        (&[0x28, 0xb5, 0x2f, 0xfd][..], "zstd"),
        (&[0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0][..], "zstd"),
    ] {
        let mut data = magic.to_vec();
        data.extend_from_slice(&plain[..4096]);
        let image = upload(&cloud, data).await;
        boot_refused(&cloud, &name, &image, &format!("{format}-compressed")).await;
    }
    host.stop().await;
}

/// Layers that unpack to far more than they weigh: a gzip layer of zeros
/// beyond the host's limit, a GNU sparse entry. Refused with a fault, the
/// engine never asked to unpack them.
#[tokio::test]
async fn layers_cannot_unpack_beyond_the_hosts_limit() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("bomb");
    let mut host = ComputeHost::start(&cloud, &name, "[docker]\nmax_image_unpacked_mb = 32\n").await;
    let saved = Saved::of("nd-busybox:latest");

    let mut zeros = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(64 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    zeros.append_data(&mut h, "zeros", std::io::repeat(0).take(64 << 20)).unwrap();
    let zeros = zeros.into_inner().unwrap();
    let diff_id = format!("sha256:{}", sha256_hex(&zeros));
    let bomb = upload(&cloud, saved.rebuilt(&saved.config(), None, &[(gzip(&zeros), diff_id)], &[])).await;
    boot_refused(&cloud, &name, &bomb, "larger than this host accepts").await;

    let mut sparse = archive(&[("holes".to_string(), b"x".to_vec())]);
    sparse[156] = b'S';
    let mut header = tar::Header::new_old();
    header.as_mut_bytes().copy_from_slice(&sparse[..512]);
    header.set_cksum();
    sparse[..512].copy_from_slice(header.as_bytes());
    let diff_id = format!("sha256:{}", sha256_hex(&sparse));
    let image = upload(&cloud, saved.rebuilt(&saved.config(), None, &[(sparse, diff_id)], &[])).await;
    boot_refused(&cloud, &name, &image, "sparse").await;
    host.stop().await;
}

/// Data that is not what Glance stored (here: changed on Glance's disk) is
/// refused by its hash before Docker commits anything.
#[tokio::test]
async fn image_data_that_does_not_match_glances_hash_is_never_loaded() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("hash");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let data = docker_save("nd-busybox:latest");
    let image = upload(&cloud, data.clone()).await;
    let stored = std::path::Path::new(cloud.var("ND_STATE")).join("glance/images").join(&image);
    let mut bytes = std::fs::read(&stored).expect("Glance's file store holds the image");
    // A byte in the middle of the busybox binary: the tar stays valid.
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&stored, &bytes).unwrap();
    let before = image_ids();
    boot_refused(&cloud, &name, &image, "does not have the image's recorded sha512 hash").await;
    let new: Vec<String> = image_ids().into_iter().filter(|i| !before.contains(i)).collect();
    assert!(new.is_empty(), "Docker committed images from corrupt data: {new:?}");
    host.stop().await;
}

fn image_ids() -> Vec<String> {
    docker(&["images", "-aq", "--no-trunc"]).lines().map(str::to_string).collect()
}

/// Volumes an image declares never become directories on the host: they
/// are part of the instance's root disk (and go with it).
#[tokio::test]
async fn image_volumes_never_become_host_directories() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("vol");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.docker_image_in_glance(&host.conf, "nd-busybox:volume", "nd-busybox-volume", &[]).await;
    let volumes_before = docker(&["volume", "ls", "-q"]);
    let (id, s) = boot(&cloud, &name, &image).await;
    assert_eq!(s["status"], "ACTIVE", "{s}");
    let c = format!("nova-{id}");
    let mounts = docker(&["inspect", "--format", "{{json .Mounts}}", &c]);
    let mounts: Vec<Value> = serde_json::from_str(&mounts).unwrap();
    assert!(mounts.iter().all(|m| m["Type"] != "volume"), "{mounts:?}");
    assert_eq!(docker(&["volume", "ls", "-q"]), volumes_before, "a volume was created");
    // /data is a directory of the root disk: written, kept across a stop.
    exec(&c, "echo kept > /data/file").await;
    assert_eq!(cloud.action(&id, json!({"os-stop": null})).await.0, 202);
    cloud.wait_status(&id, "SHUTOFF", T).await;
    assert_eq!(cloud.action(&id, json!({"os-start": null})).await.0, 202);
    cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(exec(&c, "cat /data/file").await, "kept");
    cloud.delete_server(&id, T).await;
    host.stop().await;
}

/// A reference of a Glance image moved to another image (by anything on
/// the host) is never booted: the host sees the reference no longer names
/// the content and loads the image from Glance again.
#[tokio::test]
async fn a_moved_image_reference_is_never_booted() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("moved");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let (victim, marker) = victim(&cloud, &host).await;
    let (first, s) = boot(&cloud, &name, &victim).await;
    assert_eq!(s["status"], "ACTIVE", "{s}");
    let refs = docker(&["images", &format!("glance/{victim}"), "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(!refs.is_empty());
    for r in refs.lines() {
        docker(&["tag", "nd-busybox:chatty", r]);
    }
    let (second, s) = boot(&cloud, &name, &victim).await;
    assert_eq!(s["status"], "ACTIVE", "{s}");
    assert_eq!(
        exec(&format!("nova-{second}"), "cat /marker").await,
        marker,
        "booted the image the reference was moved to"
    );
    for id in [first, second] {
        cloud.delete_server(&id, T).await;
    }
    host.stop().await;
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

/// An archive whose names fill memory in a host that keeps them all:
/// `entries` directories with distinct 16-level names of about 4 KiB.
fn deep_names(entries: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries * 5632);
    for i in 0..entries {
        let name: String = (0..16).map(|level| format!("{i:08}-{level:02}-{}/", "n".repeat(240))).collect();
        let record = {
            let body = 4 + 1 + name.len() + 2; // "path" '=' name '\n' ' '
            let mut len = body + 1;
            while len != body + len.to_string().len() {
                len = body + len.to_string().len();
            }
            format!("{len} path={name}\n").into_bytes()
        };
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::new(b'x'));
        h.set_size(record.len() as u64);
        h.set_mode(0o644);
        h.set_path("PaxHeaders/x").unwrap();
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&record);
        out.resize(out.len().div_ceil(512) * 512, 0);
        let mut d = tar::Header::new_ustar();
        d.set_entry_type(tar::EntryType::Directory);
        d.set_size(0);
        d.set_mode(0o755);
        d.set_path("d/").unwrap();
        d.set_cksum();
        out.extend_from_slice(d.as_bytes());
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

/// An archive of many JSON objects waiting for a manifest that never comes.
fn held_json(count: usize) -> Vec<u8> {
    let doc = {
        let mut d = b"{\"pad\":\"".to_vec();
        d.extend(std::iter::repeat_n(b'x', (1 << 20) - 16));
        d.extend_from_slice(b"\"}");
        d
    };
    archive(&(0..count).map(|i| (format!("blobs/sha256/{i:064x}"), doc.clone())).collect::<Vec<_>>())
}

/// A gzip bomb: half a megabyte that inflates into two 48 MiB files of
/// zeros (gzip members of 1 MiB each, concatenated), over a 64 MiB limit.
fn outer_bomb() -> Vec<u8> {
    let zeros = gzip(&vec![0u8; 1 << 20]);
    let mut out = Vec::new();
    for file in ["a/layer.tar", "b/layer.tar"] {
        let mut h = tar::Header::new_gnu();
        h.set_size(48 << 20);
        h.set_mode(0o644);
        h.set_path(file).unwrap();
        h.set_cksum();
        out.extend(gzip(h.as_bytes()));
        for _ in 0..48 {
            out.extend_from_slice(&zeros);
        }
    }
    out.extend(gzip(&[0; 1024]));
    out
}

/// VmHWM (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Ten hostile archives loading at once (names that would fill a name
/// table, JSON held for a manifest that never comes, an outer gzip bomb)
/// keep the service under 200 MiB; each fails with a fault; the host then
/// boots a good image.
#[tokio::test]
async fn ten_hostile_archives_at_once_keep_the_service_under_200_mib() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("mem");
    let mut host = ComputeHost::start(&cloud, &name, "[docker]\nmax_image_unpacked_mb = 64\n").await;
    let kinds: Vec<(Vec<u8>, &str)> = vec![
        (deep_names(12_000), "names take more than"),
        (held_json(12), "bytes of JSON documents before its manifest"),
        (outer_bomb(), "larger than this host accepts"),
    ];
    let mut images = Vec::new();
    for i in 0..10 {
        let (data, why) = &kinds[i % kinds.len()];
        images.push((upload(&cloud, data.clone()).await, *why));
    }
    let mut ids = HashMap::new();
    for (image, why) in &images {
        ids.insert(cloud.create_server(&common::unique("nd-mem"), image, &name, "42").await, *why);
    }
    for (id, why) in &ids {
        let s = cloud.wait_status(id, "ERROR", T).await;
        let message = s["fault"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{id}: fault {message:?} does not say {why:?}");
    }
    let peak = peak_rss_kib(host.pid().expect("running"));
    assert!(peak < 200 * 1024, "the service peaked at {} MiB", peak / 1024);
    let good = cloud.busybox_image(&host.conf).await;
    let (ok, s) = boot(&cloud, &name, &good).await;
    assert_eq!(s["status"], "ACTIVE", "{s}");
    for id in ids.keys().chain([&ok]) {
        cloud.delete_server(id, T).await;
    }
    eprintln!("peak RSS with ten hostile archives loading: {} MiB", peak / 1024);
    host.stop().await;
}
