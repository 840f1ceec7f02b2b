#!/usr/bin/env bash
# Two libvirt hosts on one machine, for live-migration tests and benchmarks (root only).
# Each node is its own libvirtd in its own network namespace (veth 10.99.0.1 <-> 10.99.0.2) and its own
# mount namespace (private /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt
# bound from $DIR/nodeN), with its own host UUID. /var/lib/corral stays shared: the two nodes see the same
# image catalog and instance volumes, like hosts on shared storage. libvirt cannot tell that this local
# ext4 is shared; Corral checks that the target sees the volumes and says so (VIR_MIGRATE_UNSAFE).
#   management: qemu+unix:///system?socket=$DIR/nodeN/run/libvirt-sock (reachable from the host)
#   migration:  qemu+tcp://10.99.0.N/system (what the source libvirtd dials, peer to peer)
# With --local-storage, node 2 gets its own /var/lib/corral/instances (the image catalog stays shared):
# volumes are local to each node and a migration copies them (tests of copy-storage migration).
# usage: migration-nodes.sh start [--local-storage] | restart-node N | stop | status
set -euo pipefail
DIR=${CORRAL_NODES_DIR:-/tmp/corral-nodes}
NODES="1 2"
die() { printf '[migration-nodes] FATAL: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (network and mount namespaces)"

sock() { echo "$DIR/node$1/run/libvirt-sock"; }

start_node() {
  local n=$1 d=$DIR/node$1 ip=10.99.0.$1
  rm -rf "$d"; mkdir -p "$d"/{etc,run,lib,log,cache,instances}
  if [ "$LOCAL_STORAGE" = 1 ] && [ "$n" = 2 ]; then touch "$d/local-storage"; fi
  cp -a /etc/libvirt/. "$d/etc/"
  # The host's QEMU capability cache spares each node seconds of probing the emulator at start.
  cp -a /var/cache/libvirt/. "$d/cache/" 2>/dev/null || true
  rm -rf "$d/etc/qemu/"*.xml "$d/etc/qemu/autostart" "$d/etc/storage" "$d/etc/qemu/networks" 2>/dev/null || true
  cat > "$d/etc/libvirtd.conf" <<EOF
listen_tls = 0
listen_tcp = 1
listen_addr = "$ip"
auth_tcp = "none"
auth_unix_rw = "none"
unix_sock_group = "root"
unix_sock_rw_perms = "0770"
host_uuid = "00000000-0000-4000-8000-00000000000$n"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
  # No virtlogd or cgroups inside the namespaces; incoming migrations listen on the node's veth address.
  cat > "$d/etc/qemu.conf" <<EOF
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
stdio_handler = "file"
cgroup_controllers = [ ]
migration_address = "$ip"
migration_host = "$ip"
security_driver = "none"
EOF
  launch_node "$n"
}

# libvirtd of node N in its namespaces, on the state already in $DIR/nodeN (so also a node's restart).
launch_node() {
  local n=$1 d=$DIR/node$1 own_volumes=":"
  [ -f "$d/local-storage" ] && own_volumes="mount --bind $d/instances /var/lib/corral/instances"
  ip netns exec "corralmig$n" unshare --mount --propagation private sh -ec "
    mount --bind $d/etc /etc/libvirt
    mount --bind $d/run /run/libvirt
    mount --bind $d/lib /var/lib/libvirt
    mount --bind $d/log /var/log/libvirt
    mkdir -p /var/cache/libvirt && mount --bind $d/cache /var/cache/libvirt
    mkdir -p /var/lib/libvirt/qemu /var/log/libvirt/qemu /var/lib/corral/instances
    $own_volumes
    exec tini -s -- libvirtd --listen -p $d/libvirtd.pid
  " </dev/null >>"$d/log/libvirtd.out" 2>&1 &  # tini: see setup-host.sh
  for _ in $(seq 1 100); do
    virsh -c "qemu+unix:///system?socket=$(sock "$n")" version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "node$n: libvirtd did not answer on $(sock "$n") (see $d/log/libvirtd.log)"
}

stop_all() {
  for n in $NODES; do
    local d=$DIR/node$n uri
    uri="qemu+unix:///system?socket=$(sock "$n")"
    if [ -S "$(sock "$n")" ]; then
      for dom in $(virsh -c "$uri" list --all --name 2>/dev/null); do
        virsh -c "$uri" destroy "$dom" >/dev/null 2>&1 || true
        virsh -c "$uri" undefine "$dom" >/dev/null 2>&1 || true
      done
    fi
    if [ -f "$d/libvirtd.pid" ]; then kill "$(cat "$d/libvirtd.pid")" 2>/dev/null || true; fi
  done
  for n in $NODES; do ip netns del "corralmig$n" 2>/dev/null || true; done  # also removes the veth pair
}

LOCAL_STORAGE=0
[ "${2:-}" = --local-storage ] && LOCAL_STORAGE=1
case "${1:-}" in
start)
  stop_all
  for n in $NODES; do ip netns add "corralmig$n"; done
  ip link add corralveth1 type veth peer name corralveth2
  for n in $NODES; do
    ip link set "corralveth$n" netns "corralmig$n"
    ip -n "corralmig$n" addr add "10.99.0.$n/24" dev "corralveth$n"
    ip -n "corralmig$n" link set lo up
    ip -n "corralmig$n" link set "corralveth$n" up
  done
  for n in $NODES; do start_node "$n" & done
  for n in $NODES; do wait -n || die "a node did not start"; done
  for n in $NODES; do echo "node$n qemu+unix:///system?socket=$(sock "$n") qemu+tcp://10.99.0.$n/system"; done
  ;;
restart-node)
  # A node's libvirtd after it died (tests of a target lost mid-migration): same state, same namespaces.
  n=${2:?usage: $0 restart-node N}
  if [ -f "$DIR/node$n/libvirtd.pid" ]; then kill "$(cat "$DIR/node$n/libvirtd.pid")" 2>/dev/null || true; fi
  launch_node "$n"
  ;;
stop) stop_all ;;
status)
  for n in $NODES; do
    virsh -c "qemu+unix:///system?socket=$(sock "$n")" version >/dev/null 2>&1 && echo "node$n up" || echo "node$n down"
  done
  ;;
*) die "usage: $0 start [--local-storage] | restart-node N | stop | status" ;;
esac
