//! `etc/nova-docker.conf.sample` is generated from the code's option table;
//! this test fails when it is stale (regenerate with
//! `cargo run -- config sample > etc/nova-docker.conf.sample`).

#[test]
fn sample_config_is_up_to_date() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/nova-docker.conf.sample");
    let committed = std::fs::read_to_string(&path).expect("etc/nova-docker.conf.sample exists");
    let generated = nova_docker::config::options::sample();
    assert!(
        committed == generated,
        "etc/nova-docker.conf.sample is stale: run `cargo run -- config sample > etc/nova-docker.conf.sample`"
    );
}
