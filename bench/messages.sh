#!/usr/bin/env bash
# The HTTP ingest benchmark (docs/benchmarks.md, "Messages: HTTP ingest").
#
# N concurrent publishers (wrk connections, bench/senml.lua) post SenML
# packs of three records to one channel for a fixed time; each answer is a
# 202 sent only once the message is durable. Then the messages are read back
# through the API, the server stops, the stored rows are counted against
# the acknowledgements, and the ceiling is measured on the same file: the
# same messages inserted by raw batched SQL, and through the store's append
# alone. One summary table, ratios from the same run.
#
#   bench/messages.sh [--publishers 32] [--duration 20] [--threads 1]
#                     [--work-dir DIR] [--keep] [--no-build]
#
# Needs wrk (apt-get install -y wrk). Everything listens on 127.0.0.1 on an
# ephemeral port. wrk does not verify the server's certificate (it cannot be
# given a CA): acceptable for a load on the loopback; moat-bench itself
# trusts only the server's ca.pem.
set -euo pipefail

publishers=32
duration=20
threads=1
work=""
keep=0
build=1

usage() {
  sed -n '2,17s/^# \{0,1\}//p' "$0"
  exit "${1:-0}"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --publishers) publishers=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --work-dir) work=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done
for n in "$publishers" "$duration" "$threads"; do
  case "$n" in ''|*[!0-9]*) echo "not a positive number: $n" >&2; exit 2 ;; esac
done
[ "$publishers" -ge 1 ] && [ "$publishers" -le 10000 ] || { echo "--publishers: 1 to 10000" >&2; exit 2; }
[ "$duration" -ge 1 ] && [ "$duration" -le 600 ] || { echo "--duration: 1 to 600 seconds" >&2; exit 2; }
[ "$threads" -ge 1 ] && [ "$threads" -le "$publishers" ] || { echo "--threads: 1 to --publishers" >&2; exit 2; }

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
if [ "$build" = 1 ]; then
  cargo build --release -p moat -p moat-bench
fi
moat=$root/target/release/moat
bench=$root/target/release/moat-bench

# On disk, not tmpfs: fsync has to cost what it costs.
[ -n "$work" ] || work=$(mktemp -d "${TMPDIR:-/tmp}/moat-bench-ingest.XXXXXX")
mkdir -p "$work"
data=$work/data
# A fixed benchmark key and password (moat-bench's defaults), never real ones.
export MOAT_MASTER_KEY=6d6f61742d62656e63682d6d61737465722d6b65792d6e6f742d736563726574
export MOAT_ADMIN_PASSWORD=moat-bench-admin-password

server_pid=""
stop_server() {
  [ -n "$server_pid" ] || return 0
  if kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"
    # Bounded: 30 s to drain, then killed.
    for _ in $(seq 1 300); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$server_pid" 2>/dev/null && kill -KILL "$server_pid"
  fi
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
cleanup() {
  stop_server
  if [ "$keep" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# `field LINE KEY`: the value of KEY=value in a RESULT line.
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1" | head -n 1; }
result() { grep -h "^RESULT $1" "${@:2}" | head -n 1; }

MOAT_LOG=warn "$moat" serve --data-dir "$data" --listen 127.0.0.1:0 \
  >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
url=""
for _ in $(seq 1 600); do # 60 s at most
  addr=$(sed -n 's/^https listening on //p' "$work/server.out")
  if [ -n "$addr" ]; then url="https://$addr"; break; fi
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { echo "moat did not start; see $work/server.log" >&2; exit 1; }
echo "moat serving on $url (data in $data)"

channel=$("$bench" setup --url "$url" --cacert "$data/ca.pem" \
  --devices "$publishers" --keys "$work/keys.txt")
echo "channel $channel, $publishers devices with keys and connections"

echo "wrk: $publishers connections, $threads thread(s), ${duration} s"
BENCH_CHANNEL=$channel BENCH_KEYS=$work/keys.txt \
  wrk -t"$threads" -c"$publishers" -d"${duration}s" --timeout 10s --latency \
  -s "$root/bench/senml.lua" "$url" | tee "$work/wrk.out"

"$bench" verify --url "$url" --cacert "$data/ca.pem" --channel "$channel" | tee "$work/verify.out"
stop_server
"$bench" count --db "$data/messages.db" | tee "$work/count.out"

w=$(result wrk "$work/wrk.out")
v=$(result verify "$work/verify.out")
c=$(result count "$work/count.out")
requests=$(field "$w" requests)
non2xx=$(field "$w" non2xx)
errors=$(( $(field "$w" connect_errors) + $(field "$w" read_errors) + $(field "$w" write_errors) + $(field "$w" timeouts) ))
acked=$(( requests - non2xx ))
stored=$(field "$c" messages)
records=$(field "$c" records)
api_records=$(field "$v" api_records)

# Every 202 must be stored; a few more may be, the requests in flight when wrk
# stopped counting (at most one a connection).
status=ok
if [ "$stored" -lt "$acked" ] || [ "$stored" -gt $(( acked + publishers )) ]; then
  echo "MISMATCH: $acked acknowledged, $stored stored" >&2; status=mismatch
fi
if [ "$records" -ne $(( 3 * stored )) ] || [ "$api_records" -ne "$records" ]; then
  echo "MISMATCH: $stored messages, $records records, $api_records counted through the API" >&2
  status=mismatch
fi
if [ "$non2xx" -ne 0 ] || [ "$errors" -ne 0 ]; then
  echo "WARNING: $non2xx non-2xx answers, $errors socket errors or timeouts" >&2
fi

"$bench" ceiling --db "$data/messages.db" --messages "$stored" \
  --batch "$publishers,8192" --appenders "$publishers" | tee "$work/ceiling.out"

secs=$(awk -v us="$(field "$w" duration_us)" 'BEGIN { printf "%.3f", us / 1e6 }')
e2e=$(awk -v n="$acked" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
raw_n=$(result "ceiling mode=raw batch=$publishers " "$work/ceiling.out")
raw_bulk=$(result "ceiling mode=raw batch=8192 " "$work/ceiling.out")
store=$(result "ceiling mode=store" "$work/ceiling.out")
accept=$(result accept "$work/ceiling.out")
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

row() { printf '| %-36s | %10s | %9s | %10s | %10s | %17s |\n' "$@"; }
echo
echo "== Messages: HTTP ingest: $publishers publishers, ${duration} s, SenML packs of 3 records =="
echo "$(nproc) cores; wrk $threads thread(s), $publishers connections; $acked acknowledged (202), $stored stored," \
  "$records records, $api_records counted through the API: $status"
echo
row path messages/s records/s "p50 ack ms" "p99 ack ms" "messages a commit"
echo "|--------------------------------------|-----------:|----------:|-----------:|-----------:|------------------:|"
row "HTTPS publish, end to end (wrk)" "$e2e" $(( e2e * 3 )) "$(ms "$(field "$w" p50_us)")" \
  "$(ms "$(field "$w" p99_us)")" "$(field "$v" mean_batch)"
row "store append, $publishers appenders" "$(field "$store" msgs_per_s)" \
  "$(field "$store" records_per_s)" "" "" "$(field "$store" mean_batch)"
row "raw SQL insert, $publishers a transaction" "$(field "$raw_n" msgs_per_s)" \
  "$(field "$raw_n" records_per_s)" "" "" "$publishers"
row "raw SQL insert, 8192 a transaction" "$(field "$raw_bulk" msgs_per_s)" \
  "$(field "$raw_bulk" records_per_s)" "" "" 8192
echo
echo "end to end / raw SQL ceiling, $publishers a transaction: $(ratio "$e2e" "$(field "$raw_n" msgs_per_s)")   (goal: at least 0.5)"
echo "end to end / raw SQL ceiling, 8192 a transaction: $(ratio "$e2e" "$(field "$raw_bulk" msgs_per_s)")"
echo "end to end / store append: $(ratio "$e2e" "$(field "$store" msgs_per_s)")"
echo "message::accept (SenML parse and checks): $(field "$accept" us_per_message) µs a message"
echo "RESULT ingest publishers=$publishers seconds=$secs acked=$acked stored=$stored e2e_msgs_per_s=$e2e status=$status"
[ "$status" = ok ]
