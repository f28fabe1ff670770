#!/bin/sh
# Stand-ins for the registry images docker-compose.yml names, for a machine that can reach
# Debian's package mirror but no container registry (see docs/containers.md). Needs root,
# debootstrap and podman. Each is tagged with the name the compose file uses, so
# `podman-compose up` finds it locally; none of them is the real image.
set -e
here=$(cd "$(dirname "$0")" && pwd)
work=${STANDIN_WORKDIR:-/tmp/compose-stand-in}
mkdir -p "$work"
if ! podman image exists localhost/standin-debian:bookworm; then
    [ -d "$work/rootfs" ] || debootstrap --variant=minbase --include=ca-certificates bookworm "$work/rootfs"
    tar -C "$work/rootfs" -c . | podman import - localhost/standin-debian:bookworm
fi
tag() { grep -o "image: *[^ ]*$1[^ ]*" "$here/../../docker-compose.yml" | head -1 | sed 's/image: *//'; }
cp /etc/ssl/certs/ca-certificates.crt "$here/host-ca-certificates.crt"
podman build -f "$here/python.Containerfile" -t "docker.io/library/$(grep -o '^FROM .*' "$here/../../Dockerfile" | cut -d' ' -f2)" "$here"
podman build -f "$here/postgres.Containerfile" -t "docker.io/library/$(tag postgres:)" "$here"
podman build -f "$here/nginx.Containerfile" -t "docker.io/library/$(tag nginx:)" "$here"
podman build -f "$here/pgbouncer.Containerfile" -t "docker.io/$(tag pgbouncer:)" "$here"
rm -f "$here/host-ca-certificates.crt"
podman images
