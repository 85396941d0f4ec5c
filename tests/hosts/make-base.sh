#!/usr/bin/env bash
# Build the Debian root file system the test hosts boot from, once.
#
#   tests/hosts/make-base.sh DEST
#
# DEST is made with `debootstrap --variant=minbase` plus the packages below (what
# the Ansible roles install: the hosts have no route to a package mirror, so the
# play's apt tasks find them present). The build goes to DEST.tmp and is renamed at
# the end, so an interrupted build is never mistaken for a finished one. The caller
# keys DEST by a hash of this file, so changing the package list makes a new base.
set -euo pipefail

dest=${1:?usage: make-base.sh DEST}
suite=bookworm
packages=(
    openssh-server python3 python3-venv python3-apt sudo iproute2 procps ca-certificates
    postgresql pgbouncer redis-server haproxy keepalived supervisor libpq5 libpython3.11 netbase
    patroni python3-etcd etcd-server etcd-client
)

if [[ -e $dest/.complete ]]; then
    echo "base ready: $dest"
    exit 0
fi
# The machine's own Debian mirror (the first `URIs:` or `deb` line naming one).
mirror=${FLEET_DEBIAN_MIRROR:-$(
    { grep -hsE '^(URIs:|deb) ' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list || true; } |
        grep -oE 'https?://[^ ]*/debian/?( |$)' | head -1 | tr -d ' '
)}
mirror=${mirror:-http://deb.debian.org/debian}
tmp=$dest.tmp
cleanup() {
    umount "$tmp/proc" 2>/dev/null || true
    umount "$tmp/dev" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
rm -rf "$tmp"
mkdir -p "$(dirname "$dest")"
echo "debootstrap $suite from $mirror into $tmp"
debootstrap --variant=minbase "$suite" "$tmp" "$mirror" >"$tmp.log" 2>&1 ||
    { tail -20 "$tmp.log"; exit 1; }
cp /etc/resolv.conf "$tmp/etc/resolv.conf"
mount --bind /proc "$tmp/proc"
mount --bind /dev "$tmp/dev"
# No daemon may start inside the chroot while packages are installed.
printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
chmod +x "$tmp/usr/sbin/policy-rc.d"
chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
chroot "$tmp" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >>"$tmp.log" 2>&1 ||
    { tail -20 "$tmp.log"; exit 1; }
chroot "$tmp" apt-get clean
rm -f "$tmp/usr/sbin/policy-rc.d"
# Each host gets its own keys at start-up (an overlay copies none of these).
rm -f "$tmp"/etc/ssh/ssh_host_*
cleanup
touch "$tmp/.complete"
mv "$tmp" "$dest"
rm -f "$tmp.log"
echo "base ready: $dest"
