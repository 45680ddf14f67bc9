#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages the gateway needs, only those missing. Works as root and
# as a user with sudo (`scripts/install-deps.sh` or `sudo scripts/install-deps.sh`).
#
#   scripts/install-deps.sh           # what building and running the gateway needs
#   scripts/install-deps.sh --tests   # and what the test suite needs (scripts/test.sh passes it)
#
# Add a package to the list it belongs to; nothing else needs changing.
set -euo pipefail

# Building and running: the system libraries the gateway links.
build_pkgs=(libopenblas-dev libsqlite3-dev libssl-dev libcurl4-openssl-dev)
# The tests only: python3-venv for the virtual environment scripts/setup-venv.sh makes from
# Debian's python3 (system pip refuses to install: the system Python is "externally managed");
# git for the tests of the admin-token guard; chromium and chromium-driver, the real headless
# browser the console tests drive through selenium (ConsoleTests); postgresql for the server
# scripts/with-postgres.sh starts for the shared-log tests (no system cluster is created).
test_pkgs=(python3-venv git chromium chromium-driver postgresql)

pkgs=("${build_pkgs[@]}")
for arg in "$@"; do
  case "$arg" in
    --tests) pkgs+=("${test_pkgs[@]}") ;;
    *) echo "install-deps.sh: unknown argument $arg (only --tests)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps.sh: run as root or install sudo; missing: ${missing[*]}" >&2; exit 1; }
  as_root=(sudo)
fi
if [[ " ${missing[*]} " == *" postgresql "* ]] && [ ! -e /etc/postgresql-common/createcluster.conf ]; then
  "${as_root[@]}" mkdir -p /etc/postgresql-common
  echo "create_main_cluster = false" | "${as_root[@]}" tee /etc/postgresql-common/createcluster.conf >/dev/null
fi
echo "installing: ${missing[*]}"
# `env` inside sudo: sudo resets the environment, so the variable must be set on its far side.
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
