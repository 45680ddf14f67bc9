#!/usr/bin/env bash
# Makes the test suite's Python: a virtual environment .venv/ (git-ignored) created from
# Debian's /usr/bin/python3, never a pyenv or other python3 that happens to be first on PATH,
# with the packages of scripts/test-requirements.txt. Reinstalls only when that file changed.
# Needs python3-venv (scripts/install-deps.sh --tests). Tests find it as $GATEWAY_TEST_PYTHON,
# or .venv/bin/python3 when that is not set.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
req=scripts/test-requirements.txt
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if ! "$venv/bin/python3" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; then
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing the tests' Python packages into $venv ($req)"
  "$venv/bin/python3" -m pip install -q --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi
