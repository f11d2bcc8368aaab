//! Every configuration option this service reads, with its default and help.
//!
//! This table is the single source of truth: `Settings` reads options through
//! it and `nova-docker config sample` prints `etc/nova-docker.conf.sample`
//! from it, so the documentation cannot drift from the code.

/// How an option's text is interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain text.
    Str,
    /// A string that is never logged or printed (passwords, tokens, URLs with credentials).
    Secret,
    /// A whole number.
    Int,
    /// A decimal number.
    Float,
    /// true/1/yes/on or false/0/no/off, any case.
    Bool,
    /// Comma-separated list.
    List,
}

/// One option: where it lives, what it means, and its default.
#[derive(Debug)]
pub struct Opt {
    /// The `[group]` it is read from (`DEFAULT` for the top).
    pub group: &'static str,
    /// Its name within the group, as written in nova.conf.
    pub name: &'static str,
    /// How its text is parsed.
    pub kind: Kind,
    /// The default as it would be written in the file; `None` means unset.
    pub default: Option<&'static str>,
    /// Shown in the sample when the default is computed at run time.
    pub dynamic_default: Option<&'static str>,
    /// The only values accepted, when the option is a choice (empty: any).
    /// The parser refuses any other value and the sample lists them.
    pub choices: &'static [&'static str],
    /// What it does, for the operator (printed in the sample).
    pub help: &'static str,
}

macro_rules! opts {
    ($( $id:ident: $group:literal $name:literal $kind:ident $([$($choice:literal),+])? = $default:expr, $dynamic:expr, $help:literal; )*) => {
        $(
            #[doc = $help]
            pub const $id: Opt = Opt {
                group: $group, name: $name, kind: Kind::$kind,
                default: $default, dynamic_default: $dynamic, help: $help,
                choices: &[$($($choice),+)?],
            };
        )*
        /// All options in sample order.
        pub const ALL: &[Opt] = &[$($id),*];
    };
}

opts! {
    // [DEFAULT]
    HOST: "DEFAULT" "host" Str = None, Some("the machine's hostname"),
        "Name of this compute host. It names the RPC queue compute.<host> and the Service and ComputeNode records, so it must match what Nova expects.";
    TRANSPORT_URL: "DEFAULT" "transport_url" Secret = None, None,
        "RabbitMQ URL, rabbit://user:password@host:port[,user:password@host2:port]/vhost. Several hosts mean failover.";
    CONTROL_EXCHANGE: "DEFAULT" "control_exchange" Str = Some("nova"), None,
        "AMQP exchange that carries Nova's RPC (Nova sets it to nova).";
    RPC_RESPONSE_TIMEOUT: "DEFAULT" "rpc_response_timeout" Int = Some("60"), None,
        "Seconds to wait for a reply to an RPC call (conductor calls).";
    EXECUTOR_THREAD_POOL_SIZE: "DEFAULT" "executor_thread_pool_size" Int = Some("64"), None,
        "How many RPC requests are handled at once (oslo.messaging's worker pool size).";
    REPORT_INTERVAL: "DEFAULT" "report_interval" Int = Some("10"), None,
        "Seconds between service heartbeats (Service.report_count updates through the conductor).";
    MY_IP: "DEFAULT" "my_ip" Str = None, Some("the address of the interface holding the default route"),
        "IP address of this host, reported as the compute node's host_ip.";
    STATE_PATH: "DEFAULT" "state_path" Str = Some("/var/lib/nova"), None,
        "Directory for persistent state; holds compute_id, the node identity kept across restarts.";
    INSTANCES_PATH: "DEFAULT" "instances_path" Str = None, Some("$state_path/instances"),
        "Directory of per-instance files: each instance's generated /etc/resolv.conf and /etc/hosts.";
    DEBUG: "DEFAULT" "debug" Bool = Some("false"), None,
        "Log at debug level. Re-read on SIGHUP.";
    LOG_FILE: "DEFAULT" "log_file" Str = None, None,
        "Append the log to this file (relative to log_dir when that is set); --log-file overrides it. Unset, and without log_dir or use_journal: stderr.";
    LOG_DIR: "DEFAULT" "log_dir" Str = None, None,
        "Directory of log_file; with log_dir alone the log is <log_dir>/nova-docker.log (as oslo.log).";
    USE_JSON: "DEFAULT" "use_json" Bool = Some("false"), None,
        "Log one JSON object per line, with oslo.log's JSONFormatter field names.";
    USE_JOURNAL: "DEFAULT" "use_journal" Bool = Some("false"), None,
        "Send the log to journald's native socket (/run/systemd/journal/socket) with oslo.log's structured fields; the service refuses to start when that socket cannot be used.";
    MAX_CONCURRENT_BUILDS: "DEFAULT" "max_concurrent_builds" Int = Some("10"), None,
        "Maximum number of instance builds run at once on this host (0 means unlimited).";
    MAX_CONCURRENT_SNAPSHOTS: "DEFAULT" "max_concurrent_snapshots" Int = Some("5"), None,
        "Maximum number of snapshots and backups run at once on this host (0 means unlimited).";
    RESERVED_HOST_CPUS: "DEFAULT" "reserved_host_cpus" Int = Some("0"), None,
        "Host CPUs kept from instances (placement VCPU reserved).";
    RESERVED_HOST_MEMORY_MB: "DEFAULT" "reserved_host_memory_mb" Int = Some("512"), None,
        "Host memory in MiB kept from instances (placement MEMORY_MB reserved).";
    RESERVED_HOST_DISK_MB: "DEFAULT" "reserved_host_disk_mb" Int = Some("0"), None,
        "Host disk in MiB kept from instances (placement DISK_GB reserved, rounded up).";
    CPU_ALLOCATION_RATIO: "DEFAULT" "cpu_allocation_ratio" Float = None, None,
        "VCPU overcommit ratio. Unset: keep placement's value, else initial_cpu_allocation_ratio.";
    RAM_ALLOCATION_RATIO: "DEFAULT" "ram_allocation_ratio" Float = None, None,
        "MEMORY_MB overcommit ratio. Unset: keep placement's value, else initial_ram_allocation_ratio.";
    DISK_ALLOCATION_RATIO: "DEFAULT" "disk_allocation_ratio" Float = None, None,
        "DISK_GB overcommit ratio. Unset: keep placement's value, else initial_disk_allocation_ratio.";
    INITIAL_CPU_ALLOCATION_RATIO: "DEFAULT" "initial_cpu_allocation_ratio" Float = None, Some("16.0 with Zed, 4.0 with newer releases, as Nova"),
        "VCPU ratio used when the provider is first created.";
    INITIAL_RAM_ALLOCATION_RATIO: "DEFAULT" "initial_ram_allocation_ratio" Float = None, Some("1.5 with Zed, 1.0 with newer releases, as Nova"),
        "MEMORY_MB ratio used when the provider is first created.";
    INITIAL_DISK_ALLOCATION_RATIO: "DEFAULT" "initial_disk_allocation_ratio" Float = Some("1.0"), None,
        "DISK_GB ratio used when the provider is first created.";
    UPDATE_RESOURCES_INTERVAL: "DEFAULT" "update_resources_interval" Int = Some("60"), None,
        "Seconds between refreshes of the compute node's resources and placement inventory.";
    SYNC_POWER_STATE_INTERVAL: "DEFAULT" "sync_power_state_interval" Int = Some("600"), None,
        "Seconds between full power-state reconciliations with Docker (Docker events update Nova in between). Negative disables.";
    FORCE_CONFIG_DRIVE: "DEFAULT" "force_config_drive" Bool = Some("false"), None,
        "Give every new instance a config drive (read-only at /mnt/config in its container), as if its server had asked for one.";
    API_DHCP_DOMAIN: "api" "dhcp_domain" Str = Some("novalocal"), None,
        "Domain appended to the instance's hostname in its config drive's meta_data.json (empty: none), as Nova's metadata does.";
    SHUTDOWN_TIMEOUT: "DEFAULT" "shutdown_timeout" Int = Some("60"), None,
        "Seconds a container gets to stop after SIGTERM before it is killed (stop, soft reboot, delete).";
    RUNNING_DELETED_INSTANCE_ACTION: "DEFAULT" "running_deleted_instance_action" Str ["noop", "log", "shutdown", "reap"] = Some("reap"), None,
        "What to do with containers of this host whose instance is deleted or unknown: noop, log, shutdown or reap.";
    RUNNING_DELETED_INSTANCE_POLL_INTERVAL: "DEFAULT" "running_deleted_instance_poll_interval" Int = Some("1800"), None,
        "Seconds between checks for containers whose instance is gone (0 disables).";
    VIF_PLUGGING_TIMEOUT: "DEFAULT" "vif_plugging_timeout" Int = Some("300"), None,
        "Seconds to wait for Neutron's network-vif-plugged event (0 does not wait).";
    VIF_PLUGGING_IS_FATAL: "DEFAULT" "vif_plugging_is_fatal" Bool = Some("true"), None,
        "Fail the build when network-vif-plugged does not arrive in time.";
    RESUME_GUESTS_STATE_ON_HOST_BOOT: "DEFAULT" "resume_guests_state_on_host_boot" Bool = Some("false"), None,
        "Start, at service start-up, the containers of instances Nova believes running.";
    RECLAIM_INSTANCE_INTERVAL: "DEFAULT" "reclaim_instance_interval" Int = Some("0"), None,
        "Seconds after which a soft-deleted instance of this host is deleted for good (checked every as many seconds). Above 0, nova-api (with the same option in its nova.conf) soft-deletes servers, which can be restored meanwhile; 0: servers are deleted at once and nothing is reclaimed here.";
    RESIZE_CONFIRM_WINDOW: "DEFAULT" "resize_confirm_window" Int = Some("0"), None,
        "Seconds after which a resize or cold migration that landed on this host and was neither confirmed nor reverted is confirmed automatically (checked every minute, or every as many seconds when fewer), as Nova's _poll_unconfirmed_resizes does; 0: never.";
    SERVICE_DOWN_TIME: "DEFAULT" "service_down_time" Int = Some("60"), None,
        "Seconds since its last heartbeat after which another compute service counts as down (an automatic resize confirmation waits for the source to be up).";
    GRACEFUL_SHUTDOWN_TIMEOUT: "DEFAULT" "graceful_shutdown_timeout" Int = Some("60"), None,
        "Seconds in-flight requests get to finish after SIGTERM before the service exits anyway.";
    WAIT_FOR_VIF_PLUGGED_EVENT_DURING_HARD_REBOOT: "workarounds" "wait_for_vif_plugged_event_during_hard_reboot" List
        ["normal", "direct", "macvtap", "baremetal", "direct-physical", "virtio-forwarder", "smart-nic", "vdpa",
         "accelerator-direct", "accelerator-direct-physical", "remote-managed"] = Some(""), None,
        "VNIC types whose ports a hard reboot waits for, as Nova's option: the container is killed, the host waits for Neutron's network-vif-unplugged (the L2 agent saw the device go), starts it, plugs the ports and waits for network-vif-plugged (vif_plugging_timeout, vif_plugging_is_fatal). Set it to normal on linuxbridge or OVS: otherwise the agent can miss a device that goes and comes back within one polling pass and leave the port without its security-group filter. Empty: no wait.";

    // [oslo_messaging_rabbit]
    HEARTBEAT_TIMEOUT_THRESHOLD: "oslo_messaging_rabbit" "heartbeat_timeout_threshold" Int = Some("60"), None,
        "AMQP heartbeat timeout in seconds negotiated with the broker (0 disables heartbeats).";
    AMQP_DURABLE_QUEUES: "oslo_messaging_rabbit" "amqp_durable_queues" Bool = Some("false"), None,
        "Declare the exchange and topic queues durable (must match the rest of the deployment).";
    AMQP_AUTO_DELETE: "oslo_messaging_rabbit" "amqp_auto_delete" Bool = Some("false"), None,
        "Declare the exchange and topic queues auto-delete (must match the rest of the deployment).";
    RABBIT_HA_QUEUES: "oslo_messaging_rabbit" "rabbit_ha_queues" Bool = Some("false"), None,
        "Add x-ha-policy: all to declared queues (classic mirrored queues).";
    RABBIT_QUORUM_QUEUE: "oslo_messaging_rabbit" "rabbit_quorum_queue" Bool = Some("false"), None,
        "Declare topic queues as quorum queues (implies durable).";
    RABBIT_QUORUM_DELIVERY_LIMIT: "oslo_messaging_rabbit" "rabbit_quorum_delivery_limit" Int = Some("0"), None,
        "x-delivery-limit of quorum queues (0: not set).";
    RABBIT_QUORUM_MAX_MEMORY_LENGTH: "oslo_messaging_rabbit" "rabbit_quorum_max_memory_length" Int = Some("0"), None,
        "x-max-in-memory-length of quorum queues (0: not set).";
    RABBIT_QUORUM_MAX_MEMORY_BYTES: "oslo_messaging_rabbit" "rabbit_quorum_max_memory_bytes" Int = Some("0"), None,
        "x-max-in-memory-bytes of quorum queues (0: not set).";
    RABBIT_TRANSIENT_QUEUES_TTL: "oslo_messaging_rabbit" "rabbit_transient_queues_ttl" Int = Some("1800"), None,
        "Seconds an unused reply or fanout queue lives (x-expires); 0: no x-expires (newer oslo.messaging releases allow 0; the rest of the deployment must say the same).";
    RABBIT_QOS_PREFETCH_COUNT: "oslo_messaging_rabbit" "rabbit_qos_prefetch_count" Int = Some("0"), None,
        "AMQP prefetch count per consumer. 0, oslo.messaging's unlimited, is taken as 16 here: this service reads deliveries into memory as they arrive (kombu leaves them in the socket), so an unlimited prefetch would let a flood in the queue fill its memory.";
    RABBIT_RETRY_INTERVAL: "oslo_messaging_rabbit" "rabbit_retry_interval" Float = Some("1"), None,
        "Seconds before the first reconnection attempt.";
    RABBIT_RETRY_BACKOFF: "oslo_messaging_rabbit" "rabbit_retry_backoff" Float = Some("1"), None,
        "Seconds added to the reconnection delay after each failed attempt (oslo.messaging's default is 2).";
    RABBIT_INTERVAL_MAX: "oslo_messaging_rabbit" "rabbit_interval_max" Float = Some("4"), None,
        "Maximum seconds between reconnection attempts. oslo.messaging's default is 30; 4 brings this host back within 5 s of its broker's return, and a refused connection costs the broker next to nothing.";
    RABBIT_SSL: "oslo_messaging_rabbit" "ssl" Bool = Some("false"), None,
        "Connect to RabbitMQ over TLS (as amqps:// or ?ssl=1 in transport_url do). There is no fallback to plain AMQP: a failed handshake fails the connection.";
    RABBIT_SSL_CA_FILE: "oslo_messaging_rabbit" "ssl_ca_file" Str = None, None,
        "PEM file of the CA(s) that signed the broker's certificate, trusted besides the system's roots. The broker's certificate must also name the host written in transport_url (always verified).";
    RABBIT_SSL_CERT_FILE: "oslo_messaging_rabbit" "ssl_cert_file" Str = None, None,
        "PEM client certificate presented to the broker (needs ssl_key_file; required by rabbit_login_method = EXTERNAL).";
    RABBIT_SSL_KEY_FILE: "oslo_messaging_rabbit" "ssl_key_file" Str = None, None,
        "PEM private key of ssl_cert_file (PKCS#8, PKCS#1 or SEC1).";
    RABBIT_SSL_VERSION: "oslo_messaging_rabbit" "ssl_version" Str = None, None,
        "Leave unset: TLS 1.2 or 1.3 is negotiated. Any value other than sslv23/tls (negotiate) is refused, since this service cannot pin one TLS version.";
    RABBIT_SSL_ENFORCE_FIPS_MODE: "oslo_messaging_rabbit" "ssl_enforce_fips_mode" Bool = Some("false"), None,
        "Refused when true: this service's TLS library (rustls) is not run in a FIPS-validated mode.";
    RABBIT_LOGIN_METHOD: "oslo_messaging_rabbit" "rabbit_login_method" Str ["AMQPLAIN", "PLAIN", "EXTERNAL"] = Some("AMQPLAIN"), None,
        "SASL mechanism to log in with: AMQPLAIN or PLAIN (user and password of transport_url) or EXTERNAL (the TLS client certificate; the broker takes the user from it).";
    RABBIT_TRANSIENT_QUORUM_QUEUE: "oslo_messaging_rabbit" "rabbit_transient_quorum_queue" Bool = Some("false"), None,
        "Declare reply and fanout queues as durable quorum queues too (oslo.messaging 14.4 and later; must match the rest of the deployment).";
    RABBIT_STREAM_FANOUT: "oslo_messaging_rabbit" "rabbit_stream_fanout" Bool = Some("false"), None,
        "Refused when true: fanout stream queues are not implemented by this service.";
    USE_QUEUE_MANAGER: "oslo_messaging_rabbit" "use_queue_manager" Bool = Some("false"), None,
        "Refused when true: stable reply/fanout queue names (oslo's QManager) are not implemented by this service; it uses random names as oslo.messaging does by default.";
    KOMBU_MISSING_CONSUMER_RETRY_TIMEOUT: "oslo_messaging_rabbit" "kombu_missing_consumer_retry_timeout" Int = Some("60"), None,
        "Seconds a reply keeps being retried while the caller's reply queue is missing. The wait holds no RPC worker, and at most executor_thread_pool_size replies wait at once (the others are tried once).";

    // [placement]
    PLACEMENT_AUTH_TYPE: "placement" "auth_type" Str = Some("password"), None,
        "How to authenticate to Placement: password or v3password (Keystone v3), v3applicationcredential, admin_token (endpoint + token) or none.";
    PLACEMENT_AUTH_URL: "placement" "auth_url" Str = None, None, "Keystone URL (auth_type = password or v3applicationcredential).";
    PLACEMENT_USERNAME: "placement" "username" Str = None, None, "Keystone user (auth_type = password).";
    PLACEMENT_PASSWORD: "placement" "password" Secret = None, None, "Keystone password (auth_type = password).";
    PLACEMENT_USER_DOMAIN_NAME: "placement" "user_domain_name" Str = Some("Default"), None, "Domain of the user.";
    PLACEMENT_PROJECT_NAME: "placement" "project_name" Str = None, None, "Project to scope the token to.";
    PLACEMENT_PROJECT_DOMAIN_NAME: "placement" "project_domain_name" Str = Some("Default"), None, "Domain of the project.";
    PLACEMENT_TOKEN: "placement" "token" Secret = None, None, "Static token (auth_type = admin_token).";
    PLACEMENT_ENDPOINT: "placement" "endpoint" Str = None, None, "Endpoint used with auth_type = admin_token.";
    PLACEMENT_ENDPOINT_OVERRIDE: "placement" "endpoint_override" Str = None, None, "Use this URL instead of the catalog's.";
    PLACEMENT_REGION_NAME: "placement" "region_name" Str = None, None, "Region of the catalog endpoint.";
    PLACEMENT_VALID_INTERFACES: "placement" "valid_interfaces" List = Some("internal,public"), None, "Catalog interfaces to try, in order.";
    PLACEMENT_TIMEOUT: "placement" "timeout" Int = Some("30"), None, "Seconds per HTTP request.";
    PLACEMENT_USER_ID: "placement" "user_id" Str = None, None, "Keystone user id (instead of username and its domain).";
    PLACEMENT_USER_DOMAIN_ID: "placement" "user_domain_id" Str = None, None, "Domain of the user, by id (wins over user_domain_name).";
    PLACEMENT_PROJECT_ID: "placement" "project_id" Str = None, None, "Project to scope the token to, by id (instead of project_name and its domain).";
    PLACEMENT_PROJECT_DOMAIN_ID: "placement" "project_domain_id" Str = None, None, "Domain of the project, by id (wins over project_domain_name).";
    PLACEMENT_DEFAULT_DOMAIN_ID: "placement" "default_domain_id" Str = None, None, "Domain of the user and the project when neither names its own, by id.";
    PLACEMENT_DEFAULT_DOMAIN_NAME: "placement" "default_domain_name" Str = None, None, "Domain of the user and the project when neither names its own, by name.";
    PLACEMENT_SYSTEM_SCOPE: "placement" "system_scope" Str = None, None, "Scope the token to the system (only 'all') instead of a project.";
    PLACEMENT_APPLICATION_CREDENTIAL_ID: "placement" "application_credential_id" Str = None, None, "Application credential id (auth_type = v3applicationcredential).";
    PLACEMENT_APPLICATION_CREDENTIAL_NAME: "placement" "application_credential_name" Str = None, None, "Application credential name, with the user that owns it (auth_type = v3applicationcredential).";
    PLACEMENT_APPLICATION_CREDENTIAL_SECRET: "placement" "application_credential_secret" Secret = None, None, "Application credential secret (auth_type = v3applicationcredential).";
    PLACEMENT_CAFILE: "placement" "cafile" Str = None, None, "PEM bundle of the CAs to trust for Keystone and the service (instead of the system's).";
    PLACEMENT_CERTFILE: "placement" "certfile" Str = None, None, "PEM client certificate presented to Keystone and the service (with keyfile).";
    PLACEMENT_KEYFILE: "placement" "keyfile" Str = None, None, "PEM private key of certfile.";
    PLACEMENT_INSECURE: "placement" "insecure" Bool = Some("false"), None, "Do not verify the server's TLS certificate (tests only).";

    // [glance]
    GLANCE_AUTH_TYPE: "glance" "auth_type" Str = Some("user"), None,
        "How to authenticate to Glance: user (the request's own token, as Nova does), password or v3password, v3applicationcredential, admin_token or none.";
    GLANCE_AUTH_URL: "glance" "auth_url" Str = None, None, "Keystone URL (auth_type = password or v3applicationcredential).";
    GLANCE_USERNAME: "glance" "username" Str = None, None, "Keystone user (auth_type = password).";
    GLANCE_PASSWORD: "glance" "password" Secret = None, None, "Keystone password (auth_type = password).";
    GLANCE_USER_DOMAIN_NAME: "glance" "user_domain_name" Str = Some("Default"), None, "Domain of the user.";
    GLANCE_PROJECT_NAME: "glance" "project_name" Str = None, None, "Project to scope the token to.";
    GLANCE_PROJECT_DOMAIN_NAME: "glance" "project_domain_name" Str = Some("Default"), None, "Domain of the project.";
    GLANCE_TOKEN: "glance" "token" Secret = None, None, "Static token (auth_type = admin_token).";
    GLANCE_ENDPOINT: "glance" "endpoint" Str = None, None, "Endpoint used with auth_type = admin_token.";
    GLANCE_API_SERVERS: "glance" "api_servers" List = None, None, "Deprecated in Nova; the first entry is used when endpoint_override is unset.";
    GLANCE_ENDPOINT_OVERRIDE: "glance" "endpoint_override" Str = None, None, "Use this URL instead of the catalog's.";
    GLANCE_REGION_NAME: "glance" "region_name" Str = None, None, "Region of the catalog endpoint.";
    GLANCE_VALID_INTERFACES: "glance" "valid_interfaces" List = Some("internal,public"), None, "Catalog interfaces to try, in order.";
    GLANCE_TIMEOUT: "glance" "timeout" Int = Some("60"), None, "Seconds to wait for response headers and between body chunks.";
    GLANCE_NUM_RETRIES: "glance" "num_retries" Int = Some("3"), None,
        "Times an idempotent Glance request (GET, PUT, DELETE) is tried again after a connection error or a 500, 502, 503 or 504, 200 ms after the first failure and twice as long after each next one (0-20).";
    GLANCE_USER_ID: "glance" "user_id" Str = None, None, "Keystone user id (instead of username and its domain).";
    GLANCE_USER_DOMAIN_ID: "glance" "user_domain_id" Str = None, None, "Domain of the user, by id (wins over user_domain_name).";
    GLANCE_PROJECT_ID: "glance" "project_id" Str = None, None, "Project to scope the token to, by id (instead of project_name and its domain).";
    GLANCE_PROJECT_DOMAIN_ID: "glance" "project_domain_id" Str = None, None, "Domain of the project, by id (wins over project_domain_name).";
    GLANCE_DEFAULT_DOMAIN_ID: "glance" "default_domain_id" Str = None, None, "Domain of the user and the project when neither names its own, by id.";
    GLANCE_DEFAULT_DOMAIN_NAME: "glance" "default_domain_name" Str = None, None, "Domain of the user and the project when neither names its own, by name.";
    GLANCE_SYSTEM_SCOPE: "glance" "system_scope" Str = None, None, "Scope the token to the system (only 'all') instead of a project.";
    GLANCE_APPLICATION_CREDENTIAL_ID: "glance" "application_credential_id" Str = None, None, "Application credential id (auth_type = v3applicationcredential).";
    GLANCE_APPLICATION_CREDENTIAL_NAME: "glance" "application_credential_name" Str = None, None, "Application credential name, with the user that owns it (auth_type = v3applicationcredential).";
    GLANCE_APPLICATION_CREDENTIAL_SECRET: "glance" "application_credential_secret" Secret = None, None, "Application credential secret (auth_type = v3applicationcredential).";
    GLANCE_CAFILE: "glance" "cafile" Str = None, None, "PEM bundle of the CAs to trust for Keystone and the service (instead of the system's).";
    GLANCE_CERTFILE: "glance" "certfile" Str = None, None, "PEM client certificate presented to Keystone and the service (with keyfile).";
    GLANCE_KEYFILE: "glance" "keyfile" Str = None, None, "PEM private key of certfile.";
    GLANCE_INSECURE: "glance" "insecure" Bool = Some("false"), None, "Do not verify the server's TLS certificate (tests only).";

    // [service_user]
    SERVICE_USER_SEND_SERVICE_USER_TOKEN: "service_user" "send_service_user_token" Bool = Some("false"), None, "Send a service token (X-Service-Token) with every request made with a user's token (Glance), so that an operation outliving the user's token (a long snapshot upload) still completes.";
    SERVICE_USER_AUTH_TYPE: "service_user" "auth_type" Str = Some("password"), None, "How the service user logs in: password, v3password or v3applicationcredential.";
    SERVICE_USER_AUTH_URL: "service_user" "auth_url" Str = None, None, "Keystone URL of the service user.";
    SERVICE_USER_USERNAME: "service_user" "username" Str = None, None, "Service user name.";
    SERVICE_USER_USER_ID: "service_user" "user_id" Str = None, None, "Service user id (instead of username and its domain).";
    SERVICE_USER_PASSWORD: "service_user" "password" Secret = None, None, "Service user password.";
    SERVICE_USER_USER_DOMAIN_NAME: "service_user" "user_domain_name" Str = Some("Default"), None, "Domain of the service user.";
    SERVICE_USER_USER_DOMAIN_ID: "service_user" "user_domain_id" Str = None, None, "Domain of the service user, by id.";
    SERVICE_USER_PROJECT_NAME: "service_user" "project_name" Str = None, None, "Project of the service token.";
    SERVICE_USER_PROJECT_ID: "service_user" "project_id" Str = None, None, "Project of the service token, by id.";
    SERVICE_USER_PROJECT_DOMAIN_NAME: "service_user" "project_domain_name" Str = Some("Default"), None, "Domain of the project.";
    SERVICE_USER_PROJECT_DOMAIN_ID: "service_user" "project_domain_id" Str = None, None, "Domain of the project, by id.";
    SERVICE_USER_DEFAULT_DOMAIN_ID: "service_user" "default_domain_id" Str = None, None, "Domain of the user and project when neither names its own, by id.";
    SERVICE_USER_DEFAULT_DOMAIN_NAME: "service_user" "default_domain_name" Str = None, None, "Domain of the user and project when neither names its own, by name.";
    SERVICE_USER_SYSTEM_SCOPE: "service_user" "system_scope" Str = None, None, "Scope the service token to the system (only 'all').";
    SERVICE_USER_APPLICATION_CREDENTIAL_ID: "service_user" "application_credential_id" Str = None, None, "Application credential id (auth_type = v3applicationcredential).";
    SERVICE_USER_APPLICATION_CREDENTIAL_NAME: "service_user" "application_credential_name" Str = None, None, "Application credential name, with its user.";
    SERVICE_USER_APPLICATION_CREDENTIAL_SECRET: "service_user" "application_credential_secret" Secret = None, None, "Application credential secret.";
    SERVICE_USER_VALID_INTERFACES: "service_user" "valid_interfaces" List = Some("internal,public"), None, "Unused by the service token (it names no endpoint); checked like the other sections'.";
    SERVICE_USER_CAFILE: "service_user" "cafile" Str = None, None, "PEM bundle of the CAs to trust for Keystone (service user).";
    SERVICE_USER_CERTFILE: "service_user" "certfile" Str = None, None, "PEM client certificate for Keystone (service user).";
    SERVICE_USER_KEYFILE: "service_user" "keyfile" Str = None, None, "PEM private key of certfile.";
    SERVICE_USER_INSECURE: "service_user" "insecure" Bool = Some("false"), None, "Do not verify Keystone's TLS certificate (tests only).";
    SERVICE_USER_TIMEOUT: "service_user" "timeout" Int = Some("30"), None, "Seconds per Keystone request of the service user.";

    // [neutron]
    NEUTRON_AUTH_TYPE: "neutron" "auth_type" Str = Some("password"), None,
        "How to authenticate to Neutron: password or v3password (Keystone v3), v3applicationcredential, admin_token or none.";
    NEUTRON_AUTH_URL: "neutron" "auth_url" Str = None, None, "Keystone URL (auth_type = password or v3applicationcredential).";
    NEUTRON_USERNAME: "neutron" "username" Str = None, None, "Keystone user (auth_type = password).";
    NEUTRON_PASSWORD: "neutron" "password" Secret = None, None, "Keystone password (auth_type = password).";
    NEUTRON_USER_DOMAIN_NAME: "neutron" "user_domain_name" Str = Some("Default"), None, "Domain of the user.";
    NEUTRON_PROJECT_NAME: "neutron" "project_name" Str = None, None, "Project to scope the token to.";
    NEUTRON_PROJECT_DOMAIN_NAME: "neutron" "project_domain_name" Str = Some("Default"), None, "Domain of the project.";
    NEUTRON_TOKEN: "neutron" "token" Secret = None, None, "Static token (auth_type = admin_token).";
    NEUTRON_ENDPOINT: "neutron" "endpoint" Str = None, None, "Endpoint used with auth_type = admin_token.";
    NEUTRON_ENDPOINT_OVERRIDE: "neutron" "endpoint_override" Str = None, None, "Use this URL instead of the catalog's.";
    NEUTRON_REGION_NAME: "neutron" "region_name" Str = None, None, "Region of the catalog endpoint.";
    NEUTRON_VALID_INTERFACES: "neutron" "valid_interfaces" List = Some("internal,public"), None, "Catalog interfaces to try, in order.";
    NEUTRON_TIMEOUT: "neutron" "timeout" Int = Some("30"), None, "Seconds per HTTP request.";
    NEUTRON_OVS_BRIDGE: "neutron" "ovs_bridge" Str = Some("br-int"), None, "Integration bridge for ovs VIFs when the port does not name one.";
    NEUTRON_USER_ID: "neutron" "user_id" Str = None, None, "Keystone user id (instead of username and its domain).";
    NEUTRON_USER_DOMAIN_ID: "neutron" "user_domain_id" Str = None, None, "Domain of the user, by id (wins over user_domain_name).";
    NEUTRON_PROJECT_ID: "neutron" "project_id" Str = None, None, "Project to scope the token to, by id (instead of project_name and its domain).";
    NEUTRON_PROJECT_DOMAIN_ID: "neutron" "project_domain_id" Str = None, None, "Domain of the project, by id (wins over project_domain_name).";
    NEUTRON_DEFAULT_DOMAIN_ID: "neutron" "default_domain_id" Str = None, None, "Domain of the user and the project when neither names its own, by id.";
    NEUTRON_DEFAULT_DOMAIN_NAME: "neutron" "default_domain_name" Str = None, None, "Domain of the user and the project when neither names its own, by name.";
    NEUTRON_SYSTEM_SCOPE: "neutron" "system_scope" Str = None, None, "Scope the token to the system (only 'all') instead of a project.";
    NEUTRON_APPLICATION_CREDENTIAL_ID: "neutron" "application_credential_id" Str = None, None, "Application credential id (auth_type = v3applicationcredential).";
    NEUTRON_APPLICATION_CREDENTIAL_NAME: "neutron" "application_credential_name" Str = None, None, "Application credential name, with the user that owns it (auth_type = v3applicationcredential).";
    NEUTRON_APPLICATION_CREDENTIAL_SECRET: "neutron" "application_credential_secret" Secret = None, None, "Application credential secret (auth_type = v3applicationcredential).";
    NEUTRON_CAFILE: "neutron" "cafile" Str = None, None, "PEM bundle of the CAs to trust for Keystone and the service (instead of the system's).";
    NEUTRON_CERTFILE: "neutron" "certfile" Str = None, None, "PEM client certificate presented to Keystone and the service (with keyfile).";
    NEUTRON_KEYFILE: "neutron" "keyfile" Str = None, None, "PEM private key of certfile.";
    NEUTRON_INSECURE: "neutron" "insecure" Bool = Some("false"), None, "Do not verify the server's TLS certificate (tests only).";

    // [docker]
    DOCKER_HOST_URL: "docker" "host_url" Str = Some("unix:///var/run/docker.sock"), None,
        "Docker engine endpoint (unix socket only: the API is root-equivalent and is never reached over TCP).";
    DOCKER_API_TIMEOUT: "docker" "api_timeout" Int = Some("120"), None,
        "Seconds to wait for the engine's response headers on each API call.";
    DOCKER_NOVA_RELEASE: "docker" "nova_release" Str ["auto", "zed", "2026.2"] = Some("auto"), None,
        "Nova release of the control plane: auto (asked from the conductor), zed or 2026.2. It sets the service version, object versions and RPC topics this host uses.";
    DOCKER_PIDS_LIMIT: "docker" "pids_limit" Int = Some("4096"), None,
        "Maximum number of processes in one instance (flavor extra spec quota:pids_limit overrides; 0: unlimited).";
    DOCKER_CPU_LIMIT: "docker" "cpu_limit" Str ["shares", "quota"] = Some("shares"), None,
        "How vCPUs limit a container: shares (relative weight, vcpus x 1024) or quota (a hard cap of vcpus CPUs, plus the weight).";
    DOCKER_CPUSET_CPUS: "docker" "cpuset_cpus" Str = None, None,
        "Host CPUs instances may run on (cpuset syntax, e.g. 2-7); unset: any.";
    DOCKER_CAPABILITIES: "docker" "capabilities" List = Some("CHOWN,DAC_OVERRIDE,FOWNER,FSETID,KILL,SETGID,SETUID,SETPCAP,NET_BIND_SERVICE,NET_RAW,SYS_CHROOT,AUDIT_WRITE"), None,
        "Linux capabilities an instance keeps; every other capability is dropped. NET_RAW (raw sockets: ping, DHCP and network tools) is kept as Docker keeps it: Neutron's port security drops forged frames (SECURITY.md).";
    DOCKER_SECCOMP_PROFILE: "docker" "seccomp_profile" Str = None, None,
        "Path of a seccomp profile (JSON) applied to instances; unset: the engine's default profile.";
    DOCKER_USERNS_MODE: "docker" "userns_mode" Str = None, None,
        "User namespace mode passed to the engine (empty: the daemon's setting, e.g. its userns-remap).";
    DOCKER_READ_ONLY_ROOTFS: "docker" "read_only_rootfs" Bool = Some("false"), None,
        "Mount instances' root filesystems read-only (image property os_read_only_rootfs overrides).";
    DOCKER_INJECT_KEY: "docker" "inject_key" Bool = Some("false"), None,
        "Write the instance's key pair public key to /root/.ssh/authorized_keys in its container before the first start (as the old nova-docker driver did); replaces the image's file.";
    DOCKER_ISOLATED_METADATA_ROUTE: "docker" "isolated_metadata_route" Bool = Some("false"), None,
        "Route 169.254.169.254/32 through each IPv4 subnet's DHCP port inside the container, as Neutron's DHCP agent tells VMs by DHCP when it serves isolated metadata (enable_isolated_metadata, force_metadata). Leave false where Neutron routers serve the metadata (the default route reaches them). The same as metadata_route = dhcp_port.";
    DOCKER_METADATA_ROUTE: "docker" "metadata_route" Str ["router", "dhcp_port", "metadata_port"] = Some("router"), None,
        "The route to 169.254.169.254 each container gets, in place of the one a VM learns by DHCP: router (none of its own: Neutron routers serve the metadata through the default route), dhcp_port (through each IPv4 subnet's DHCP port: Neutron's DHCP agent with isolated metadata), metadata_port (through the network's ML2/OVN metadata port on each IPv4 subnet, as OVN tells VMs by DHCP). Unset: dhcp_port if isolated_metadata_route is true, else router (the default).";
    DOCKER_SNAPSHOT_PAUSE: "docker" "snapshot_pause" Bool = Some("true"), None,
        "Pause the container while it is committed for a snapshot, for a consistent filesystem.";
    DOCKER_KEEP_SNAPSHOT_IMAGES: "docker" "keep_snapshot_images" Bool = Some("false"), None,
        "Keep the committed Docker image after its upload to Glance.";
    DOCKER_MAX_IMAGE_MANIFEST_BYTES: "docker" "max_image_manifest_bytes" Int = Some("1048576"), None,
        "Largest manifest.json or image config accepted in an image archive.";
    DOCKER_MAX_IMAGE_UNPACKED_MB: "docker" "max_image_unpacked_mb" Int = Some("20480"), None,
        "Largest size, in MiB, an image from Glance may unpack to on this host: its archive's files plus what compressed layers inflate to. Bounds the disk one tenant's image can fill (a load takes at most about twice this while it runs); a larger image fails its boot with a clear fault.";
    DOCKER_ROOT_DISK_LIMIT: "docker" "root_disk_limit" Str ["auto", "quota", "measure", "off"] = Some("auto"), None,
        "How the flavor's root_gb limits an instance's root filesystem: quota (the storage driver enforces a size per container: overlay2 on xfs mounted with prjquota, btrfs, zfs; a write past it fails with no space left), measure (the writable layer is measured every root_disk_measure_interval seconds and root_disk_over_limit_action applies to an instance over its root_gb), off (not limited), or auto (quota when the engine's storage driver and its filesystem can enforce it, else measure). nova-docker check says which mode the host is in and why.";
    DOCKER_ROOT_DISK_MEASURE_INTERVAL: "docker" "root_disk_measure_interval" Int = Some("60"), None,
        "Seconds between measurements of the instances' writable layers (root_disk_limit = measure). Each pass inspects at most 2 containers at once, each bounded by api_timeout.";
    DOCKER_ROOT_DISK_OVER_LIMIT_ACTION: "docker" "root_disk_over_limit_action" Str ["stop", "log"] = Some("stop"), None,
        "What happens to an instance whose measured writable layer exceeds its flavor's root_gb (root_disk_limit = measure): stop (the container is stopped, Nova records a stop action, SHUTOFF and an instance fault saying why) or log (a warning in this service's log only).";
    DOCKER_ZERO_DISK_FLAVOR_ROOT_GB: "docker" "zero_disk_flavor_root_gb" Int = Some("0"), None,
        "Root disk limit in GiB for instances of flavors with root_gb = 0 (Nova's policy lets only admins boot those). 0: such instances have no root disk limit; nova-docker check warns about it.";
    DOCKER_CONSOLE_LOG_MAX_BYTES: "docker" "console_log_max_bytes" Int = Some("2097152"), None,
        "Most bytes of console output (the container's stdout and stderr) kept on the host per instance, whatever the engine's default log settings: written by the json-file log driver in 4 rotated files of a quarter each (libvirt's virtlogd keeps 2 MiB per file). The console output API returns the newest lines. At least 65536.";
    DOCKER_RPC_MAX_MESSAGE_BYTES: "docker" "rpc_max_message_bytes" Int = Some("4194304"), None,
        "Largest RPC message accepted; bigger ones are logged and dropped.";
    DOCKER_METRICS_LISTEN: "docker" "metrics_listen" Str = None, None,
        "host:port of an HTTP endpoint serving /healthz, /readyz and Prometheus /metrics; unset: no endpoint.";
    DOCKER_SERIAL_CONSOLE_SINGLE_HOST: "docker" "serial_console_single_host" Bool = Some("false"), None,
        "Allow a loopback or unspecified [serial_console] proxyclient_address (127.0.0.1, ::1, 0.0.0.0, ::) with serial consoles on. nova-serialproxy connects to the host:port in a token after asking only the instance's host whether the port is its console's, so with such an address on several hosts a token of one host presented to another host's proxy reaches that host's own console on the same port: another tenant's. Set true only when no other compute host's serial proxy can reach this host's loopback: a one-host cloud. Otherwise the service refuses to start.";
    DOCKER_LOG_FORMAT: "docker" "log_format" Str ["text", "json"] = Some("text"), None,
        "Log line format: text (oslo.log's) or json (oslo.log's JSONFormatter); json is the same as [DEFAULT] use_json = true.";

    // [image_cache]
    IMAGE_CACHE_MANAGER_INTERVAL: "image_cache" "manager_interval" Int = Some("2400"), None,
        "Seconds between image cache passes, which remove the Docker images loaded from Glance that nothing uses (0 disables).";
    IMAGE_CACHE_REMOVE_UNUSED: "image_cache" "remove_unused_base_images" Bool = Some("true"), None,
        "Remove Docker images loaded from Glance (glance/<id>:v1-<hex> references) that no container of the engine and no instance of this host uses.";
    IMAGE_CACHE_MINIMUM_AGE: "image_cache" "remove_unused_original_minimum_age_seconds" Int = Some("86400"), None,
        "An unused image is removed only after it has been unused for this many seconds, counted from its load and from the first pass of this process that found it unused (a restart starts the count again).";

    // [serial_console]
    SERIAL_CONSOLE_ENABLED: "serial_console" "enabled" Bool = Some("false"), None,
        "Serve interactive serial consoles (`openstack console url show --serial`) through nova-serialproxy. Containers created while this is true get a terminal and an open stdin (the console is attached to them); those created before keep none and have no console.";
    SERIAL_CONSOLE_PORT_RANGE: "serial_console" "port_range" Str = Some("10000:20000"), None,
        "TCP ports (MIN:MAX) the host listens on for consoles, one per instance whose console was asked for.";
    SERIAL_CONSOLE_PROXYCLIENT_ADDRESS: "serial_console" "proxyclient_address" Str = Some("127.0.0.1"), None,
        "Address the console ports listen on and that nova-serialproxy connects to: this host's own address on the management network, reachable by the proxy only. With enabled = true, a loopback or unspecified address (the default 127.0.0.1, 0.0.0.0, ::) is refused unless [docker] serial_console_single_host = true: the same host:port would name a console on every host.";
    SERIAL_CONSOLE_BASE_URL: "serial_console" "base_url" Str = Some("ws://127.0.0.1:6083/"), None,
        "The nova-serialproxy URL users are given (the token is appended as ?token=...).";

    // [consoleauth]
    CONSOLEAUTH_TOKEN_TTL: "consoleauth" "token_ttl" Int = Some("600"), None,
        "Seconds a console token is valid for a new connection.";
}

/// The groups only nova-docker reads: an option set there that [`ALL`]
/// does not have is reported (the other groups are Nova's and hold many
/// options this service has no use for).
pub const OWN_GROUPS: &[&str] = &["docker"];

/// Renders the sample configuration file from [`ALL`].
pub fn sample() -> String {
    let mut out = String::from(
        "# nova-docker.conf.sample -- every option nova-docker reads, with its default.\n\
         # Generated by `nova-docker config sample`; do not edit by hand.\n\
         # nova-docker reads the nova.conf of a Python compute host as it is: options it\n\
         # does not know are ignored. Any option can also be set in the environment as\n\
         # OS_<GROUP>__<OPTION> (e.g. OS_DEFAULT__HOST), as oslo.config allows.\n",
    );
    let mut group = "";
    for opt in ALL {
        if opt.group != group {
            group = opt.group;
            out.push_str(&format!("\n[{group}]\n"));
        }
        out.push('\n');
        for line in wrap(opt.help, 76) {
            out.push_str(&format!("# {line}\n"));
        }
        let kind = match opt.kind {
            Kind::Str => "string",
            Kind::Secret => "string, secret",
            Kind::Int => "integer",
            Kind::Float => "floating point",
            Kind::Bool => "boolean",
            Kind::List => "list",
        };
        out.push_str(&format!("# ({kind})\n"));
        if !opt.choices.is_empty() {
            out.push_str(&format!("# Possible values: {}\n", opt.choices.join(", ")));
        }
        if let Some(dynamic) = opt.dynamic_default {
            out.push_str(&format!("# Default: {dynamic}\n"));
        }
        match opt.default {
            Some(value) => out.push_str(&format!("#{} = {value}\n", opt.name)),
            None => out.push_str(&format!("#{} = <None>\n", opt.name)),
        }
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn options_are_unique_and_documented() {
        let mut seen = HashSet::new();
        for opt in ALL {
            assert!(seen.insert((opt.group, opt.name)), "duplicate option {}.{}", opt.group, opt.name);
            assert!(!opt.help.is_empty());
        }
    }

    #[test]
    fn defaults_of_choices_are_choices() {
        for opt in ALL.iter().filter(|o| !o.choices.is_empty()) {
            let default = opt.default.expect("a choice has a default");
            // A list of choices: each item of its default (none when empty).
            let items: Vec<&str> = match opt.kind {
                Kind::List => default.split(',').map(str::trim).filter(|x| !x.is_empty()).collect(),
                _ => vec![default],
            };
            for item in items {
                assert!(opt.choices.contains(&item), "{}.{}: {item} not a choice", opt.group, opt.name);
            }
        }
    }

    #[test]
    fn sample_parses_as_ini_and_lists_every_option() {
        let text = sample();
        crate::config::ini::IniFile::parse(&text).expect("sample must be valid INI");
        for opt in ALL {
            assert!(text.contains(&format!("#{} = ", opt.name)), "{} missing", opt.name);
        }
    }
}
