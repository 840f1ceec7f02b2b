#!/usr/bin/env bash
# Installs and starts what Corral and its tests need on a Debian 12 host without systemd:
# libvirt 11 + QEMU 10 from bookworm-backports (Debian 12's QEMU 7.2 corrupts busy guests during TCG live
# migration), PostgreSQL 15, the tiny test guest, a Debian 12 cloud guest (mmdebstrap), and for the tests a
# local OCI registry (docker-registry; the tests start their own) with SYSLINUX/mtools to make the test guest a
# self-booting containerDisk. Idempotent; fails loudly when a daemon does not come up.
#   CORRAL_SETUP_POSTGRES=0  skip PostgreSQL (the embedded default uses SQLite)
#   CORRAL_SETUP_GUEST=0     skip building the guest images
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log() { printf '\033[1m[setup-host]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[setup-host] FATAL:\033[0m %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (installs packages and starts libvirtd)"

export DEBIAN_FRONTEND=noninteractive
B=bookworm-backports
if [ ! -f /etc/apt/sources.list.d/bookworm-backports.sources ]; then
  cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
need_install=0
dpkg-query -W -f='${Version}' libvirt-daemon-driver-qemu 2>/dev/null | grep -q bpo12 || need_install=1
dpkg-query -W -f='${Version}' libvirt-daemon-driver-network 2>/dev/null | grep -q bpo12 || need_install=1
for p in postgresql python3-venv python3-dev gcc pkg-config iproute2 cpio kmod e2fsprogs tini \
  docker-registry syslinux mtools dosfstools dnsmasq-base nftables iptables iputils-ping mmdebstrap openssh-client tmux; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_install=1
done
if [ "$need_install" = 1 ]; then
  log "installing libvirt/QEMU from $B, PostgreSQL and build tools"
  apt-get update -q
  # pkg/suite (not -t suite): other dependencies come from stable, so systemd stays at Debian 12's version;
  # without Recommends the versioned QEMU dependencies must be named from backports too.
  apt-get install -y -q -o Dpkg::Options::=--force-confnew --no-install-recommends \
    qemu-system-x86/$B qemu-system-common/$B qemu-system-data/$B seabios/$B qemu-utils/$B \
    libvirt-daemon/$B libvirt-daemon-log/$B libvirt-daemon-driver-qemu/$B libvirt-daemon-driver-nodedev/$B \
    libvirt-daemon-driver-storage/$B libvirt-daemon-driver-network/$B libvirt-clients/$B libvirt-dev/$B \
    postgresql postgresql-contrib pkg-config python3-venv python3-dev gcc iproute2 cpio kmod e2fsprogs \
    busybox-static ca-certificates tini docker-registry syslinux syslinux-common mtools dosfstools \
    dnsmasq-base nftables iptables iputils-ping mmdebstrap openssh-client tmux >/dev/null
fi
# The TypeScript check of the OpenAPI document (tests/integration/test_sdk.py) runs on Node.js and npm.
if ! command -v npm >/dev/null; then
  log "installing Node.js and npm"
  apt-get update -q && apt-get install -y -q --no-install-recommends nodejs npm >/dev/null
fi

# QEMU as root: with the packaged libvirt-qemu user every start costs ~4 s more on these machines.
grep -q '^user = "root"' /etc/libvirt/qemu.conf || \
  printf 'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nremember_owner = 0\n' >> /etc/libvirt/qemu.conf
mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu

# libvirt's nftables firewall fills in the checksums of DHCP replies with tc's csum action. A kernel built
# without it (CONFIG_NET_ACT_CSUM) cannot start a NAT network that way; libvirt's iptables backend does the
# same with the CHECKSUM target. Probed on a scratch bridge, as libvirt would set it up.
tc_csum_works() {
  ip link add name crlprobe0 type bridge 2>/dev/null || return 0 # cannot probe: libvirt's default stays
  local works=0
  { tc qdisc add dev crlprobe0 root handle 1: htb default 2 &&
    tc filter add dev crlprobe0 prio 2 protocol ip parent 1: u32 match ip dport 68 ffff action csum ip and udp
  } >/dev/null 2>&1 || works=1
  ip link del crlprobe0
  return "$works"
}
restart_libvirtd=0
if ! grep -q '^firewall_backend' /etc/libvirt/network.conf 2>/dev/null && ! tc_csum_works; then
  log "this kernel has no tc csum action: libvirt's networks use the iptables firewall backend"
  echo 'firewall_backend = "iptables"' >>/etc/libvirt/network.conf
  restart_libvirtd=1
fi

# Alive and not a zombie: an orphaned daemon killed a moment ago waits a second or two for PID 1 to reap it.
running() {
  local pid; pid=$(cat "$1" 2>/dev/null) || return 1
  case "$(ps -o stat= -p "$pid" 2>/dev/null)" in "" | Z*) return 1 ;; esac
}
running /run/virtlogd.pid || { log "starting virtlogd"; virtlogd -d; }
# libvirt waits for a stopped QEMU's PID to vanish. QEMU is daemonized, so PID 1 reaps it, and PID 1 on
# these machines reaps orphans only every second or two (systemd does at once): every stop took that long.
# libvirtd in the foreground under a subreaper (tini -s) gets its QEMUs reaped at once.
start_libvirtd() { setsid tini -s -- libvirtd </dev/null >>/var/log/libvirt/libvirtd.out 2>&1 & }
if ! running /run/libvirtd.pid; then
  log "starting libvirtd"
  start_libvirtd
  restart_libvirtd=0 # it reads the settings above as it starts
fi
# Wait for an answer, not for the socket: a libvirtd killed without cleanup (a rebooted container keeps
# /run) leaves its socket behind, and connecting to that is refused until the new daemon replaces it.
for _ in $(seq 1 300); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.1; done
# The first connection probes QEMU's capabilities (~12 s); doing it here keeps it out of the tests.
virsh -c qemu:///system version >/dev/null || {
  tail -n 20 /var/log/libvirt/libvirtd.out >&2 || true
  die "libvirtd does not answer on qemu:///system (its output above)"
}
virsh -c qemu:///system domcapabilities --virttype qemu >/dev/null || die "libvirtd has no QEMU (TCG) support"
# libvirt loads its network driver (Corral's NAT network on every node) and its settings when it starts: a
# libvirtd that started before the driver was installed or the settings changed is restarted (its guests
# keep running).
if [ "$restart_libvirtd" = 1 ] || ! virsh -c qemu:///system net-list --all >/dev/null 2>&1; then
  log "restarting libvirtd to load its network driver and settings"
  pid=$(cat /run/libvirtd.pid)
  kill "$pid"
  # A daemon stopped while it still probes the host gives up only after its own 15-s shutdown timeout, and
  # a new one cannot take the PID file until it is gone.
  for _ in $(seq 1 300); do running /run/libvirtd.pid || break; sleep 0.1; done
  if running /run/libvirtd.pid; then
    kill -9 "$pid"
    for _ in $(seq 1 50); do running /run/libvirtd.pid || break; sleep 0.1; done
  fi
  start_libvirtd
  for _ in $(seq 1 300); do virsh -c qemu:///system net-list --all >/dev/null 2>&1 && break; sleep 0.1; done
  virsh -c qemu:///system net-list --all >/dev/null || die "libvirtd has no network driver (libvirt-daemon-driver-network)"
fi

if [ "${CORRAL_SETUP_POSTGRES:-1}" = 1 ]; then
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  pg_lsclusters -h | grep -q "^$ver main" || pg_createcluster "$ver" main >/dev/null
  pg_lsclusters -h | grep -q "^$ver main .* online" || { log "starting PostgreSQL $ver"; pg_ctlcluster --skip-systemctl-redirect "$ver" main start; }
  for _ in $(seq 1 50); do su postgres -c "psql -Atqc 'select 1'" >/dev/null 2>&1 && break; sleep 0.2; done
  su postgres -c "psql -Atqc 'select 1'" >/dev/null || die "PostgreSQL does not answer"
  # A superuser role, because the test suite creates and drops its own databases.
  su postgres -c "psql -Atqc \"select 1 from pg_roles where rolname='corral'\"" | grep -q 1 || \
    su postgres -c "psql -qc \"create role corral login superuser password 'corral'\""
  su postgres -c "psql -Atqc \"select 1 from pg_database where datname='corral'\"" | grep -q 1 || \
    su postgres -c "psql -qc 'create database corral owner corral'"
fi

if [ "${CORRAL_SETUP_GUEST:-1}" = 1 ]; then
  "$here/build-test-guest.sh"
  "$here/build-cloud-guest.sh"
fi
log "host ready: $(virsh -c qemu:///system version | grep -i 'running hypervisor')"
