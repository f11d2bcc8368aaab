//! The test environment's own remedies, checked: what the suite's control
//! planes need to stay reliable under its load is proven like the rest.

use std::process::Command;

use crate::common::{repo, unique};

/// Zed's services run under eventlet: a writer waiting for SQLite's lock
/// must let the lock's holder (another greenthread of the same process) run
/// and commit, not freeze the process for the busy timeout
/// (`tests/env/pylib/sitecustomize.py`).
#[test]
fn sqlite_lock_waits_let_eventlet_run() {
    let pylib = repo().join("tests/env/pylib");
    let db = std::env::temp_dir().join(format!("{}.db", unique("nd-green")));
    let out = Command::new("/usr/bin/python3")
        .arg(pylib.join("nd_sqlite_green_check.py"))
        .arg(&db)
        .env("PYTHONPATH", &pylib)
        // Short, so that the unremedied freeze fails in seconds.
        .env("ND_SQLITE_BUSY_TIMEOUT_MS", "5000")
        .output()
        .expect("python3 runs");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("the second writer waited"), "{text}");
}
