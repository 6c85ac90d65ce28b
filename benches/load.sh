#!/usr/bin/env bash
# benches/load.sh [connections=64] [seconds=10] — credgate's half of the peer comparison (../shared/peers/README.md).
#
# Builds credgate (the profile-guided release build, see PGO below), runs it like the nginx header-rewrite peer
# (nginx-proxy, :18082): plain HTTP on 127.0.0.1:18090, forwarding to the peers' origin (http://127.0.0.1:18080) with
# a static credential `Authorization: Bearer upstream-secret-token` that replaces the caller's, route `/` with
# `auth = "none"`. The gateway is pinned to CPU 1 with taskset (wrk and the origin sit on CPU 0, as for every peer),
# then the peers' bench.sh drives it and prints its one summary line. Run nginx-proxy through the same bench.sh in
# the same sitting to compare (`../shared/peers/bench.sh http://127.0.0.1:18082/`).
#
# Needs the peers running (`../shared/peers/run-peers.sh start`). Knobs: GATEWAY_CPU (default 1), PORT (18090),
# ORIGIN (http://127.0.0.1:18080), PEERS (peers folder), TLS=1 (listen with the peers' keys/tls.crt and bench the
# https:// URL instead), NAME (label for bench.sh, default credgate-static[-https]).
# AUTH=jwt: the route requires a caller JWT configured like the HAProxy peer: static PEM key keys/rsa.pub with the kid
#   the peers' tokens carry (rsa-1), iss https://idp.test/, aud credgate, RS256 only (NAME default credgate-jwt).
# CRED=oauth2: the injected Authorization is an OAuth2 client-credentials token from a loopback token endpoint
#   (python3, one grant per hour) instead of the static header (NAME default credgate-oauth2).
# FLOOR=1: bench examples/hyper_floor instead: hyper's server and client codecs with nothing else, the least any
#   hyper-based proxy can cost (NAME default hyper-floor).
# PGO=1 (default): bench the profile-guided build from scripts/build-pgo.sh, the production build; it is rebuilt
#   when a source is newer than it. PGO=0: a plain `cargo build --release`.
# POOL=hyper_util, TIMER=tokio: the standard fallbacks for the upstream pool and the timer ([server] keys).
# CREDGATE_BIN=path: bench that binary as is (no build), e.g. to compare two builds in one sitting.
# FLEET=1: in fleet mode ([cluster]) against a throwaway redis-server on 127.0.0.1:PORT+3 (on CPU 0 with wrk and the
#   origin), to compare with the same row on a single node; with CRED=oauth2 the token is the fleet's.
# ADMIN=1: with an admin listener (127.0.0.1:PORT+2), which turns on the request and upstream time histograms.
# CALLGRIND=1: run the gateway under valgrind's callgrind and print its user-space instructions per request instead
#   (CACHESIM=1 as well: and its L1 instruction and data cache misses per request).
# The access log is off (RUST_LOG=warn), as nginx's is in its peer config.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS:-$root/../shared/peers}
port=${PORT:-18090}
origin=${ORIGIN:-http://127.0.0.1:18080}
cpu=${GATEWAY_CPU:-1}
tls=${TLS:-0}
auth=${AUTH:-none}
cred=${CRED:-static}

[ -x "$peers/bench.sh" ] || { echo "no peers harness at $peers (set PEERS)" >&2; exit 1; }
curl -fsS -o /dev/null "$origin/" || {
  echo "origin $origin does not answer; start the peers: $peers/run-peers.sh start" >&2; exit 1; }
if curl -s -o /dev/null "http://127.0.0.1:$port/" || curl -sk -o /dev/null "https://127.0.0.1:$port/"; then
  echo "something already listens on 127.0.0.1:$port" >&2; exit 1
fi

target=${CARGO_TARGET_DIR:-$root/target}
if [ -n "${CREDGATE_BIN:-}" ] || [ "${FLOOR:-0}" = 1 ]; then
  bin=${CREDGATE_BIN:-}
elif [ "${PGO:-1}" = 1 ]; then
  # The profile-guided build, rebuilt when a source is newer than it (scripts/build-pgo.sh takes minutes).
  bin=$target/pgo/release/credgate
  if [ ! -x "$bin" ] || [ -n "$(cd "$root" && find src examples Cargo.toml Cargo.lock -newer "$bin" -print -quit)" ]; then
    "$root/scripts/build-pgo.sh" >&2
  fi
else
  (cd "$root" && cargo build --release --quiet)
  bin=$target/release/credgate
fi

work=$(mktemp -d)
pid=
token_pid=
redis_pid=
cleanup() {
  [ -n "$token_pid" ] && kill "$token_pid" 2>/dev/null
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ "$tls" = 1 ]; then
  listener="cert = \"$peers/keys/tls.crt\"
key = \"$peers/keys/tls.key\""
  url="https://127.0.0.1:$port/"
  suffix=-https
else
  listener="tls = false"
  url="http://127.0.0.1:$port/"
  suffix=
fi
label=credgate-static
route_auth='auth = "none"'
issuers=
if [ "$auth" = jwt ]; then
  label=credgate-jwt
  route_auth='auth = "jwt"'
  issuers="[[issuers]]
name = \"peers\"
issuer = \"https://idp.test/\"
audiences = [\"credgate\"]
algorithms = [\"RS256\"]
keys = [{ file = \"$peers/keys/rsa.pub\", kid = \"rsa-1\" }]"
fi
credential="[credentials.origin]
kind = \"static\"
allowed_hosts = [\"127.0.0.1\"]
headers = { \"Authorization\" = \"Bearer upstream-secret-token\" }"
if [ "$cred" = oauth2 ]; then
  label=$label-oauth2
  tport=$((port + 1))
  python3 - "$tport" > "$work/token.log" 2>&1 <<'PY' &
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({"access_token": "upstream-oauth2-token", "token_type": "Bearer", "expires_in": 3600}).encode()
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
  token_pid=$!
  credential="[credentials.origin]
kind = \"oauth2_client_credentials\"
allowed_hosts = [\"127.0.0.1\"]
token_url = \"http://127.0.0.1:$tport/token\"
client_id = \"bench\"
client_secret = \"bench-secret\""
fi
if [ "${FLEET:-0}" = 1 ]; then label=$label-fleet; fi
name=${NAME:-$label$suffix}
admin=""
if [ "${ADMIN:-0}" = 1 ]; then
  admin="[admin]
address = \"127.0.0.1:$((port + 2))\""
fi
cluster=""
if [ "${FLEET:-0}" = 1 ]; then
  rport=$((port + 3))
  taskset -c 0 redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
    > "$work/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 1 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$rport" ping >/dev/null || { echo "redis-server did not start:" >&2; cat "$work/redis.log" >&2; exit 1; }
  cluster="[cluster]
redis_url = \"redis://127.0.0.1:$rport\"
node_id = \"bench\"
encryption_key = \"$(head -c 32 /dev/urandom | base64)\""
fi

cat > "$work/config.toml" <<EOF
[server]
shutdown_grace = "2s"
upstream_pool = "${POOL:-credgate}"
timer = "${TIMER:-credgate}"

[[listeners]]
address = "127.0.0.1:$port"
$listener

$admin
$cluster
[upstreams.origin]
url = "$origin"

$credential

$issuers

[[routes]]
name = "origin"
path_prefix = "/"
upstream = "origin"
credential = "origin"
$route_auth
EOF

run=(taskset -c "$cpu")
if [ "${FLOOR:-0}" = 1 ]; then
  (cd "$root" && cargo build --release --quiet --example hyper_floor)
  name=${NAME:-hyper-floor}
  serve=("${CARGO_TARGET_DIR:-$root/target}/release/examples/hyper_floor" "127.0.0.1:$port" "${origin#http://}")
else
  "$bin" check --config "$work/config.toml" >/dev/null
  serve=("$bin" run --config "$work/config.toml")
fi
# CALLGRIND=1: count the gateway's own (user-space) instructions per request instead of timing it. Deterministic
# where the timed figures are noisy, so it compares two builds; it says nothing about the kernel's share.
# CACHESIM=1 as well: simulate the caches too (32 KiB L1s), and print L1 instruction and data misses per request.
if [ "${CALLGRIND:-0}" = 1 ]; then
  run+=(valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.%p")
  if [ "${CACHESIM:-0}" = 1 ]; then run+=(--cache-sim=yes); fi
fi
RUST_LOG=warn "${run[@]}" "${serve[@]}" 2>"$work/credgate.log" &
pid=$!

probe=(-H "X-Probe: 1")
[ "$auth" = jwt ] && probe=(-H "Authorization: Bearer $("$peers/mktoken.py")")
# Wait (at most 30 s: valgrind starts slowly) until the gateway answers through to the origin.
for _ in $(seq 1 300); do
  if curl -fsSk "${probe[@]}" -o /dev/null "$url"; then break; fi
  kill -0 "$pid" 2>/dev/null || { echo "credgate exited:" >&2; cat "$work/credgate.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsSk "${probe[@]}" -o /dev/null "$url" || { echo "credgate does not answer on $url" >&2; cat "$work/credgate.log" >&2; exit 1; }

if [ "${CALLGRIND:-0}" = 1 ]; then
  jwt=$("$peers/mktoken.py")
  load() { JWT=$jwt wrk -t1 -c16 -d"$1" -s "$peers/wrk/auth.lua" "$url" | awk '/requests in/ {print $1}'; }
  load 2s >/dev/null                                   # warm: connections open, tokens cached
  callgrind_control -z "$pid" >/dev/null
  n=$(load 4s)
  callgrind_control -d "$pid" >/dev/null
  ir=$(awk '/^summary:/ {print $2}' "$work"/callgrind.*.1)
  echo "$name instructions/request=$((ir / n)) (user space, callgrind; $n requests over 16 connections)"
  if [ "${CACHESIM:-0}" = 1 ]; then
    awk -v n="$n" '/^events:/ {for (i = 2; i <= NF; i++) e[i] = $i}
      /^summary:/ {for (i = 2; i <= NF; i++) if (e[i] ~ /^[ID]1m/) printf "%s/request=%d ", e[i], $i / n; print ""}' \
      "$work"/callgrind.*.1
  fi
  exit 0
fi
NAME=$name "$peers/bench.sh" "$url" "$@"
