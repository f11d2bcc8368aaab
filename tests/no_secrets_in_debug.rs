//! Debug output of every type that holds a password or a token shows
//! neither: settings (files, environment, auth sections, transport URL), a
//! request and its invocation (admin_password, the context's auth token), a
//! build request and the request context.

use nova_docker::compute::build::build_request;
use nova_docker::config::{Layered, Settings};
use nova_docker::rpc::envelope::{self, Request};
use nova_docker::rpc::{Invocation, RequestContext};
use serde_json::{Value, json};

const PASSWORD: &str = "nd-secret-admin-password-7f3a";
const TOKEN: &str = "nd-secret-user-token-91c2";
const CONF: &str = "[DEFAULT]
transport_url = rabbit://nova:nd-secret-rabbit-pass-1@127.0.0.1:5672/
[placement]
auth_type = password
auth_url = http://keystone:5000/v3
username = placement
password = nd-secret-placement-pass-2
project_name = service
[neutron]
auth_type = v3applicationcredential
auth_url = http://keystone:5000/v3
application_credential_id = nd-app-cred
application_credential_secret = nd-secret-neutron-token-3
[glance]
auth_type = admin_token
endpoint_override = http://127.0.0.1:9292
token = nd-secret-glance-token-4
";

fn assert_no_secret(what: &str, text: &str) {
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, PASSWORD);
    assert!(!text.contains(&encoded), "{what} shows base64 of a secret: {text}");
    for secret in [
        PASSWORD,
        TOKEN,
        "nd-secret-rabbit-pass-1",
        "nd-secret-placement-pass-2",
        "nd-secret-neutron-token-3",
        "nd-secret-glance-token-4",
    ] {
        assert!(!text.contains(secret), "{what} shows {secret}: {text}");
    }
}

#[test]
fn settings_debug_shows_no_password_or_token() {
    let layered = Layered::from_text(CONF).unwrap();
    assert_no_secret("Layered", &format!("{layered:?}"));
    let settings = Settings::from_layered(&layered).unwrap();
    let text = format!("{settings:?}");
    assert!(text.contains("placement") && text.contains("***"), "{text}");
    assert_no_secret("Settings", &text);
    assert_no_secret("Settings (pretty)", &format!("{settings:#?}"));
    assert_no_secret("TransportUrl", &format!("{:?} {}", settings.transport_url, settings.transport_url.brokers[0]));
}

fn build_message() -> serde_json::Map<String, Value> {
    let outer: Value =
        serde_json::from_str(include_str!("fixtures/build_and_run_instance.newest.cast.body.json")).unwrap();
    let mut inner: serde_json::Map<String, Value> =
        serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
    inner["args"]["admin_password"] = json!(PASSWORD);
    // Injected files and user data are the tenant's, often secrets: base64
    // of the password, as Nova sends them.
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, PASSWORD);
    inner["args"]["injected_files"] = json!([["/etc/app.conf", encoded]]);
    inner["args"]["instance"]["nova_object.data"]["user_data"] = json!(encoded);
    inner["args"]["instance"]["nova_object.data"]["metadata"] = json!({"db_password": PASSWORD});
    inner.insert("_context_auth_token".into(), json!(TOKEN));
    inner
}

#[test]
fn request_debug_shows_no_admin_password_or_token() {
    let sealed = envelope::seal(&build_message());
    let request = Request::from_message(envelope::open(&sealed, usize::MAX).unwrap()).unwrap();
    assert_eq!(request.context.auth_token(), Some(TOKEN));
    let text = format!("{request:?}");
    assert!(text.contains("build_and_run_instance") && text.contains("admin_password"), "{text}");
    assert_no_secret("Request", &text);
    let invocation = Invocation {
        context: request.context.clone(),
        method: request.method.clone(),
        args: request.args.clone(),
        version: request.version,
        is_call: false,
    };
    assert_no_secret("Invocation", &format!("{invocation:?}"));
    assert_no_secret("RequestContext", &format!("{:?}", request.context));
    let build = build_request(&request.args);
    assert_eq!(build.admin_password.as_deref(), Some(PASSWORD));
    assert_no_secret("BuildRequest", &format!("{build:?}"));
    assert_no_secret("RequestContext::admin", &format!("{:?}", RequestContext::admin()));
}
