#!/usr/bin/env bash
# The CoAP over DTLS benchmark (docs/benchmarks.md, "CoAP over DTLS"), with
# `moat-bench coap` as the load generator: every client its own UDP socket
# and DTLS 1.2 session (pre-shared key), confirmable requests one at a time.
#
#   post      for each --clients count: confirmable POSTs of a small JSON
#             object (Content-Format 50) to /channels/ID/messages/bench,
#             each answered 2.04 once stored; requests/s, p50/p99
#   observe   for each --observers count: GET + Observe on the channel,
#             then one device POSTs at --rate a second; deliveries/s
#             against rate x observers, notification latency
#   libcoap   the post load against libcoap's coap-server-openssl (PUT
#             /example_data: its example server takes no POST), the
#             protocol and DTLS ceiling on this machine: it stores nothing
#
#   bench/coap.sh [--scenarios post,observe,libcoap] [--clients 1,10,50]
#                 [--observers 100,1000] [--rate 20] [--duration 10]
#                 [--warmup 2] [--max-devices 100] [--work-dir DIR] [--keep]
#                 [--no-build]
#
# Moat is $MOAT_BIN and the generator $MOAT_BENCH_BIN; the one not given is
# built (cargo build --release) unless --no-build. Every Moat run gets a
# fresh server and data directory, a JSON channel and devices made by
# `moat-bench setup` (at most --max-devices; clients beyond share their
# keys, each still its own session). Needs coap-server-openssl (libcoap3-bin,
# for libcoap), curl, python3. Everything listens on 127.0.0.1 on free
# ports; every command is bounded by a timeout.
set -euo pipefail

scenarios=post,observe,libcoap
clients=1,10,50
observers=100,1000
rate=20
duration=10
warmup=2
max_devices=100
work=""
keep=0
build=1

usage() {
  sed -n '2,30s/^# \{0,1\}//p' "$0"
  exit "${1:-0}"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --scenarios) scenarios=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --observers) observers=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --max-devices) max_devices=$2; shift 2 ;;
    --work-dir) work=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done
number() {
  case "$2" in ''|*[!0-9]*) echo "$1: not a number: $2" >&2; exit 2 ;; esac
  if [ "$2" -lt "$3" ] || [ "$2" -gt "$4" ]; then echo "$1: $3 to $4" >&2; exit 2; fi
}
IFS=, read -r -a scenario_list <<<"$scenarios"
IFS=, read -r -a client_list <<<"$clients"
IFS=, read -r -a observer_list <<<"$observers"
for s in "${scenario_list[@]}"; do
  case "$s" in post|observe|libcoap) ;; *) echo "unknown scenario: $s" >&2; exit 2 ;; esac
done
for c in "${client_list[@]}"; do number --clients "$c" 1 2000; done
for o in "${observer_list[@]}"; do number --observers "$o" 1 2000; done
number --rate "$rate" 1 1000
number --duration "$duration" 1 300
number --warmup "$warmup" 0 60
number --max-devices "$max_devices" 1 1000

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tools=(curl python3 timeout getconf)
[[ ",$scenarios," != *",libcoap,"* ]] || tools+=(coap-server-openssl)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (scripts/install-test-deps)" >&2; exit 1; }
done
release=${CARGO_TARGET_DIR:-$root/target}/release
packages=()
[ -n "${MOAT_BIN:-}" ] || packages+=(-p moat)
[ -n "${MOAT_BENCH_BIN:-}" ] || packages+=(-p moat-bench)
if [ "$build" = 1 ] && [ "${#packages[@]}" -gt 0 ]; then
  cargo build --release "${packages[@]}"
fi
moat=${MOAT_BIN:-$release/moat}
bench=${MOAT_BENCH_BIN:-$release/moat-bench}
for b in "$moat" "$bench"; do
  [ -x "$b" ] || { echo "$b is missing: build it, or set MOAT_BIN / MOAT_BENCH_BIN" >&2; exit 1; }
done

# On disk, not tmpfs: a CoAP POST is answered once its message is durable.
[ -n "$work" ] || work=$(mktemp -d "${TMPDIR:-/tmp}/moat-bench-coap.XXXXXX")
mkdir -p "$work"
# A fixed benchmark key and password (moat-bench's defaults), never real ones.
export MOAT_MASTER_KEY=6d6f61742d62656e63682d6d61737465722d6b65792d6e6f742d736563726574
export MOAT_ADMIN_PASSWORD=moat-bench-admin-password
# libcoap's server takes any identity with its one key: a benchmark key.
libcoap_key="moat-bench-psk16"
hz=$(getconf CLK_TCK)

srv_pid=""
stop_server() {
  [ -n "$srv_pid" ] || return 0
  if kill -0 "$srv_pid" 2>/dev/null; then
    kill -TERM "$srv_pid"
    for _ in $(seq 1 300); do # 30 s to stop, then killed
      kill -0 "$srv_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$srv_pid" 2>/dev/null && kill -KILL "$srv_pid"
  fi
  wait "$srv_pid" 2>/dev/null || true
  srv_pid=""
}
cleanup() {
  stop_server
  if [ "$keep" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# A port P with P and P+1 free for both UDP and TCP (libcoap's server
# listens on P for coap and coap+tcp, on P+1 for coaps and coaps+tcp).
free_pair() {
  python3 - <<'EOF'
import socket
for _ in range(50):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    try:
        held = []
        for port in (p, p + 1):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                h = socket.socket(socket.AF_INET, kind); h.bind(("127.0.0.1", port)); held.append(h)
        for h in held: h.close()
        print(p); break
    except OSError:
        for h in held: h.close()
EOF
}

# Datagrams the kernel dropped because a UDP socket's receive buffer was
# full, machine-wide (every UDP socket here is a benchmark's or idle).
rcvbuf_errors() { awk '/^Udp:/ { n++; if (n == 2) print $6 }' /proc/net/snmp; }
# `cpu PID`: its user + system CPU time so far, in clock ticks.
cpu() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
secs() { awk -v t="$1" -v hz="$hz" 'BEGIN { printf "%.1f", t / hz }'; }
# `field LINE KEY`: the value of KEY=value in a RESULT line.
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1" | head -n 1; }

# A fresh Moat: sets srv_pid, coap_addr, https_url, data.
start_moat() { # NAME
  data=$work/$1.data
  local out=$work/$1.server.out
  rm -rf "$data"
  MOAT_LOG=warn "$moat" serve --data-dir "$data" --listen 127.0.0.1:0 \
    --mqtt-listen 127.0.0.1:0 --coap-listen 127.0.0.1:0 >"$out" 2>"$work/$1.server.log" &
  srv_pid=$!
  coap_addr="" https_url=""
  for _ in $(seq 1 600); do # 60 s at most (the first start makes keys and a CA)
    coap_addr=$(sed -n 's/^coap listening on //p' "$out")
    https_url=$(sed -n 's/^https listening on //p' "$out")
    [ -n "$coap_addr" ] && [ -n "$https_url" ] && break
    kill -0 "$srv_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$coap_addr" ] || [ -z "$https_url" ]; then
    echo "moat did not start:" >&2; tail -n 20 "$work/$1.server.log" >&2; return 1
  fi
  https_url=https://$https_url
}

# `moat_run NAME DEVICES ARGS...`: a fresh Moat, its channel and devices,
# then `moat-bench coap ARGS` with --server, --psk and the paths filled in;
# the server's CPU time and its CoAP counters afterwards.
moat_run() {
  local name=$1 devices=$2 channel before drops limit rc=0
  shift 2
  start_moat "$name" || return 1
  channel=$(timeout 300 "$bench" setup --url "$https_url" --cacert "$data/ca.pem" \
    --devices "$devices" --keys "$work/$name.keys" --psk "$work/$name.psk" \
    --payload-policy json) || { echo "setup failed" >&2; stop_server; return 1; }
  before=$(cpu "$srv_pid") drops=$(rcvbuf_errors)
  limit=$(( warmup + duration + 180 ))
  timeout -k 5 "$limit" "$bench" coap "$@" --server "$coap_addr" --psk "$work/$name.psk" \
    --path "/channels/$channel/messages/bench" --observe-path "/channels/$channel/messages" \
    --duration "$duration" --warmup "$warmup" --target moat | tee "$work/$name.out" || rc=$?
  echo "RESULT coap-server target=moat run=$name cpu_s=$(secs $(( $(cpu "$srv_pid") - before )))" \
    "udp_rcvbuf_drops=$(( $(rcvbuf_errors) - drops ))"
  curl -sS --max-time 10 --cacert "$data/ca.pem" "$https_url/metrics" >"$work/$name.metrics" || true
  echo "moat /metrics after $name:"
  grep -E '^moat_(coap_(handshakes|requests|dropped|retransmissions|duplicates|notifications|malformed|send_failures)|messages_appended)' \
    "$work/$name.metrics" | sed 's/^/  /' || true
  stop_server
  return "$rc"
}

libcoap_run() { # NAME ARGS...
  local name=$1 port before drops limit rc=0 i
  shift
  port=$(free_pair)
  [ -n "$port" ] || { echo "no free port pair" >&2; return 1; }
  : >"$work/libcoap.psk"
  for i in $(seq 1 "$max_devices"); do echo "bench-$i $libcoap_key" >>"$work/libcoap.psk"; done
  coap-server-openssl -A 127.0.0.1 -p "$port" -k "$libcoap_key" >"$work/$name.server.log" 2>&1 &
  srv_pid=$!
  for _ in $(seq 1 100); do # 10 s at most
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    kill -0 "$srv_pid" 2>/dev/null || break
    sleep 0.1
  done
  before=$(cpu "$srv_pid") || { echo "coap-server-openssl did not start" >&2; srv_pid=""; return 1; }
  drops=$(rcvbuf_errors)
  limit=$(( warmup + duration + 120 ))
  timeout -k 5 "$limit" "$bench" coap "$@" --server "127.0.0.1:$(( port + 1 ))" \
    --psk "$work/libcoap.psk" --method put --path /example_data \
    --duration "$duration" --warmup "$warmup" --target libcoap | tee "$work/$name.out" || rc=$?
  echo "RESULT coap-server target=libcoap run=$name cpu_s=$(secs $(( $(cpu "$srv_pid") - before )))" \
    "udp_rcvbuf_drops=$(( $(rcvbuf_errors) - drops ))"
  stop_server
  return "$rc"
}

echo "== CoAP over DTLS: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)," \
  "${duration} s counted after ${warmup} s; $moat"
failures=0
declare -A res=()
keep_result() { # KEY FILE PATTERN
  local line
  line=$(grep -h "^RESULT $3" "$2" | head -n 1 || true)
  res[$1]=$line
}
for s in "${scenario_list[@]}"; do
  case "$s" in
    post)
      for c in "${client_list[@]}"; do
        echo "== moat: post, $c clients"
        d=$(( c < max_devices ? c : max_devices ))
        if moat_run "post-$c" "$d" post --clients "$c"; then
          keep_result "moat/post/$c" "$work/post-$c.out" coap-post
        else failures=$(( failures + 1 )); echo "  FAILED: moat post $c" >&2; fi
      done ;;
    observe)
      for o in "${observer_list[@]}"; do
        echo "== moat: observe, $o observers, $rate publishes/s"
        d=$(( o < max_devices ? o : max_devices ))
        if moat_run "observe-$o" "$d" observe --observers "$o" --rate "$rate"; then
          keep_result "moat/observe/$o" "$work/observe-$o.out" coap-observe
        else failures=$(( failures + 1 )); echo "  FAILED: moat observe $o" >&2; fi
      done ;;
    libcoap)
      for c in "${client_list[@]}"; do
        echo "== libcoap: post (PUT /example_data), $c clients"
        if libcoap_run "libcoap-$c" post --clients "$c"; then
          keep_result "libcoap/post/$c" "$work/libcoap-$c.out" coap-post
        else failures=$(( failures + 1 )); echo "  FAILED: libcoap post $c" >&2; fi
      done ;;
  esac
done

ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print ""; else printf "%.2f", a / b }'
}
ms() { [ -z "$1" ] || awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
if [[ ",$scenarios," == *",post,"* || ",$scenarios," == *",libcoap,"* ]]; then
  echo
  echo "== Summary: confirmable requests, one outstanding per client (requests/s; p50 / p99 ms)"
  printf '| %-8s | %14s | %17s | %14s | %17s | %15s |\n' clients "Moat req/s" "Moat p50/p99" \
    "libcoap req/s" "libcoap p50/p99" "Moat / libcoap"
  echo "|----------|---------------:|------------------:|---------------:|------------------:|----------------:|"
  for c in "${client_list[@]}"; do
    m=${res[moat/post/$c]:-} l=${res[libcoap/post/$c]:-}
    printf '| %-8s | %14s | %17s | %14s | %17s | %15s |\n' "$c" "$(field "$m" rps)" \
      "$(ms "$(field "$m" p50_us)") / $(ms "$(field "$m" p99_us)")" "$(field "$l" rps)" \
      "$(ms "$(field "$l" p50_us)") / $(ms "$(field "$l" p99_us)")" \
      "$(ratio "$(field "$m" rps)" "$(field "$l" rps)")"
  done
fi
if [[ ",$scenarios," == *",observe,"* ]]; then
  echo
  echo "== Summary: Observe fan-out, $rate publishes/s"
  printf '| %-9s | %10s | %10s | %12s | %9s | %17s |\n' observers expected delivered deliveries/s ratio \
    "latency p50/p99"
  echo "|-----------|-----------:|-----------:|-------------:|----------:|------------------:|"
  for o in "${observer_list[@]}"; do
    m=${res[moat/observe/$o]:-}
    printf '| %-9s | %10s | %10s | %12s | %9s | %17s |\n' "$o" "$(field "$m" expected)" \
      "$(field "$m" delivered)" "$(field "$m" deliveries_per_s)" "$(field "$m" delivered_ratio)" \
      "$(ms "$(field "$m" p50_us)") / $(ms "$(field "$m" p99_us)")"
  done
fi
[ "$failures" = 0 ] || { echo "$failures run(s) failed" >&2; exit 1; }
