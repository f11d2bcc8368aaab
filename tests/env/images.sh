#!/bin/bash
# images.sh -- build the Docker images the tests boot, without a registry.
#
# There is no image registry on test machines: images are made from Debian's
# busybox-static (a single static /bin/busybox) as a rootfs tar fed to
# `docker import`. Idempotent: an image that exists is left alone.
#
#   nd-busybox:latest   a shell userland; CMD prints a line, then waits for
#                       signals (SIGTERM ends it at once, like a real service)
#   nd-busybox:chatty   prints a numbered line every 0.2 s (console tests)
#   nd-busybox:healthcheck  declares a HEALTHCHECK every second that leaves a
#                       mark in /tmp (the host must never run it)
#   nd-busybox:volume   declares VOLUME /data (an anonymous volume per container)
#   nd-busybox:iputils  adds Debian's iputils ping as /usr/bin/iputils-ping
#
# usage: tests/env/images.sh [--force]
set -euo pipefail
FORCE=${1:-}
BUSYBOX=${BUSYBOX:-/bin/busybox}
[ -x "$BUSYBOX" ] || { echo "images.sh: $BUSYBOX missing (apt-get install busybox-static)" >&2; exit 1; }

have() { docker image inspect "$1" >/dev/null 2>&1; }

build() { # TAG CMD-JSON
  local tag=$1 cmd=$2 root
  if [ "$FORCE" != --force ] && have "$tag"; then return 0; fi
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root" "$root/proc" "$root/sys" "$root/dev"
  cp "$BUSYBOX" "$root/bin/busybox"
  local applet
  for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
  echo 'root:x:0:' > "$root/etc/group"
  tar -C "$root" -c . | docker import -c "CMD $cmd" -c 'ENV PATH=/bin' - "$tag" >/dev/null
  rm -rf "$root"
  echo "built $tag"
}

# shellcheck disable=SC2016 # expanded by the container shell, not here
build nd-busybox:latest '["/bin/sh", "-c", "echo nova-docker test instance $(hostname) up; trap \"echo stopping; exit 0\" TERM INT; while true; do sleep 1 & wait $!; done"]'
# shellcheck disable=SC2016
build nd-busybox:chatty '["/bin/sh", "-c", "i=0; trap \"exit 0\" TERM INT; while true; do i=$((i+1)); echo line $i; sleep 0.2 & wait $!; done"]'

derive() { # TAG DOCKERFILE-LINES: an image built FROM nd-busybox:latest
  local tag=$1 lines=$2 ctx
  if [ "$FORCE" != --force ] && have "$tag"; then return 0; fi
  ctx=$(mktemp -d)
  printf 'FROM nd-busybox:latest\n%s\n' "$lines" > "$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
  echo "built $tag"
}
derive nd-busybox:healthcheck 'HEALTHCHECK --interval=1s --timeout=1s CMD ["/bin/sh", "-c", "echo ran >> /tmp/healthcheck-ran"]'
derive nd-busybox:volume 'VOLUME /data'

# nd-busybox:iputils: Debian's iputils `ping` (what common distribution images
# run) as /usr/bin/iputils-ping, with the libraries it links, copied without
# its file capability: as any user it pings over an ICMP datagram socket,
# where busybox's `ping` needs a raw socket (NET_RAW).
if [ "$FORCE" = --force ] || ! have nd-busybox:iputils; then
  [ -x /usr/bin/ping ] || { echo "images.sh: /usr/bin/ping missing (apt-get install iputils-ping)" >&2; exit 1; }
  ctx=$(mktemp -d)
  mkdir -p "$ctx/rootfs/usr/bin"
  cp /usr/bin/ping "$ctx/rootfs/usr/bin/iputils-ping"
  for lib in $(ldd /usr/bin/ping | grep -o '/[^ ]*'); do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
  done
  printf 'FROM nd-busybox:latest\nCOPY rootfs/ /\n' > "$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t nd-busybox:iputils "$ctx" >/dev/null
  rm -rf "$ctx"
  echo "built nd-busybox:iputils"
fi

# Real `docker save` archives for the archive validator's tests, written to
# $ND_ENV_STATE/fixtures: a one-layer image, and one whose 4th layer repeats
# its 2nd, so the legacy save format stores a layer as a symlink.
FIX=${ND_ENV_STATE:-/var/lib/nova-docker-test}/fixtures
mkdir -p "$FIX"
if [ "$FORCE" = --force ] || [ ! -s "$FIX/busybox-save.tar" ] || [ ! -s "$FIX/busybox-symlink-save.tar" ]; then
  work=$(mktemp -d)
  mkdir -p "$work/rootfs/bin" "$work/ctx"
  cp "$BUSYBOX" "$work/rootfs/bin/"
  tar -C "$work/rootfs" -cf "$work/rootfs.tar" bin
  docker import "$work/rootfs.tar" nova-docker-archive-test:busybox >/dev/null
  docker save nova-docker-archive-test:busybox -o "$FIX/busybox-save.tar"
  cat > "$work/ctx/Dockerfile" <<'DOCKERFILE'
FROM nova-docker-archive-test:busybox
RUN ["/bin/busybox","touch","-d","2020-01-01 00:00:00","/c"]
RUN ["/bin/busybox","rm","/c"]
RUN ["/bin/busybox","touch","-d","2020-01-01 00:00:00","/c"]
DOCKERFILE
  DOCKER_BUILDKIT=0 docker build -q -t nova-docker-archive-test:dup2 "$work/ctx" >/dev/null 2>&1
  docker save nova-docker-archive-test:dup2 -o "$FIX/busybox-symlink-save.tar"
  rm -rf "$work"
  echo "wrote archive fixtures to $FIX"
fi
