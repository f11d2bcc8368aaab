# shellcheck shell=bash
# devstack/plugin.sh -- DevStack plugin: nova-docker as this host's nova-compute.
#
# local.conf:
#   [[local|localrc]]
#   VIRT_DRIVER=docker
#   enable_plugin nova-docker <git url of this repository> [branch]
#
# DevStack sources this file (into stack.sh's own shell) once per phase with
# MODE and PHASE as arguments. The functions live in lib/nova-docker, which
# devstack/aio.sh uses too. What each phase does, on a node where n-cpu is
# enabled and VIRT_DRIVER=docker (a "docker compute node"):
#
#   stack pre-install  busybox-static (test image) and the Docker engine:
#                      installed (docker.io) if missing, started, answering
#   stack install      a Rust toolchain: the stack user's cargo if it is at
#                      least Cargo.toml's rust-version, else rustup's stable
#                      (installed into ~/.cargo; NOVA_DOCKER_INSTALL_RUST=False
#                      to refuse and fail instead); then cargo build --release
#                      of this checkout, binary installed to $NOVA_DOCKER_BIN
#   stack post-config  any node with Glance: 'docker' in [image_format]
#                      container_formats. Compute node: $NOVA_DOCKER_CONF, and
#                      n-cpu taken over: DevStack's start_nova_compute still
#                      writes nova-cpu.conf, but service n-cpu runs
#                      `nova-docker serve --config-file nova-cpu.conf
#                      --config-file nova-docker.conf` (as root by default)
#                      instead of Python's nova-compute (lib/nova-docker says
#                      why n-cpu keeps its name); Python's nova-compute never runs
#   stack extra        compute node: the Docker image $NOVA_DOCKER_IMAGE (built
#                      from busybox-static, no registry) imported into Glance as
#                      public image $NOVA_DOCKER_IMAGE_NAME with
#                      `nova-docker image import` (Glance is up by now)
#   stack test-config  tempest: feature flags of what nova-docker supports,
#                      image_ref = that image, no SSH validation
#   unstack            nothing of ours: DevStack's stop_nova_compute stops
#                      n-cpu, i.e. nova-docker; containers keep running (as VMs
#                      do when nova-compute stops)
#   clean              the containers of this host, our config and binary
#
# After stack.sh, DevStack itself waits for this host in os-services
# (is_nova_ready) and maps it to the cell (tools/discover_hosts.sh).

NOVA_DOCKER_PLUGIN_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/nova-docker
source "$NOVA_DOCKER_PLUGIN_DIR/lib/nova-docker"
# settings sets it from enable_plugin's checkout; this checkout otherwise
: "${NOVA_DOCKER_DIR:=$(cd "$NOVA_DOCKER_PLUGIN_DIR/.." && pwd)}"

_nova_docker_is_compute() { [[ ${VIRT_DRIVER:-} == docker ]] && is_service_enabled n-cpu; }

_nova_docker_admin_token() {
    openstack --os-cloud devstack-admin --os-region "$REGION_NAME" token issue -f value -c id
}

if [[ "$1" == "stack" && "$2" == "pre-install" ]]; then
    if _nova_docker_is_compute; then
        echo_summary "nova-docker: Docker engine"
        install_package busybox-static
        nova_docker_ensure_docker "$NOVA_DOCKER_USER"
    fi

elif [[ "$1" == "stack" && "$2" == "install" ]]; then
    if _nova_docker_is_compute; then
        echo_summary "nova-docker: Rust toolchain"
        nova_docker_cargo=$(nova_docker_ensure_cargo "$NOVA_DOCKER_DIR")
        # first on PATH, so that the build (and rustc) use this toolchain
        PATH="$(dirname "$nova_docker_cargo"):$PATH"
        export PATH
        echo_summary "nova-docker: building the service"
        nova_docker_build_install "$NOVA_DOCKER_DIR" "$NOVA_DOCKER_BIN"
    fi

elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
    if is_service_enabled g-api glance; then
        nova_docker_configure_glance "$GLANCE_API_CONF"
    fi
    if _nova_docker_is_compute; then
        echo_summary "nova-docker: configuring n-cpu"
        sudo install -d -o "$STACK_USER" "$(dirname "$NOVA_DOCKER_CONF")"
        rm -f "$NOVA_DOCKER_CONF"
        nova_docker_configure_compute "$NOVA_DOCKER_CONF"
        if [[ "$NOVA_DOCKER_USER" != root ]]; then
            nova_docker_devstack_install_rootwrap "$NOVA_DOCKER_DIR"
        fi
        nova_docker_devstack_replace_n_cpu
    fi

elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
    if _nova_docker_is_compute && is_service_enabled glance; then
        echo_summary "nova-docker: seeding Glance with $NOVA_DOCKER_IMAGE_NAME"
        nova_docker_build_image "$NOVA_DOCKER_IMAGE"
        NOVA_DOCKER_IMAGE_ID=$(nova_docker_glance_import "$NOVA_DOCKER_BIN" "$GLANCE_URL" \
            "$(_nova_docker_admin_token)" "$NOVA_DOCKER_IMAGE" "$NOVA_DOCKER_IMAGE_NAME" \
            "$NOVA_CPU_CONF" "$NOVA_DOCKER_CONF")
        export NOVA_DOCKER_IMAGE_ID
    fi

elif [[ "$1" == "stack" && "$2" == "test-config" ]]; then
    if is_service_enabled tempest; then
        echo_summary "nova-docker: tempest feature flags"
        if [[ -z "${NOVA_DOCKER_IMAGE_ID:-}" ]]; then
            NOVA_DOCKER_IMAGE_ID=$(nova_docker_glance_image_id "$GLANCE_URL" "$(_nova_docker_admin_token)" \
                "$NOVA_DOCKER_IMAGE_NAME")
        fi
        nova_docker_configure_tempest "$TEMPEST_CONFIG" "$NOVA_DOCKER_IMAGE_ID"
    fi

elif [[ "$1" == "clean" ]]; then
    if [[ ${VIRT_DRIVER:-} == docker ]]; then
        nova_docker_host=$(iniget "$NOVA_CPU_CONF" DEFAULT host)
        nova_docker_host=${nova_docker_host:-$(hostname)}
        # containers of this host's instances (the service labels them), and
        # the /var/run/netns entries named after them
        for nova_docker_cid in $(sudo docker ps -aq --no-trunc --filter "label=nova.host=$nova_docker_host"); do
            sudo docker rm -f "$nova_docker_cid" >/dev/null
            sudo ip netns delete "$nova_docker_cid" 2>/dev/null || true
        done
        sudo rm -f "$NOVA_DOCKER_CONF" "$NOVA_DOCKER_BIN" \
            "${NOVA_CONF_DIR:-/etc/nova}/rootwrap.d/nova-docker.filters"
        sudo rm -rf "$NOVA_DOCKER_ROOTWRAP_BIN"
    fi
fi
