#!/usr/bin/env bash
# Installs the system packages the gateway builds against (Debian/Ubuntu), only those missing.
set -euo pipefail
pkgs=(libopenblas-dev libsqlite3-dev libssl-dev libcurl4-openssl-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
