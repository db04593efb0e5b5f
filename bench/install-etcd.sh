#!/usr/bin/env bash
# Installs Debian's etcd (etcd-server, etcd-client) for the benchmarks and the etcd API tests
# (kvd/tests/it/etcd_api.rs: etcdctl against omnikv and etcd), unless `etcd` and `etcdctl`
# are already on PATH. The packaged service is not started (bench/run.py starts its own members
# on loopback ports). usage: bench/install-etcd.sh
set -euo pipefail
if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
  etcd --version | head -1
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# policy-rc.d (containers) or a systemd unit: make sure the packaged etcd does not keep 2379.
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server etcd-client
if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
  $sudo systemctl disable --now etcd
fi
etcd --version | head -1
