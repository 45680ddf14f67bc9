#!/usr/bin/env bash
# Installs the system packages the gateway builds against (Debian/Ubuntu), only those missing.
set -euo pipefail
# postgresql: the server scripts/with-postgres.sh starts for the shared-log tests (no system
# cluster is created or started: the tests run their own in a temporary directory).
pkgs=(libopenblas-dev libsqlite3-dev libssl-dev libcurl4-openssl-dev postgresql)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    $SUDO mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
