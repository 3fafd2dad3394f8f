#!/usr/bin/env bash
# Side-by-side load benchmark: Portico configurations against nginx and HAProxy as plain
# reverse proxies and a bare Pingora proxy (the control: examples/bare_pingora.rs, one
# upstream_peer, same profile and allocator), in front of one nginx origin. Run by hand,
# never in CI.
#
#   benches/load/run.sh [-r ROUNDS] [-d SECONDS | -n REQUESTS] [-c CONNECTIONS] [-p PATH] [TARGET...]
#   benches/load/run.sh -m IDLE [TARGET...]
#
# Targets (default: all but metrics and accesslog): nginx haproxy control plain routes1000 hs256
# rs256 ratelimit metrics accesslog observe (both) chain cachehit trace0 trace1 trace100
# (OpenTelemetry spans sampled at 0%, 1%, 100% to an OTLP sink, with the admin listener on
# like metrics) openapi (routes from
# tests/fixtures/storefront.openapi.yaml; POST /v2/orders with a 1 KB JSON body) validate (the
# same with validate.request: every request checked) resilient (outlier
# detection, breaker, retry policy, deadline, concurrency limits). Each round runs every target once, interleaved (A B C A B C ...), so slow
# drifts of a shared machine hit all of them alike. The proxy under test is pinned to CPU
# 0 with one worker thread; origin and wrk share CPU 1. For each target and round it
# prints req/s, p50/p99 latency, CPU-µs per request of the proxy process
# (utime+stime from /proc/PID/stat over the run / requests answered), its peak RSS, and
# errors; then per target the median and min-max over rounds of the CPU ratio to nginx,
# to the bare-Pingora control and to plain Portico in the same round.
#
# PATH is /bench (a 100-byte body, the default) or /4k (a 4 KiB JSON body).
#
# -n REQUESTS sends a fixed number of requests to each target per round (h2load -n, over
# HTTP/1.1 unless -s h2; needs nghttp2-client) instead of loading it for a fixed time
# (wrk -d): every target then does the same work, however fast it is. The two closed-loop
# modes can give different ratios; report both.
#
# -m IDLE measures memory instead: per target, the proxy's PSS with no client, with IDLE
# idle keep-alive connections (each has made one request), and 2 s after they closed;
# printed as KB per idle connection and the share of it returned after close. HAProxy is
# set to 9,500 connections at most: it reserves two descriptors per connection and these
# machines cap a process at 20,000 descriptors, so use -m 9000 when it is among the targets.
# With -s keepalive the connections are HTTPS/1.1, with -s h2 HTTP/2 (one stream each).
#
# A target NAME@LABEL runs configuration NAME with the binary in $PORTICO_BIN_LABEL
# (e.g. plain@glibc with PORTICO_BIN_glibc=/tmp/portico-glibc), to compare builds, and
# with the server lines in $SERVER_EXTRA_LABEL added (e.g. plain@rb0 with
# SERVER_EXTRA_rb0='  read_buffer: 0'), to compare settings; either may be left unset.
#
# SERVER_EXTRA (environment): lines added to Portico's server section, to try a setting,
# e.g. SERVER_EXTRA='  read_buffer: 4KiB'.
#
# -s MODE puts every proxy behind TLS with one certificate (ECDSA P-256, made here with
# openssl; nginx and HAProxy with their defaults plus HTTP/2 by ALPN): MODE keepalive
# measures requests on kept-alive HTTPS connections (wrk), handshake a new TLS
# connection per request (wrk with Connection: close; full handshakes, no resumption),
# h2 requests multiplexed over HTTP/2 (h2load, 10 streams per connection; needs
# nghttp2-client).
#
# Needs: nginx, haproxy, wrk, taskset (Debian: nginx-light haproxy wrk util-linux) and a
# release build of portico (built here when missing).
set -euo pipefail

ROUNDS=5
DURATION=5
COUNT=0
CONNS=32
URL_PATH=/bench
IDLE=0
TLS=""
while getopts "r:d:n:c:p:m:s:h" opt; do
  case $opt in
    r) ROUNDS=$OPTARG ;;
    d) DURATION=$OPTARG ;;
    n) COUNT=$OPTARG ;;
    c) CONNS=$OPTARG ;;
    p) URL_PATH=$OPTARG ;;
    m) IDLE=$OPTARG ;;
    s) TLS=$OPTARG ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(nginx haproxy control plain routes1000 hs256 rs256 ratelimit observe chain cachehit)

# Room for the idle connections of the memory mode (each also holds a client socket here).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$ROOT/target/release/portico
CONTROL=$ROOT/target/release/examples/bare_pingora
for tool in nginx haproxy wrk taskset; do
  command -v $tool >/dev/null || { echo "missing $tool (apt-get install nginx-light haproxy wrk)"; exit 1; }
done
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --bin portico)
[ -x "$CONTROL" ] || (cd "$ROOT" && cargo build --release --example bare_pingora)

[ "$COUNT" -eq 0 ] || command -v h2load >/dev/null || { echo "missing h2load for -n (apt-get install nghttp2-client)"; exit 1; }
WORK=$(mktemp -d /tmp/portico-load.XXXXXX)
SCHEME=http
if [ -n "$TLS" ]; then
  case $TLS in keepalive|handshake|h2) ;; *) echo "-s keepalive|handshake|h2"; exit 2 ;; esac
  [ "$TLS" != h2 ] || command -v h2load >/dev/null || { echo "missing h2load (apt-get install nghttp2-client)"; exit 1; }
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$WORK/tls.key" -out "$WORK/tls.pem" -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
  cat "$WORK/tls.pem" "$WORK/tls.key" >"$WORK/tls-combined.pem"
  SCHEME=https
fi
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1"; return 1
}

# ---- origin: nginx on CPU 1, a 100-byte body ---------------------------------------
ORIGIN=$(free_port)
BODY100=$(printf '%*s' 99 '' | tr ' ' 'x')
mkdir -p "$WORK/origin"
python3 -c 'import json; print(json.dumps([{"id": i, "name": "item-%04d" % i} for i in range(400)])[:4095])' >"$WORK/origin/4k.json"
cat >"$WORK/origin/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/origin/nginx.pid;
error_log $WORK/origin/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$ORIGIN;
    location / { default_type application/json; add_header Cache-Control "max-age=600"; return 200 "$BODY100\n"; }
    location = /4k { default_type application/json; add_header Cache-Control "max-age=600"; alias $WORK/origin/4k.json; }
  }
}
EOF
taskset -c 1 nginx -c "$WORK/origin/nginx.conf" -e "$WORK/origin/error.log" &
PIDS+=($!)
wait_port "$ORIGIN"

# ---- an OTLP/HTTP sink on CPU 1 for the tracing targets: takes every export, answers 200 --
OTLP=$(free_port)
if printf '%s\n' "${TARGETS[@]}" | grep -q '^trace'; then
  cat >"$WORK/otlp_sink.py" <<'PY'
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
  taskset -c 1 python3 "$WORK/otlp_sink.py" "$OTLP" &
  PIDS+=($!)
  wait_port "$OTLP"
fi

# ---- proxies (started in $(...): their output must not hold its pipe open) --------------------------------------------------------------------------
declare -A PORT PID
HS_TOKEN=""
RS_TOKEN=""

start_nginx() {
  local port=$1 dir=$WORK/nginx
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 30000; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }
  server {
    listen 127.0.0.1:$port$( [ -n "$TLS" ] && echo " ssl http2" );
$( [ -n "$TLS" ] && printf '    ssl_certificate %s;\n    ssl_certificate_key %s;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    http2_max_requests 1000000;\n' "$WORK/tls.pem" "$WORK/tls.key" )
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
  taskset -c 0 nginx -c "$dir/nginx.conf" -e "$dir/error.log" >/dev/null 2>&1 &
  echo $!
}

start_haproxy() {
  local port=$1 dir=$WORK/haproxy
  mkdir -p "$dir"
  cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 9500
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout http-keep-alive 300s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:$port$( [ -n "$TLS" ] && echo " ssl crt $WORK/tls-combined.pem alpn h2,http/1.1" )
  default_backend origin
backend origin
  server o1 127.0.0.1:$ORIGIN
EOF
  taskset -c 0 haproxy -f "$dir/haproxy.cfg" -db >"$dir/log" 2>&1 &
  echo $!
}

# Portico's config for a target: shared server/listener/upstream part plus its routes.
portico_config() {
  local target=$1 port=$2 dir=$3
  cat <<EOF
server:
  threads: 1
  pid_file: $dir/portico.pid
  upgrade_sock: $dir/upgrade.sock
  grace_period: 0s
  shutdown_timeout: 1s
  log_level: warn
${SERVER_EXTRA:-}
${4:-}
listeners:
  - address: 127.0.0.1:$port
$( [ -n "$TLS" ] && printf '    tls: {certificates: [{cert: %s, key: %s}]}\n' "$WORK/tls.pem" "$WORK/tls.key" )
upstreams:
  - name: origin
    targets: [{address: "127.0.0.1:$ORIGIN"}]
EOF
  case $target in
    plain)
      printf 'routes:\n  - name: all\n    upstream: origin\n' ;;
    routes1000)
      printf 'routes:\n'
      for i in $(seq 1 999); do printf '  - {name: r%d, match: {path_prefix: /svc%d/}, upstream: origin}\n' "$i" "$i"; done
      printf '  - {name: all, upstream: origin}\n' ;;
    hs256|rs256|chain)
      local alg=HS256 key="secret: \"$(printf 'k%.0s' $(seq 1 40))\""
      if [ "$target" = rs256 ]; then alg=RS256; key="pem_files: [$WORK/rs_pub.pem]"; fi
      cat <<EOF
auth:
  jwt:
    - name: main
      algorithms: [$alg]
      keys: {$key}
      issuer: bench
routes:
  - name: all
    upstream: origin
    access: {providers: [main]}
EOF
      if [ "$target" = chain ]; then
        cat <<EOF
    rate_limits:
      - {name: big, requests: 1000000000, per: 1s, key: consumer}
admin: {address: "127.0.0.1:$(free_port)"}
access_log: $dir/access.log
EOF
      fi ;;
    ratelimit)
      printf 'routes:\n  - name: all\n    upstream: origin\n    rate_limits:\n      - {name: big, requests: 1000000000, per: 1s, key: client_ip}\n' ;;
    metrics)
      printf 'admin: {address: "127.0.0.1:%s"}\nroutes:\n  - name: all\n    upstream: origin\n' "$(free_port)" ;;
    accesslog)
      printf 'access_log: %s/access.log\nroutes:\n  - name: all\n    upstream: origin\n' "$dir" ;;
    observe)
      printf 'admin: {address: "127.0.0.1:%s"}\naccess_log: %s/access.log\nroutes:\n  - name: all\n    upstream: origin\n' "$(free_port)" "$dir" ;;
    resilient)
      cat <<EOF
  - name: guarded
    targets: [{address: "127.0.0.1:$ORIGIN"}]
    max_concurrent: 100000
    outlier_detection: {consecutive_failures: 5}
    circuit_breaker: {error_rate: 50, min_requests: 20}
routes:
  - name: all
    upstream: guarded
    timeout: 10s
    max_concurrent: 100000
    retry: {attempts: 2, try_timeout: 5s}
EOF
      ;;
    openapi|validate)
      printf 'apis:\n  - name: store\n    spec: %s\n    base_path: /v2\n    upstream: origin\n' \
        "$ROOT/tests/fixtures/storefront.openapi.yaml"
      [ "$target" = validate ] && printf '    validate: {request: true}\n'
      ;;
    cachehit)
      printf 'cache: {memory: 16MiB}\nroutes:\n  - name: all\n    upstream: origin\n    cache: {default_ttl: 60s}\n' ;;
    trace0|trace1|trace100)
      # Spans to the sink; the admin listener (metrics on, like the metrics target) shows
      # what was exported and dropped.
      local ratio=0.0
      [ "$target" = trace1 ] && ratio=0.01
      [ "$target" = trace100 ] && ratio=1.0
      printf 'tracing:\n  otlp: {endpoint: "http://127.0.0.1:%s"}\n  sample: {ratio: %s}\n' "$OTLP" "$ratio"
      printf 'admin: {address: "127.0.0.1:%s"}\nroutes:\n  - name: all\n    upstream: origin\n' "$(free_port)" ;;
  esac
}

# Tokens for the JWT targets, made once with openssl and python3 (stdlib only).
# The body and wrk script of the openapi and validate targets (1 KB, valid for placeOrder).
make_api_call() {
  python3 - "$WORK/order.json" <<'PY'
import json, sys
order = {"cart_id": "0f8b7a9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "coupon": "SPRING24",
         "shipping": {"line1": "1 Main Street", "line2": "Flat 4", "city": "Oslo",
                      "postal_code": "0150", "country": "NO", "instructions": "Leave at the door"},
         "gift_message": "x" * 780}
open(sys.argv[1], "w").write(json.dumps(order))
PY
  cat >"$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = io.open("$WORK/order.json"):read("*a")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Idempotency-Key"] = "0123456789abcdef0123"
LUA
}

make_tokens() {
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/rs_key.pem" 2>/dev/null
  openssl rsa -in "$WORK/rs_key.pem" -pubout -out "$WORK/rs_pub.pem" 2>/dev/null
  local claims
  claims=$(printf '{"iss":"bench","sub":"user-1","exp":%d}' $(( $(date +%s) + 86400 )))
  b64() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
  local hdr body
  hdr=$(printf '{"alg":"HS256","typ":"JWT"}' | b64); body=$(printf '%s' "$claims" | b64)
  HS_TOKEN="$hdr.$body.$(printf '%s' "$hdr.$body" | openssl dgst -sha256 -hmac "$(printf 'k%.0s' $(seq 1 40))" -binary | b64)"
  hdr=$(printf '{"alg":"RS256","typ":"JWT"}' | b64)
  RS_TOKEN="$hdr.$body.$(printf '%s' "$hdr.$body" | openssl dgst -sha256 -sign "$WORK/rs_key.pem" -binary | b64)"
}

start_target() {
  local t=$1 port=$2
  case $t in
    nginx) start_nginx "$port" ;;
    haproxy) start_haproxy "$port" ;;
    control)
      [ -z "$TLS" ] || { echo "the control is plain HTTP only" >&2; exit 2; }
      taskset -c 0 "$CONTROL" "127.0.0.1:$port" "127.0.0.1:$ORIGIN" >/dev/null 2>"$WORK/control.log" &
      echo $! ;;
    *)
      # NAME@LABEL: configuration NAME run by the binary in $PORTICO_BIN_LABEL, to compare
      # two builds in one interleaved run.
      local dir=$WORK/$t bin=$BIN extra=""
      if [[ $t == *@* ]]; then
        local var="PORTICO_BIN_${t#*@}" settings="SERVER_EXTRA_${t#*@}"
        bin=${!var:-$BIN}
        extra=${!settings:-}
        [ -n "${!var:-}${extra}" ] || { echo "set $var or $settings for $t" >&2; exit 2; }
      fi
      mkdir -p "$dir"
      portico_config "${t%@*}" "$port" "$dir" "$extra" >"$dir/portico.yaml"
      taskset -c 0 "$bin" run -c "$dir/portico.yaml" >/dev/null 2>"$dir/error.log" &
      echo $! ;;
  esac
}

make_tokens
make_api_call
for t in "${TARGETS[@]}"; do
  PORT[$t]=$(free_port)
  PID[$t]=$(start_target "$t" "${PORT[$t]}")
  PIDS+=("${PID[$t]}")
done
for t in "${TARGETS[@]}"; do wait_port "${PORT[$t]}"; done

# The process whose CPU counts: nginx's worker (the master idles), else the one started.
cpu_pid() {
  local t=$1 p=${PID[$1]}
  if [ "$t" = nginx ]; then pgrep -P "$p" | head -1; else echo "$p"; fi
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)

header_for() {
  case ${1%@*} in
    hs256|chain) echo "Authorization: Bearer $HS_TOKEN" ;;
    rs256) echo "Authorization: Bearer $RS_TOKEN" ;;
    *) echo "X-Bench: 1" ;;
  esac
}

# Proportional set size of a process, KB.
pss() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }

if [ "$IDLE" -gt 0 ]; then
  echo "memory with $IDLE idle keep-alive ${TLS:+TLS ($TLS) }connections (PSS of the proxy process, KB)"
  for t in "${TARGETS[@]}"; do
    p=$(cpu_pid "$t")
    python3 - "${PORT[$t]}" "$IDLE" "$p" "$t" "$TLS" <<'PY'
import socket, ssl, subprocess, sys, time
port, n, pid, name, tls = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"] if tls == "h2" else ["http/1.1"])
# HTTP/2 (with -s h2): the preface, empty SETTINGS, then GET /bench on stream 1 as one
# HEADERS frame (END_STREAM | END_HEADERS), its fields in HPACK from the static table
# (:method GET, :scheme https) and as literals (:path, :authority).
def literal(index, value):
    return bytes([0x40 | index, len(value)]) + value
H2_FIELDS = b"\x82\x87" + literal(4, b"/bench") + literal(1, b"x")
H2_REQUEST = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
              + len(H2_FIELDS).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + H2_FIELDS)
def h2_answered(s):
    """Read frames until stream 1 ends; acknowledge the server's SETTINGS."""
    buf = b""
    while True:
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            length, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
            stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            buf = buf[9 + length:]
            if kind == 4 and not flags & 1:
                s.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
            if stream == 1 and kind in (0, 1) and flags & 1:
                return True
        chunk = s.recv(65536)
        if not chunk:
            return False
        buf += chunk
def pss():
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1])
base = pss()
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if tls:
        s = ctx.wrap_socket(s, server_hostname="localhost")
    s.sendall(H2_REQUEST if tls == "h2" else b"GET /bench HTTP/1.1\r\nHost: x\r\n\r\n")
    conns.append(s)
for s in conns:  # read each response so every connection sits idle, kept alive
    if tls == "h2":
        assert h2_answered(s), "an HTTP/2 connection closed before its answer"
        continue
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
time.sleep(1)
idle = pss()
for s in conns:
    s.close()
time.sleep(2)
after = pss()
per = (idle - base) / n
returned = (idle - after) / max(idle - base, 1) * 100
print(f"{name:<11} base {base:>8}  idle {idle:>8}  after close {after:>8}  "
      f"= {per * 1024 / 1024:6.2f} KB per idle connection, {returned:5.1f}% returned")
PY
  done
  exit 0
fi

RESULTS=$WORK/results.tsv
printf 'round\ttarget\treq_s\tp50\tp99\tcpu_us_per_req\tpeak_rss_kb\terrors\n' >"$RESULTS"
# One load run against a target, SECONDS long or (with "count") COUNT requests: prints
# "requests req/s p50 p99 errors".
load() {
  local t=$1 secs=$2 mode=${3:-time} url="$SCHEME://127.0.0.1:${PORT[$1]}$URL_PATH" out
  if [ "$TLS" = h2 ]; then
    local amount=(-D"$secs")
    [ "$mode" = count ] && amount=(-n"$COUNT")
    out=$(taskset -c 1 h2load -t1 -c"$CONNS" -m10 "${amount[@]}" -H "$(header_for "$t")" "$url" 2>&1)
    awk '/^finished in/ {rps=$4} /^requests:/ {done=$6; ok=$8; failed=$10 + $12}
         END {printf "%d %s - - %d\n", done, rps, failed + (done - ok)}' <<<"$out"
    return
  fi
  local extra=()
  [ "$TLS" = handshake ] && extra=(-H "Connection: close")
  if [[ ${t%@*} == openapi || ${t%@*} == validate ]]; then
    # A typical API call: POST /v2/orders with a header parameter and a 1 KB JSON body.
    url="$SCHEME://127.0.0.1:${PORT[$1]}/v2/orders"
    if [ "$mode" = count ]; then
      extra+=(-d "$WORK/order.json" -H "Content-Type: application/json" -H "Idempotency-Key: 0123456789abcdef0123")
    else
      extra+=(-s "$WORK/post.lua")
    fi
  fi
  if [ "$mode" = count ]; then
    # A fixed count: h2load speaking HTTP/1.1, the same connections, one thread.
    out=$(taskset -c 1 h2load --h1 -t1 -c"$CONNS" -n"$COUNT" -H "$(header_for "$t")" "${extra[@]}" "$url" 2>&1)
    awk '/^finished in/ {rps=$4} /^requests:/ {done=$6; ok=$8; failed=$10 + $12}
         END {printf "%d %s - - %d\n", done, rps, failed + (done - ok)}' <<<"$out"
    return
  fi
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${secs}s" --latency -H "$(header_for "$t")" "${extra[@]}" "$url")
  awk '/requests in/ {n=$1} /Requests\/sec/ {rps=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2}
       /Non-2xx/ {e+=$NF} /Socket errors/ {gsub(/[^0-9 ]/," "); e+=$1+$2+$3+$4}
       END {printf "%d %s %s %s %d\n", n, rps, p50, p99, e}' <<<"$out"
}

for t in "${TARGETS[@]}"; do   # warm-up: connections, caches, JIT-free but page-faults
  load "$t" 1 >/dev/null
done
for r in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    p=$(cpu_pid "$t")
    before=$(cpu_ticks "$p")
    read -r reqs rps p50 p99 errs < <(load "$t" "$DURATION" "$([ "$COUNT" -gt 0 ] && echo count || echo time)")
    after=$(cpu_ticks "$p")
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$p/status")
    cpu=$(awk -v a="$before" -v b="$after" -v n="$reqs" -v tck="$TCK" 'BEGIN {printf "%.1f", (b-a)/tck*1e6/n}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$rps" "$p50" "$p99" "$cpu" "$rss" "$errs" >>"$RESULTS"
    printf 'round %s  %-10s %10s req/s  p50 %-8s p99 %-8s %7s CPU-us/req  peak RSS %6s KB  errors %s\n' \
      "$r" "$t" "$rps" "$p50" "$p99" "$cpu" "$rss" "$errs"
  done
done

echo
echo "CPU-us/request relative to nginx, the bare-Pingora control and plain Portico in the same round: median [min-max]; req/s median"
python3 - "$RESULTS" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {}
for r in rows:
    by.setdefault(r["round"], {})[r["target"]] = r
targets = list(dict.fromkeys(r["target"] for r in rows))
for t in targets:
    cpu = [float(by[k][t]["cpu_us_per_req"]) for k in by if t in by[k]]
    rps = [float(by[k][t]["req_s"]) for k in by if t in by[k]]
    line = f"{t:<11} cpu {statistics.median(cpu):7.1f} us/req  {statistics.median(rps):10.0f} req/s"
    if "nginx" in targets:
        ratios = [float(by[k][t]["cpu_us_per_req"]) / float(by[k]["nginx"]["cpu_us_per_req"])
                  for k in by if t in by[k] and "nginx" in by[k]]
        line += f"  x nginx {statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"
    if "control" in targets and t != "control":
        ratios = [float(by[k][t]["cpu_us_per_req"]) / float(by[k]["control"]["cpu_us_per_req"])
                  for k in by if t in by[k] and "control" in by[k]]
        line += f"  x control {statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"
    if "plain" in targets and t != "plain":
        ratios = [float(by[k][t]["cpu_us_per_req"]) / float(by[k]["plain"]["cpu_us_per_req"])
                  for k in by if t in by[k] and "plain" in by[k]]
        line += f"  x plain {statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"
    print(line)
EOF
for t in "${TARGETS[@]}"; do
  case ${t%@*} in
    trace*)
      admin=$(sed -n 's/^admin: {address: "\(.*\)"}$/\1/p' "$WORK/$t/portico.yaml")
      echo "$t spans: $(curl -s "http://$admin/metrics" | grep '^portico_trace_spans_total' | tr '\n' ' ')" ;;
  esac
done
echo "raw results: $RESULTS"
