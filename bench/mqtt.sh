#!/usr/bin/env bash
# The MQTT broker benchmark: Moat's broker against Mosquitto, same load
# generator (`mqttv5 bench`, crates.io's mqttv5-cli), same machine, mutual TLS.
#
#   qos0      QoS 0 fan-in: --publishers connections -> 1 subscriber (msg/s),
#             and the server's CPU over the measured window (% of a core,
#             µs a message); the subscriber runs in a client process of its
#             own (see split_fan_in)
#   qos0one   the same in mqttv5 bench's own one-process shape, where a
#             saturated run counts what the client's counting task got
#             through, not what the broker delivered (see split_fan_in).
#             Not in the default set
#   qos1      QoS 1 fan-in: the same at QoS 1
#   fanout    1 publisher -> --subscribers subscribers: the highest paced
#             rate (from --fanout-rate, x1.5 a step, --fanout-steps at most)
#             the broker keeps up with, and deliveries/s there
#   latency   p50/p99 of a paced probe (--probe-rate msg/s, --latency-qos)
#             while a background load runs at half the target's own qos0
#             peak (or at --load-rate msg/s, the same for every target)
#   idle      --idle idle TLS connections (bench/mqtt_idle.py): server RSS
#             before and after, KiB a connection
#   qos1cost  QoS 1 fan-in paced at --cost-rate msg/s (below both brokers'
#             peak): the server's CPU time, user + system, per acknowledged
#             publish over the measured window (saturated runs on a shared
#             two-core machine swing with scheduling; this does not). Not
#             in the default set
#
#   bench/mqtt.sh [--targets mosquitto,moat] [--scenarios qos0,qos1,fanout,latency,idle,qos1cost,qos0one]
#                 [--publishers 100] [--subscribers 1000] [--idle 10000]
#                 [--duration 10] [--warmup 2] [--payload-size 64]
#                 [--fanout-rate 50] [--fanout-steps 6]
#                 [--probe-rate 100] [--latency-qos 0] [--load-rate N]
#                 [--cost-rate 20000]
#                 [--work-dir DIR] [--keep] [--no-build]
#
# Targets: mosquitto (TLS, client certificate required), mosquitto-plain
# (the same broker on plain TCP: what TLS costs) and moat (MQTT over TLS
# with a device certificate Moat issued, on an opaque channel; QoS 1 is
# acknowledged once stored; its per-client publish rate limit is off, see
# start_moat). Every scenario gets a fresh server (Moat: a fresh data
# directory). Moat's binary is $MOAT_BIN, else target/release/moat, built
# first unless --no-build. Needs mosquitto, openssl, jq, python3, curl
# (scripts/install-test-deps) and mqttv5 (cargo install mqttv5-cli).
# Everything listens on 127.0.0.1, on ports picked here; every command is
# bounded by a timeout.
set -euo pipefail

targets=mosquitto,moat
scenarios=qos0,qos1,fanout,latency,idle
publishers=100
subscribers=1000
idle=10000
duration=10
warmup=2
payload_size=64
fanout_rate=50
fanout_steps=6
probe_rate=100
latency_qos=0
load_rate=""
cost_rate=20000
work=""
keep=0
build=1

usage() {
  sed -n '2,45s/^# \{0,1\}//p' "$0"
  exit "${1:-0}"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --targets) targets=$2; shift 2 ;;
    --scenarios) scenarios=$2; shift 2 ;;
    --publishers) publishers=$2; shift 2 ;;
    --subscribers) subscribers=$2; shift 2 ;;
    --idle) idle=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --payload-size) payload_size=$2; shift 2 ;;
    --fanout-rate) fanout_rate=$2; shift 2 ;;
    --fanout-steps) fanout_steps=$2; shift 2 ;;
    --probe-rate) probe_rate=$2; shift 2 ;;
    --latency-qos) latency_qos=$2; shift 2 ;;
    --load-rate) load_rate=$2; shift 2 ;;
    --cost-rate) cost_rate=$2; shift 2 ;;
    --work-dir) work=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done
number() {
  case "$2" in ''|*[!0-9]*) echo "$1: not a number: $2" >&2; exit 2 ;; esac
  [ "$2" -ge "$3" ] && [ "$2" -le "$4" ] || { echo "$1: $3 to $4" >&2; exit 2; }
}
number --publishers "$publishers" 1 10000
number --subscribers "$subscribers" 1 10000
number --idle "$idle" 1 15000
number --duration "$duration" 1 300
number --warmup "$warmup" 0 60
number --payload-size "$payload_size" 12 1048576
number --fanout-rate "$fanout_rate" 2 1000000
number --fanout-steps "$fanout_steps" 1 10
number --probe-rate "$probe_rate" 1 100000
number --latency-qos "$latency_qos" 0 2
[ -z "$load_rate" ] || number --load-rate "$load_rate" 1 10000000
number --cost-rate "$cost_rate" 1 10000000
IFS=, read -r -a target_list <<<"$targets"
IFS=, read -r -a scenario_list <<<"$scenarios"
for t in "${target_list[@]}"; do
  case "$t" in mosquitto|mosquitto-plain|moat) ;; *) echo "unknown target: $t" >&2; exit 2 ;; esac
done
for s in "${scenario_list[@]}"; do
  case "$s" in qos0|qos0one|qos1|qos1cost|fanout|latency|idle) ;; *) echo "unknown scenario: $s" >&2; exit 2 ;; esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tools=(mosquitto openssl jq python3 timeout)
[[ ",$targets," != *",moat,"* ]] || tools+=(curl)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/install-test-deps" >&2; exit 1; }
done
mqttv5=$(command -v mqttv5 || true)
[ -n "$mqttv5" ] || [ ! -x "$HOME/.cargo/bin/mqttv5" ] || mqttv5=$HOME/.cargo/bin/mqttv5
[ -n "$mqttv5" ] || { echo "mqttv5 is missing: cargo install mqttv5-cli" >&2; exit 1; }
# 10,000 connections need 10,000 descriptors, in the server and in the client.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $(( idle + 100 )) ]; then
  echo "warning: open-file limit $(ulimit -n) is below --idle $idle" >&2
fi

[ -n "$work" ] || work=$(mktemp -d "${TMPDIR:-/tmp}/moat-bench-mqtt.XXXXXX")
mkdir -p "$work"

# ---------------------------------------------------------------- PKI ----
# One benchmark CA; it signs Mosquitto's server certificate (localhost and
# 127.0.0.1) and one client certificate, which every benchmark client
# presents (mqttv5 bench takes one --cert for all its connections).
pki=$work/pki
make_pki() {
  mkdir -p "$pki"
  local o="$pki" ext
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$o/ca.key" -out "$o/ca.pem" -days 2 -sha256 -subj "/CN=moat-bench MQTT CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  leaf() { # NAME CN EXTENSIONS
    ext=$o/$1.ext
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature" "$3" >"$ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$o/$1.key" -out "$o/$1.csr" -subj "/CN=$2" 2>/dev/null
    openssl x509 -req -in "$o/$1.csr" -CA "$o/ca.pem" -CAkey "$o/ca.key" -CAcreateserial \
      -days 2 -sha256 -extfile "$ext" -out "$o/$1.pem" 2>/dev/null
  }
  leaf server localhost "$(printf '%s\n' 'extendedKeyUsage=serverAuth' \
    'subjectAltName=DNS:localhost,IP:127.0.0.1')"
  leaf client bench-device "extendedKeyUsage=clientAuth"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# `wait_port PORT PID`: until 127.0.0.1:PORT accepts, 30 s at most.
wait_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# ------------------------------------------------------------ servers ----
# A start_* function starts one broker in the background and sets:
#   srv_pid    the broker's own process id (its RSS is read from /proc)
#   srv_port   its MQTT port on 127.0.0.1
#   srv_url    what mqttv5 bench --url takes (mqtts://127.0.0.1:PORT)
#   srv_tls    1 for TLS (then srv_ca, srv_cert, srv_key, srv_name are set:
#              the CA that signed the server's certificate, the client
#              certificate and key to present, the name to verify)
#   srv_topic  the topic prefix benchmark clients may publish and subscribe
#              under (a scenario adds /SCENARIO, mqttv5 bench adds /N)
#   srv_log    its log file
# and returns 0; or it returns 3 when that target cannot run (skipped).
srv_pid=""
srv_port=""
srv_url=""
srv_tls=0
srv_ca=""
srv_cert=""
srv_key=""
srv_name=""
srv_topic=""
srv_log=""

start_mosquitto() { # LOG [plain]
  local tls_port plain_port conf=$work/mosquitto.conf
  tls_port=$(free_port)
  plain_port=$(free_port)
  while [ "$plain_port" = "$tls_port" ]; do plain_port=$(free_port); done
  sed -e "s|@TLS_PORT@|$tls_port|g" -e "s|@PLAIN_PORT@|$plain_port|g" \
    -e "s|@DIR@|$pki|g" -e "s|@USER@|$(id -un)|g" \
    "$root/bench/mosquitto/mosquitto.conf.in" >"$conf"
  srv_log=$1
  mosquitto -c "$conf" >>"$srv_log" 2>&1 &
  srv_pid=$!
  # The same topic shape as Moat's (channels/UUID/messages/bench): equal
  # bytes on the wire and equal topic work for the clients.
  srv_topic=channels/$(cat /proc/sys/kernel/random/uuid)/messages/bench
  if [ "${2:-}" = plain ]; then
    srv_tls=0 srv_port=$plain_port srv_url=mqtt://127.0.0.1:$plain_port
  else
    srv_tls=1 srv_port=$tls_port srv_url=mqtts://127.0.0.1:$tls_port
    srv_ca=$pki/ca.pem srv_cert=$pki/client.pem srv_key=$pki/client.key srv_name=localhost
  fi
  # Both listeners open together; probing the plain one keeps a TLS
  # handshake error out of the log.
  wait_port "$plain_port" "$srv_pid" || {
    echo "mosquitto did not start:" >&2; tail -n 20 "$srv_log" >&2; return 1
  }
}

# Moat: the binary from MOAT_BIN, else target/release/moat (built by the
# main loop below unless --no-build). A fixed benchmark master key and admin
# password, never real ones (the same as bench/messages.sh).
moat_mqtt_ready=1
moat_bin=${MOAT_BIN:-$root/target/release/moat}
moat_master_key=6d6f61742d62656e63682d6d61737465722d6b65792d6e6f742d736563726574
moat_admin_password=moat-bench-admin-password
# Moat's per-client PUBLISH rate limit (MOAT_MQTT_PUBLISH_RATE, 1000/s by
# default) would measure the throttle, not the broker: off (0) unless the
# environment sets it. Its other broker settings are left at their defaults
# (MOAT_MQTT_MAX_QUEUED 1000 a session, MOAT_MQTT_MAX_INFLIGHT 100, ...) or
# whatever MOAT_MQTT_* the environment sets: moat reads them itself.
moat_publish_rate=${MOAT_MQTT_PUBLISH_RATE:-0}

# `moat_api METHOD PATH [JSON]`: the response body on stdout; fails (with
# the body on stderr) on an HTTP error. Uses moat_ca, moat_api_url, moat_token.
moat_api() {
  local out rc=0
  out=$(curl -sS --fail-with-body --max-time 30 --cacert "$moat_ca" -X "$1" \
    -H "authorization: Bearer ${moat_token:-}" -H 'content-type: application/json' \
    ${3:+--data "$3"} "$moat_api_url$2") || rc=$?
  if [ "$rc" != 0 ]; then
    echo "moat: $1 $2 failed (curl exit $rc): $out" >&2
    return 1
  fi
  printf '%s\n' "$out"
}

# A fresh data directory (an empty store) for every scenario, beside its
# log: $work/moat-SCENARIO.data. Then, through the API as the bootstrap
# admin: one opaque channel (any payload bytes, no SenML parsing), one
# device connected to it with publish and subscribe rights, and a
# certificate for that device from an openssl P-256 CSR. Every benchmark
# connection presents that one certificate (each with its own client id)
# and uses channels/CHANNEL/messages/bench/... as its topic prefix.
start_moat() { # LOG
  local data=${1%.server.log}.data out=${1%.server.log}.out mqtt_addr="" https_addr=""
  local channel device dev
  rm -rf "$data"
  srv_log=$1
  MOAT_LOG=warn MOAT_MASTER_KEY=$moat_master_key MOAT_ADMIN_PASSWORD=$moat_admin_password \
    MOAT_MQTT_PUBLISH_RATE=$moat_publish_rate \
    "$moat_bin" serve --data-dir "$data" --listen 127.0.0.1:0 --mqtt-listen 127.0.0.1:0 \
    >"$out" 2>>"$srv_log" &
  srv_pid=$!
  for _ in $(seq 1 600); do # 60 s at most (the first start makes keys and a CA)
    mqtt_addr=$(sed -n 's/^mqtt listening on //p' "$out")
    https_addr=$(sed -n 's/^https listening on //p' "$out")
    [ -n "$mqtt_addr" ] && [ -n "$https_addr" ] && break
    kill -0 "$srv_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$mqtt_addr" ] || [ -z "$https_addr" ]; then
    echo "moat did not start:" >&2; tail -n 20 "$srv_log" >&2; return 1
  fi
  srv_port=${mqtt_addr##*:}
  srv_tls=1 srv_url=mqtts://127.0.0.1:$srv_port
  srv_ca=$data/ca.pem srv_name=localhost
  moat_ca=$data/ca.pem moat_base=https://127.0.0.1:${https_addr##*:}
  moat_api_url=$moat_base/api/v1 moat_token=""
  moat_token=$(moat_api POST /auth/login \
    "$(jq -nc --arg p "$moat_admin_password" '{username: "admin", password: $p}')" |
    jq -r .access_token) && [ -n "$moat_token" ] && [ "$moat_token" != null ] || {
    echo "moat: no access token" >&2; return 1
  }
  channel=$(moat_api POST /channels '{"name":"bench","payload_policy":"opaque"}' | jq -r .id) &&
    device=$(moat_api POST /devices '{"name":"bench-device"}' | jq -r .id) &&
    [ -n "$channel" ] && [ "$channel" != null ] && [ -n "$device" ] && [ "$device" != null ] &&
    moat_api PUT "/channels/$channel/connections/$device" \
      '{"publish":true,"subscribe":true}' >/dev/null || { echo "moat: provisioning failed" >&2; return 1; }
  dev=$data/bench-device
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dev.key" -out "$dev.csr" -subj /CN=bench-device 2>/dev/null || return 1
  moat_api POST "/devices/$device/certificates" "$(jq -nc --rawfile csr "$dev.csr" '{csr: $csr}')" |
    jq -r .chain_pem >"$dev.pem" || return 1
  grep -q 'BEGIN CERTIFICATE' "$dev.pem" || { echo "moat: no device certificate" >&2; return 1; }
  srv_cert=$dev.pem srv_key=$dev.key
  srv_topic=channels/$channel/messages/bench
}

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

bg_pids=()
split_sub="" # split_fan_in's subscriber while it runs
cleanup() {
  local p
  for p in "${bg_pids[@]}" ${split_sub:+"$split_sub"}; do kill -TERM "$p" 2>/dev/null || true; done
  stop_server
  if [ "$keep" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

start_target() { # TARGET SCENARIO
  local log=$work/$1-$2.server.log
  case "$1" in
    mosquitto) start_mosquitto "$log" ;;
    mosquitto-plain) start_mosquitto "$log" plain ;;
    moat) start_moat "$log" ;;
  esac
}

# /proc/PID/status fields in KiB.
proc_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
# User + system CPU time of process $1 so far, in clock ticks.
proc_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# ------------------------------------------------------------ results ----
declare -A res=()
record() { # TARGET METRIC VALUE
  res["$1/$2"]=$3
  echo "RESULT mqtt target=$1 metric=$2 value=$3"
}

# mqttv5 bench's TLS options for the running server, in ${tls[@]}.
tls=()
tls_args() {
  tls=()
  [ "$srv_tls" = 0 ] || tls=(--ca-cert "$srv_ca" --cert "$srv_cert" --key "$srv_key")
}

# `bench TARGET NAME SECONDS ARGS...`: mqttv5 bench against the running
# server, JSON to $work/TARGET-NAME.json, progress to .log; bounded.
bench() {
  local target=$1 name=$2 limit=$3
  shift 3
  tls_args
  if ! timeout -k 5 "$limit" "$mqttv5" bench --url "$srv_url" "${tls[@]}" \
      --payload-size "$payload_size" "$@" \
      >"$work/$target-$name.json" 2>"$work/$target-$name.log"; then
    echo "  mqttv5 bench $name failed against $target:" >&2
    tail -n 5 "$work/$target-$name.log" >&2
    return 1
  fi
}
json() { jq -r "$2" "$1"; }
int() { awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }

# `start_fan_in TARGET NAME QOS RATE WARMUP SECONDS`: the fan-in shape
# (--publishers -> 1 subscriber) paced at RATE msg/s, in the background (its
# pid in $bg_pid and bg_pids), output to $work/TARGET-NAME.json and .log;
# returns once it measures, false if it never does.
# (The log's lines begin with the time they were written, from `stamp`.)
# The subscribers it starts: $fan_subs (1, or 0 when split_fan_in runs the
# subscriber apart).
bg_pid=""
fan_subs=1
start_fan_in() {
  local t=$1 name=$2 q=$3 rate=$4 warm=$5 secs=$6
  tls_args
  timeout -k 5 "$(limit_for "$publishers")" "$mqttv5" bench --url "$srv_url" "${tls[@]}" \
    --payload-size "$payload_size" --mode throughput --qos "$q" --publishers "$publishers" \
    --subscribers "$fan_subs" --rate "$rate" --warmup "$warm" --duration "$secs" \
    --topic "$srv_topic/$name" >"$work/$t-$name.json" 2> >(stamp "$work/$t-$name.log") &
  bg_pid=$!
  bg_pids=("$bg_pid")
  for _ in $(seq 1 $(( publishers / 5 + 120 ))); do # 0.5 s steps
    grep -q '^[0-9.]* measuring' "$work/$t-$name.log" 2>/dev/null && return 0
    kill -0 "$bg_pid" 2>/dev/null || break
    sleep 0.5
  done
  grep -q '^[0-9.]* measuring' "$work/$t-$name.log"
}

# `stamp FILE`: standard input to FILE, each line after the time it came
# (seconds since the epoch, microseconds).
stamp() {
  local line
  while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$1"
}

# Time for N clients to connect one after another (mqttv5 bench does), then
# warm up, measure, drain: generous, still bounded.
limit_for() { echo $(( $1 / 10 + warmup + duration + 60 )); }

# -------------------------------------------------------------- scenarios ----
fan_in() { # TARGET QOS [NAME]
  local t=$1 q=$2 name=${3:-qos$2} f
  measured_fan_in "$t" "$name" "$q" 0 || return 1
  f=$work/$t-$name.json
  record "$t" "${name}_msgs" "$(int "$(json "$f" .results.throughput_steady)")"
  record "$t" "${name}_offered" "$(int "$(json "$f" .results.offered_rate)")"
  record "$t" "${name}_delivered_ratio" "$(json "$f" '.results.delivered_ratio * 1000 | round / 1000')"
}

# QoS 0 fan-in with the subscriber in a process of its own (a second
# mqttv5 bench, --publishers 0), started first; the publishers' run is
# measured_fan_in's with --subscribers 0. Why: in one process (the shape
# fan_in runs, and qos0one) mqttv5's client reads what the broker sends
# into an unbounded queue for one task that counts it, and that task
# shares a tokio runtime with the 100 publishers' tasks. Saturated, on a
# machine whose cores the broker shares, it counts what the runtime lets
# it, not what the broker delivered: Moat's /metrics showed ~75,000
# deliveries/s written while that task counted ~18,000/s, the client's RSS
# growing ~24 MB/s (docs/benchmarks.md). Apart, the subscriber has threads
# of its own, as a real subscriber would. The delivered rate: the steady
# mean (mqttv5's: 10% of the samples off each end) of the subscriber's
# per-second samples that fall inside the publishers' measured window,
# matched by the time each log line came. No whole-run ratio: the
# publishers' count leaves out their warm-up, whose messages the
# subscriber counts late.
split_fan_in() { # TARGET NAME QOS
  local t=$1 name=$2 q=$3 sub=$work/$1-$2.sub sub_pid start end rc=0 steady
  tls_args
  timeout -k 5 "$(( $(limit_for "$publishers") + 40 ))" "$mqttv5" bench --url "$srv_url" "${tls[@]}" \
    --payload-size "$payload_size" --mode throughput --qos "$q" --publishers 0 --subscribers 1 \
    --warmup 0 --duration "$(( $(limit_for "$publishers") + 30 ))" --topic "$srv_topic/$name" \
    >"$sub.json" 2> >(stamp "$sub.log") &
  sub_pid=$!
  split_sub=$sub_pid
  for _ in $(seq 1 60); do # 0.5 s steps
    grep -q '^[0-9.]* measuring' "$sub.log" 2>/dev/null && break
    kill -0 "$sub_pid" 2>/dev/null || break
    sleep 0.5
  done
  if ! grep -q '^[0-9.]* measuring' "$sub.log" 2>/dev/null; then
    echo "  the subscriber did not start against $t:" >&2; tail -n 5 "$sub.log" >&2
    kill -TERM "$sub_pid" 2>/dev/null; wait "$sub_pid" 2>/dev/null || true
    split_sub=""
    return 1
  fi
  fan_subs=0
  measured_fan_in "$t" "$name" "$q" 0 || rc=$?
  fan_subs=1
  start=$(awk '$2 == "measuring" { print $1; exit }' "$work/$t-$name.log")
  end=$(awk -v s="${start:-0}" -v d="$duration" 'BEGIN { printf "%.6f", s + d }')
  # Sample lines: `TIME   offered 0 msg/s | delivered N msg/s`, each
  # counting the second before TIME; the one past the window's end first.
  for _ in $(seq 1 10); do # 0.5 s steps
    awk -v e="$end" '$2 == "offered" && $1 > e { found = 1 } END { exit !found }' "$sub.log" && break
    sleep 0.5
  done
  kill -TERM "$sub_pid" 2>/dev/null || true
  wait "$sub_pid" 2>/dev/null || true
  split_sub=""
  [ "$rc" = 0 ] || return 1
  [ -n "$start" ] || { echo "  no measured window in the publishers' log" >&2; return 1; }
  steady=$(awk -v s="$start" -v e="$end" '
    $2 == "offered" && $1 - 1 >= s - 0.02 && $1 <= e + 0.02 { v[n++] = $(NF - 1) }
    END {
      drop = int(n * 0.1); if (drop < 1 && n >= 3) drop = 1
      for (i = drop; i < n - drop; i++) { sum += v[i]; k++ }
      if (k) printf "%.0f", sum / k
    }' "$sub.log")
  [ -n "$steady" ] || { echo "  no subscriber samples inside the measured window" >&2; return 1; }
  record "$t" "${name}_msgs" "$steady"
  record "$t" "${name}_offered" "$(int "$(json "$work/$t-$name.json" .results.offered_rate)")"
}

# Fan-out is paced: unpaced, the one publisher fills the broker during the
# warm-up, then blocks on a broker busy draining that backlog, and the run
# measures the drain of messages published before it began. So a ramp from
# --fanout-rate msg/s, times 1.5 a step while the broker keeps up, at most
# --fanout-steps steps; the result is the last rate it kept up with.
# Keeping up: 95% of published x subscribers arrive in all (the 2 s drain
# included) AND the steady delivered rate is 95% of the offered one (a
# broker falling behind still delivers its backlog during the drain).
fan_out() { # TARGET
  local t=$1 rate=$fanout_rate step f ratio steady offered ok kept=0
  local deliveries="" published="" delivered_ratio=""
  for step in $(seq 1 "$fanout_steps"); do
    bench "$t" "fanout-$rate" "$(limit_for "$subscribers")" --mode throughput --qos 0 \
      --publishers 1 --subscribers "$subscribers" --rate "$rate" \
      --duration "$duration" --warmup "$warmup" --topic "$srv_topic/fanout" || return 1
    f=$work/$t-fanout-$rate.json
    ratio=$(json "$f" '.results.delivered_ratio * 1000 | round / 1000')
    steady=$(int "$(json "$f" .results.throughput_steady)")
    offered=$(json "$f" .results.offered_rate)
    ok=0
    awk -v r="$ratio" -v d="$steady" -v o="$offered" -v n="$subscribers" \
      'BEGIN { exit !(r >= 0.95 && d >= 0.95 * o * n) }' && ok=1
    echo "RESULT mqtt-fanout-step target=$t rate=$rate deliveries=$steady" \
      "delivered_ratio=$ratio kept_up=$ok"
    # The first step is reported even when the broker did not keep up.
    if [ "$step" = 1 ] || [ "$ok" = 1 ]; then
      deliveries=$steady published=$(int "$offered") delivered_ratio=$ratio
    fi
    [ "$ok" = 1 ] || break
    kept=$rate
    rate=$(( rate * 3 / 2 ))
    [ "$step" -lt "$fanout_steps" ] ||
      echo "  fan-out kept up at every step: $kept msg/s is a lower bound (raise --fanout-steps)"
  done
  record "$t" fanout_max_rate "$kept"
  record "$t" fanout_deliveries "$deliveries"
  record "$t" fanout_published "$published"
  record "$t" fanout_delivered_ratio "$delivered_ratio"
}

latency() { # TARGET
  local t=$1 rate peak load_secs lpid f
  if [ -n "$load_rate" ]; then
    rate=$load_rate
  else
    peak=${res["$t/qos0_msgs"]:-}
    [ -n "$peak" ] && [ "$peak" -gt 1 ] || {
      echo "  latency needs the qos0 peak (run qos0 first, or give --load-rate)" >&2; return 1
    }
    rate=$(( peak / 2 ))
  fi
  record "$t" latency_load_target "$rate"
  # The load: the qos0 fan-in shape, paced at RATE, long enough to cover the
  # probe's warm-up and measurement.
  load_secs=$(( warmup + duration + 5 ))
  if ! start_fan_in "$t" load 0 "$rate" 1 "$load_secs"; then
    echo "  the background load did not start:" >&2; tail -n 5 "$work/$t-load.log" >&2
    kill -TERM "$bg_pid" 2>/dev/null || true; wait "$bg_pid" 2>/dev/null || true
    return 1
  fi
  lpid=$bg_pid
  bench "$t" latency "$(limit_for 2)" --mode latency --qos "$latency_qos" \
    --rate "$probe_rate" --duration "$duration" --warmup "$warmup" \
    --topic "$srv_topic/probe" || { wait "$lpid" 2>/dev/null || true; return 1; }
  wait "$lpid" || { echo "  the background load failed:" >&2; tail -n 5 "$work/$t-load.log" >&2; return 1; }
  bg_pids=()
  f=$work/$t-latency.json
  record "$t" latency_load_msgs "$(int "$(json "$work/$t-load.json" .results.throughput_steady)")"
  record "$t" latency_probe_msgs "$(json "$f" .results.messages)"
  record "$t" latency_p50_us "$(json "$f" .results.p50_us)"
  record "$t" latency_p99_us "$(json "$f" .results.p99_us)"
}

idle_conns() { # TARGET
  local t=$1 before after ipid ready line ok
  [ "$srv_tls" = 1 ] || { echo "  idle: TLS targets only" >&2; return 1; }
  sleep 1
  before=$(proc_kib "$srv_pid" VmRSS)
  python3 "$root/bench/mqtt_idle.py" --port "$srv_port" --server-name "$srv_name" \
    --ca "$srv_ca" --cert "$srv_cert" --key "$srv_key" --count "$idle" --hold 600 \
    --client-id-prefix "idle-$t-" >"$work/$t-idle.out" 2>"$work/$t-idle.log" &
  ipid=$!
  bg_pids=("$ipid")
  ready=""
  for _ in $(seq 1 $(( idle / 10 + 120 ))); do # 0.5 s steps
    line=$(grep -m1 '^READY' "$work/$t-idle.out" 2>/dev/null || true)
    if [ -n "$line" ]; then ready=$line; break; fi
    kill -0 "$ipid" 2>/dev/null || break
    sleep 0.5
  done
  if [ -z "$ready" ]; then
    echo "  mqtt_idle.py did not finish connecting:" >&2; tail -n 5 "$work/$t-idle.log" >&2
    kill -TERM "$ipid" 2>/dev/null || true; wait "$ipid" 2>/dev/null || true
    return 1
  fi
  sleep 3 # let the broker settle (buffers it frees after the handshakes)
  after=$(proc_kib "$srv_pid" VmRSS)
  ok=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<<"$ready")
  kill -TERM "$ipid" 2>/dev/null || true
  wait "$ipid" 2>/dev/null || true
  bg_pids=()
  [ -s "$work/$t-idle.log" ] && sed 's/^/  /' "$work/$t-idle.log" >&2
  record "$t" idle_connected "$ok"
  record "$t" idle_rss_before_mib "$(awk -v k="$before" 'BEGIN { printf "%.1f", k / 1024 }')"
  record "$t" idle_rss_after_mib "$(awk -v k="$after" 'BEGIN { printf "%.1f", k / 1024 }')"
  if [ "$ok" -gt 0 ]; then
    record "$t" idle_kib_per_conn "$(awk -v a="$after" -v b="$before" -v n="$ok" \
      'BEGIN { printf "%.1f", (a - b) / n }')"
  fi
  [ "$ok" = "$idle" ] || { echo "  idle: only $ok of $idle connected" >&2; return 1; }
}

# A fan-in (RATE 0: as fast as the publishers' windows allow) and the
# server's CPU, user + system, between the start of the measured window
# (mqttv5 bench prints `measuring`) and the end of the run: NAME_us_per_msg
# per acknowledged publish, NAME_server_cpu_pct of one core.
measured_fan_in() { # TARGET NAME QOS RATE
  local t=$1 name=$2 q=$3 rate=$4 before after started secs published ticks measuring=1
  start_fan_in "$t" "$name" "$q" "$rate" "$warmup" "$duration" || measuring=0
  before=$(proc_ticks "$srv_pid")
  started=$(date +%s.%N)
  if ! wait "$bg_pid" || [ "$measuring" = 0 ]; then
    bg_pids=()
    echo "  mqttv5 bench $name failed against $t:" >&2
    tail -n 5 "$work/$t-$name.log" >&2
    return 1
  fi
  bg_pids=()
  after=$(proc_ticks "$srv_pid")
  secs=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { print e - s }')
  ticks=$(getconf CLK_TCK)
  published=$(json "$work/$t-$name.json" .results.published)
  record "$t" "${name}_us_per_msg" "$(awk -v a="$after" -v b="$before" -v hz="$ticks" -v n="$published" \
    'BEGIN { if (n > 0) printf "%.2f", (a - b) / hz * 1e6 / n }')"
  record "$t" "${name}_server_cpu_pct" "$(awk -v a="$after" -v b="$before" -v hz="$ticks" -v s="$secs" \
    'BEGIN { if (s > 0) printf "%.0f", (a - b) / hz / s * 100 }')"
}

# The paced QoS 1 fan-in and the server's CPU per acknowledged publish.
qos1_cost() { # TARGET
  local t=$1
  measured_fan_in "$t" qos1cost 1 "$cost_rate" || return 1
  record "$t" qos1cost_offered "$(int "$(json "$work/$t-qos1cost.json" .results.offered_rate)")"
}

run_scenario() { # TARGET SCENARIO
  local t=$1 s=$2 rc=0
  case "$s" in
    qos0) split_fan_in "$t" qos0 0 || rc=$? ;;
    qos0one) fan_in "$t" 0 qos0one || rc=$? ;;
    qos1) fan_in "$t" 1 || rc=$? ;;
    qos1cost) qos1_cost "$t" || rc=$? ;;
    fanout) fan_out "$t" || rc=$? ;;
    latency) latency "$t" || rc=$? ;;
    idle) idle_conns "$t" || rc=$? ;;
  esac
  # Moat counts what it stores and what its broker drops (a session's
  # queue full, ...) in /metrics; mosquitto has no such counters with $SYS
  # off. Read once its MQTT connections are gone (10 s at most): until
  # then it may still be reading what the clients wrote before they quit.
  if [ "$t" = moat ] && [ -n "$srv_pid" ] && kill -0 "$srv_pid" 2>/dev/null; then
    local i ok=0
    for i in $(seq 1 20); do
      curl -sS --max-time 10 --cacert "$moat_ca" "$moat_base/metrics" >"$work/moat-$s.metrics" || break
      if grep -q '^moat_mqtt_connections 0$' "$work/moat-$s.metrics"; then
        # Long after a QoS 0 run: it was still reading the clients' backlog.
        [ "$i" = 1 ] || echo "  moat: its last MQTT connection closed ~$(( (i - 1) * 5 / 10 )) s after the bench ended"
        ok=1; break
      fi
      sleep 0.5
    done
    [ "$ok" = 1 ] || echo "  moat still had MQTT connections open when /metrics was read:" \
      "$(grep '^moat_mqtt_connections ' "$work/moat-$s.metrics" 2>/dev/null)" >&2
    if [ -s "$work/moat-$s.metrics" ]; then
      record "$t" "${s}_dropped" "$(awk '/^moat_mqtt_dropped_total/ { n += $NF } END { printf "%.0f", n }' \
        "$work/moat-$s.metrics")"
      record "$t" "${s}_stored" "$(awk '/^moat_messages_appended_total/ { n += $NF } END { printf "%.0f", n }' \
        "$work/moat-$s.metrics")"
    fi
  fi
  # The server's peak RSS over the scenario.
  if [ -n "$srv_pid" ] && [ -r "/proc/$srv_pid/status" ]; then
    record "$t" "${s}_server_peak_rss_mib" \
      "$(awk -v k="$(proc_kib "$srv_pid" VmHWM)" 'BEGIN { printf "%.1f", k / 1024 }')"
  fi
  return "$rc"
}

# ------------------------------------------------------------------ main ----
make_pki
failures=0
for t in "${target_list[@]}"; do
  if [ "$t" = moat ]; then
    if [ "$moat_mqtt_ready" != 1 ]; then
      echo "== moat: skipped (start_moat in bench/mqtt.sh is not written yet)"
      continue
    fi
    # MOAT_BIN is used as it is; the default, target/release/moat, is
    # brought up to date first (a no-op when it is) unless --no-build.
    if [ -z "${MOAT_BIN:-}" ] && [ "$build" = 1 ]; then
      cargo build --release -p moat || { echo "== moat: the build failed" >&2; failures=$(( failures + 1 )); continue; }
    fi
    if [ ! -x "$moat_bin" ]; then
      echo "== moat: $moat_bin is missing (build it, or set MOAT_BIN)" >&2
      failures=$(( failures + 1 )); continue
    fi
  fi
  for s in "${scenario_list[@]}"; do
    echo "== $t: $s"
    rc=0
    start_target "$t" "$s" || rc=$?
    if [ "$rc" = 3 ]; then echo "  skipped: $t cannot run"; break; fi
    if [ "$rc" != 0 ]; then
      echo "  FAILED: $t did not start for $s" >&2
      failures=$(( failures + 1 )); stop_server; continue
    fi
    run_scenario "$t" "$s" || { failures=$(( failures + 1 )); echo "  FAILED: $t $s" >&2; }
    stop_server
  done
done

# One table, every target side by side; moat / mosquitto where both ran.
metrics=(
  "qos0 qos0_msgs QoS 0 fan-in, $publishers -> 1 (subscriber apart): delivered msg/s|higher"
  "qos0 qos0_offered QoS 0 fan-in: published msg/s (client writes)|higher"
  "qos0 qos0_stored QoS 0 fan-in: messages stored, warm-up included (moat)|"
  "qos0 qos0_dropped QoS 0 fan-in: messages the broker counted as dropped|lower"
  "qos0 qos0_server_peak_rss_mib QoS 0 fan-in: server peak RSS MiB|lower"
  "qos0 qos0_server_cpu_pct QoS 0 fan-in: server CPU, % of one core|"
  "qos0 qos0_us_per_msg QoS 0 fan-in: server CPU µs per published message|lower"
  "qos0one qos0one_msgs QoS 0 fan-in, one client process: delivered msg/s counted|higher"
  "qos0one qos0one_offered QoS 0 fan-in, one client process: published msg/s|higher"
  "qos0one qos0one_delivered_ratio QoS 0 fan-in, one client process: delivered / published|higher"
  "qos0one qos0one_dropped QoS 0 fan-in, one client process: counted as dropped|lower"
  "qos0one qos0one_server_cpu_pct QoS 0 fan-in, one client process: server CPU %|"
  "qos0one qos0one_us_per_msg QoS 0 fan-in, one client process: µs per published message|lower"
  "qos1 qos1_msgs QoS 1 fan-in, $publishers -> 1: delivered msg/s|higher"
  "qos1 qos1_offered QoS 1 fan-in: acknowledged publishes/s (PUBACKs; moat: once stored)|higher"
  "qos1 qos1_delivered_ratio QoS 1 fan-in: delivered / published, whole run|higher"
  "qos1 qos1_stored QoS 1 fan-in: messages stored, warm-up included (moat)|"
  "qos1 qos1_dropped QoS 1 fan-in: messages the broker counted as dropped|lower"
  "qos1 qos1_server_peak_rss_mib QoS 1 fan-in: server peak RSS MiB|lower"
  "qos1 qos1_server_cpu_pct QoS 1 fan-in: server CPU, % of one core|"
  "qos1 qos1_us_per_msg QoS 1 fan-in: server CPU µs per acknowledged publish|lower"
  "qos1cost qos1cost_offered QoS 1 fan-in paced at $cost_rate msg/s: acknowledged publishes/s|"
  "qos1cost qos1cost_us_per_msg QoS 1 fan-in paced: server CPU µs per acknowledged publish|lower"
  "fanout fanout_max_rate fan-out, 1 -> $subscribers: highest msg/s kept up with|higher"
  "fanout fanout_deliveries fan-out: deliveries/s there|higher"
  "fanout fanout_published fan-out: published msg/s there|higher"
  "fanout fanout_delivered_ratio fan-out: delivered / (published x subs) there|higher"
  "fanout fanout_dropped fan-out: messages the broker counted as dropped, whole ramp|lower"
  "fanout fanout_server_peak_rss_mib fan-out: server peak RSS MiB|lower"
  "latency latency_load_msgs latency: background load, delivered msg/s|"
  "latency latency_p50_us latency at half peak, QoS $latency_qos: p50 µs|lower"
  "latency latency_p99_us latency at half peak, QoS $latency_qos: p99 µs|lower"
  "idle idle_connected idle TLS connections held|higher"
  "idle idle_rss_before_mib idle: server RSS before, MiB|lower"
  "idle idle_rss_after_mib idle: server RSS with them, MiB|lower"
  "idle idle_kib_per_conn idle: KiB a connection|lower"
)
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print ""; else printf "%.2f", a / b }'
}
has_both=0
[[ " ${target_list[*]} " == *" moat "* && " ${target_list[*]} " == *" mosquitto "* ]] && has_both=1
echo
echo "== MQTT: $(nproc) cores, load generator on the same machine; ${duration} s measured after" \
  "${warmup} s warm-up, payload $payload_size B; mqttv5 $("$mqttv5" --version 2>/dev/null | awk '{ print $NF }')," \
  "$(mosquitto -h 2>/dev/null | head -n 1)"
if [[ " ${target_list[*]} " == *" moat "* ]]; then
  echo "moat: $("$moat_bin" --version 2>/dev/null || echo "$moat_bin"); MOAT_MQTT_PUBLISH_RATE=$moat_publish_rate" \
    "($([ "$moat_publish_rate" = 0 ] && echo 'per-client publish rate limit off for the benchmark' || echo 'per-client PUBLISH/s limit'))," \
    "MOAT_MQTT_MAX_QUEUED=${MOAT_MQTT_MAX_QUEUED:-1000 (default)}, MOAT_MQTT_MAX_INFLIGHT=${MOAT_MQTT_MAX_INFLIGHT:-100 (default)};" \
    "QoS 1 PUBACK after the durable write (mosquitto: in memory, persistence off)"
fi
echo
header="| metric |$(printf ' %s |' "${target_list[@]}")"
sep="|---|$(printf -- '---:|%.0s' "${target_list[@]}")"
if [ "$has_both" = 1 ]; then header+=" moat / mosquitto | better |"; sep+="---:|---|"; fi
echo "$header"
echo "$sep"
for m in "${metrics[@]}"; do
  scen=${m%% *}
  rest=${m#* }
  key=${rest%% *}
  label=${rest#* }
  better=${label##*|}
  label=${label%|*}
  [[ ",$scenarios," == *",$scen,"* ]] || continue
  line="| $label |"
  for t in "${target_list[@]}"; do line+=" ${res["$t/$key"]:--} |"; done
  if [ "$has_both" = 1 ]; then
    line+=" $(ratio "${res["moat/$key"]:-}" "${res["mosquitto/$key"]:-}") | $better |"
  fi
  echo "$line"
done
echo
[ "$failures" = 0 ] || echo "$failures scenario(s) failed; logs in $work (use --keep to keep them)" >&2
[ "$failures" = 0 ]
