#!/usr/bin/env bash
# What the console and telemetry tests drive, installed only when missing: a real headless
# browser (Debian's chromium and chromium-driver) with selenium, and opentelemetry-proto to decode
# the OTLP export requests the gateway sends to a receiver on loopback.
set -euo pipefail
pkgs=(chromium chromium-driver)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 -c "import selenium, opentelemetry.proto" 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check selenium opentelemetry-proto
