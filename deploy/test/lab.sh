#!/usr/bin/env bash
# The deploy test's hosts: Debian 12 machines booted with systemd-nspawn on this machine.
#   lab.sh base        the debootstrap base, once (cached under $LAB, default /var/tmp/rayd-lab)
#   lab.sh up | down   boot / power off and unmount the hosts (head1, worker1, worker2)
#   lab.sh sh HOST CMD...   run a command inside a host
# Each host is an overlayfs over the base, shares this machine's network namespace and listens
# on its own loopback address (127.0.0.11, .12, .13), so ports never collide between hosts.
set -euo pipefail
LAB=${LAB:-/var/tmp/rayd-lab}
BASE=$LAB/rootfs
HOSTS_DIR=$LAB/hosts
KEY=$LAB/id_ed25519
HOSTS=(head1 worker1 worker2)
SSH=(ssh -q -i "$KEY" -o BatchMode=yes -o ConnectTimeout=2 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null)

address_of() {
  case $1 in head1) echo 127.0.0.11 ;; worker1) echo 127.0.0.12 ;; worker2) echo 127.0.0.13 ;;
    *) echo "lab.sh: no host $1" >&2; exit 2 ;; esac
}

# The Debian mirror this machine's apt uses (deb822 or one-line sources).
mirror() {
  grep -hoE '^URIs: *\S+/debian$|^deb +\S+/debian ' /etc/apt/sources.list.d/*.sources \
    /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}'
}

base() {
  mkdir -p "$LAB"
  command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null ||
    apt-get install -y -q systemd-container debootstrap >/dev/null
  if [ ! -e "$BASE/.rayd-base-ready" ]; then
    rm -rf "$BASE"
    # What a fresh Debian 12 server has; what rayd needs (libpython, redis) the role installs.
    debootstrap --variant=minbase \
      --include=systemd,systemd-sysv,dbus,openssh-server,python3,python3-venv,sudo,iproute2,procps,ca-certificates,apt-utils \
      bookworm "$BASE" "${MIRROR:-$(mirror)}"
    # Where this machine reaches the registries through a proxy with its own CA, so must the hosts.
    if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
      cp /usr/local/share/ca-certificates/*.crt "$BASE/usr/local/share/ca-certificates/"
      chroot "$BASE" update-ca-certificates >/dev/null
    fi
    # apt lists in the base: the role's apt tasks need no `apt update` on each boot.
    cp /etc/resolv.conf "$BASE/etc/resolv.conf"
    chroot "$BASE" apt-get update -q >/dev/null
    # No timers that grab the dpkg lock while ansible runs apt.
    rm -f "$BASE/etc/systemd/system/timers.target.wants/"{apt-daily.timer,apt-daily-upgrade.timer}
    : >"$BASE/etc/machine-id" # each host gets its own at `up`
    touch "$BASE/.rayd-base-ready"
  fi
  # One machine ID per host: dbus' copy in the base would give every host the same one.
  ln -sf /etc/machine-id "$BASE/var/lib/dbus/machine-id"
  # Package scripts start no services (the stock redis-server would bind 127.0.0.1:6379 of
  # the network namespace the hosts share with this machine); ansible and systemd still do.
  printf '#!/bin/sh\nexit 101\n' >"$BASE/usr/sbin/policy-rc.d" && chmod 755 "$BASE/usr/sbin/policy-rc.d"
  [ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -f "$KEY"
  install -d -m 700 "$BASE/root/.ssh"
  install -m 600 "$KEY.pub" "$BASE/root/.ssh/authorized_keys"
  echo "base ready: $BASE ($(du -sh "$BASE" | cut -f1))"
}

leader() { cat "$HOSTS_DIR/$1.leader"; }

up() {
  for h in "${HOSTS[@]}"; do
    local d=$HOSTS_DIR/$h ip
    ip=$(address_of "$h")
    if mountpoint -q "$d/root"; then echo "$h: already up" >&2; exit 1; fi
    rm -rf "$d" && mkdir -p "$d"/{up,wk,root}
    mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$d/up,workdir=$d/wk" "$d/root"
    echo "$h" >"$d/root/etc/hostname"
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$d/root/etc/machine-id" && echo >>"$d/root/etc/machine-id"
    printf '127.0.0.1 localhost\n%s %s\n' "$ip" "$h" >"$d/root/etc/hosts"
    printf 'ListenAddress %s\nPasswordAuthentication no\n' "$ip" >"$d/root/etc/ssh/sshd_config.d/10-lab.conf"
    setsid systemd-nspawn -q --register=no --keep-unit --console=read-only -D "$d/root" -M "$h" -b \
      >"$HOSTS_DIR/$h.console" 2>&1 </dev/null &
    echo $! >"$HOSTS_DIR/$h.nspawn.pid"
  done
  for h in "${HOSTS[@]}"; do
    local ip np l="" state=""
    ip=$(address_of "$h"); np=$(cat "$HOSTS_DIR/$h.nspawn.pid")
    for _ in $(seq 180); do
      l=$(pgrep -P "$np" | head -1 || true)
      if [ -n "$l" ] && "${SSH[@]}" "root@$ip" true 2>/dev/null; then echo "$l" >"$HOSTS_DIR/$h.leader"; break; fi
      l=""; sleep 1
    done
    [ -n "$l" ] || { echo "$h: no ssh on $ip after 180 s (console: $HOSTS_DIR/$h.console)" >&2; exit 1; }
    for _ in $(seq 90); do
      state=$(nsenter -t "$l" -a systemctl is-system-running 2>/dev/null || true)
      case $state in running | degraded) break ;; esac
      sleep 1
    done
    echo "$h up: ssh root@$ip, state $state"
  done
}

down() {
  for h in "${HOSTS[@]}"; do
    local l
    l=$(cat "$HOSTS_DIR/$h.leader" 2>/dev/null || true)
    if [ -n "$l" ] && [ -d "/proc/$l" ]; then nsenter -t "$l" -a systemctl poweroff >/dev/null 2>&1 || true; fi
  done
  for h in "${HOSTS[@]}"; do
    local np
    np=$(cat "$HOSTS_DIR/$h.nspawn.pid" 2>/dev/null || true)
    for _ in $(seq 60); do { [ -n "$np" ] && [ -d "/proc/$np" ]; } || break; sleep 1; done
    if [ -n "$np" ] && [ -d "/proc/$np" ]; then kill "$np"; sleep 3; fi
    if mountpoint -q "$HOSTS_DIR/$h/root"; then umount "$HOSTS_DIR/$h/root"; fi
    # The host's own files (its overlay's upper dir): the next `up` starts from the base.
    if ! mountpoint -q "$HOSTS_DIR/$h/root"; then rm -rf "${HOSTS_DIR:?}/$h"; fi
    rm -f "$HOSTS_DIR/$h.leader" "$HOSTS_DIR/$h.nspawn.pid"
  done
}

case "${1:-}" in
base) base ;;
up) up ;;
down) down ;;
sh) h=$2; shift 2; nsenter -t "$(leader "$h")" -a -- "$@" ;;
*) echo "usage: $0 base | up | down | sh HOST CMD..." >&2; exit 2 ;;
esac
