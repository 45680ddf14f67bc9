#!/usr/bin/env bash
# Runs a command with a private PostgreSQL server, then stops the server and deletes its files.
#
#   scripts/with-postgres.sh swift test --skip-build
#
# The server (Debian's postgresql package; scripts/install-deps.sh installs it) gets a fresh
# data directory under $TMPDIR, listens on 127.0.0.1 at a free port and on a unix socket in that
# directory, and requires a password (scram-sha-256). initdb refuses to run as root, so as root
# the server runs as the `postgres` user. The command sees:
#   GATEWAY_TEST_POSTGRES_URL   postgres://postgres:<password>@127.0.0.1:<port>/postgres?sslmode=disable
#   GATEWAY_TEST_POSTGRES_CTL   a script: `stop` (fast shutdown) or `start` this server again
set -euo pipefail

bindir=""
for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && bindir="$d"; done
if [ -z "$bindir" ]; then
  echo "with-postgres.sh: no PostgreSQL server found (run scripts/install-deps.sh)" >&2
  exit 1
fi

dir="$(mktemp -d "${TMPDIR:-/tmp}/gw-pg.XXXXXX")"
chmod 755 "$dir"
password="gw-test-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$password" > "$dir/pwfile"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres: "$dir" "$dir/pwfile"
  as_pg=(runuser -u postgres --)
fi
chmod 600 "$dir/pwfile"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

"${as_pg[@]}" "$bindir/initdb" -D "$dir/data" -U postgres --auth=scram-sha-256 --pwfile="$dir/pwfile" \
  --no-sync -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
rm -f "$dir/pwfile"
cat > "$dir/ctl.sh" <<CTL
#!/usr/bin/env bash
# stop | start the test server (scripts/with-postgres.sh)
set -euo pipefail
case "\$1" in
  start) ${as_pg[*]} "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
           -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null ;;
  stop)  ${as_pg[*]} "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null ;;
  *) echo "usage: \$0 start|stop" >&2; exit 2 ;;
esac
CTL
chmod 755 "$dir/ctl.sh"

cleanup() {
  "$dir/ctl.sh" stop 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
"$dir/ctl.sh" start

export GATEWAY_TEST_POSTGRES_URL="postgres://postgres:${password}@127.0.0.1:${port}/postgres?sslmode=disable"
export GATEWAY_TEST_POSTGRES_CTL="$dir/ctl.sh"
"$@"
