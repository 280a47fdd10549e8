#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: repeatable where wall-clock CPU
# time on this shared machine is not. Counts user-space instructions only (the kernel's
# loopback TCP work, about half of the CPU time, is not in them).
#
#   bench/callgrind.sh             authgate (a) public route, stock pingora, pingora tuned as
#                                  authgate is (mimalloc, no work stealing), and that tuned proxy
#                                  on the patched pingora (pingora-floor), 2000 requests each
#   REQUESTS=5000 bench/callgrind.sh
#   AUTHGATE=/tmp/authgate-before bench/callgrind.sh      another authgate binary
#   AUTHGATE_LOG=info bench/callgrind.sh                  with the access log on
#   CONFIG=bench/configs/b-hs256.yaml bench/callgrind.sh   another authgate configuration
#                                  (its token, if any, in AUTH_HEADER="Authorization: Bearer ...")
#   ANCHORS=0 bench/callgrind.sh   authgate alone (for an A/B of one change)
#   VALGRIND_OPTS=--cache-sim=yes bench/callgrind.sh   also L1 cache misses per request
#
# Each proxy runs under callgrind with one worker in front of a one-worker nginx upstream;
# after 200 warm-up requests the counters are zeroed, REQUESTS requests go over one
# keep-alive connection (curl), and the counters are dumped. Prints instructions per request
# and the heaviest functions (inclusive); the raw profiles stay in bench/out/callgrind-*/ for
# callgrind_annotate or kcachegrind. Uses the release binaries (run bench/run.sh or
# bench/run.sh first, or `cargo build --release -p authgate` and the stock anchors as
# bench/pingora-stock/Cargo.toml says).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REQUESTS=${REQUESTS:-2000}
CONFIG=${CONFIG:-bench/configs/a-public.yaml}
AUTH_HEADER=${AUTH_HEADER:-}
# Another authgate binary (a copy from before a change, say) instead of the release build.
AUTHGATE=${AUTHGATE:-target/release/authgate}
# authgate's RUST_LOG: `info` turns the access log on (written to the log file), to count it.
AUTHGATE_LOG=${AUTHGATE_LOG:-warn}
ANCHORS=${ANCHORS:-1}
ANCHOR_BINS=(pingora-plain pingora-tuned pingora-floor)
[[ $ANCHORS == 1 ]] || ANCHOR_BINS=()
for bin in valgrind callgrind_control callgrind_annotate nginx curl; do
    command -v "$bin" >/dev/null || { echo "callgrind.sh: $bin is missing (apt-get install valgrind nginx-light curl)" >&2; exit 1; }
done
for bin in authgate "${ANCHOR_BINS[@]}"; do
    [[ -x target/release/$bin ]] || { echo "callgrind.sh: target/release/$bin missing; build release first" >&2; exit 1; }
done

OUT=$ROOT/bench/out/callgrind-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
die() { echo "callgrind.sh: $*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
cleanup() {
    stop_pids
    [[ -f $OUT/nginx/nginx.pid ]] && kill "$(cat "$OUT/nginx/nginx.pid")" 2>/dev/null || true
}
trap cleanup EXIT

free_port UP
# shellcheck source=bench/upstream-nginx.sh
source "$ROOT/bench/upstream-nginx.sh"
write_upstream_nginx_conf "$OUT/nginx" "$UP"
nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -e "$OUT/nginx/error.log" &
PIDS+=($!)
wait_http "upstream nginx" "$UP" "$!" "$OUT/nginx/error.log" 30

# measure NAME PORT PID: zero, send REQUESTS requests, dump; prints instructions per request.
measure() {
    local name=$1 port=$2 pid=$3
    local url="http://127.0.0.1:$port/api/bench/items/?page=[1-$REQUESTS]"
    local hdr=()
    [[ -n $AUTH_HEADER ]] && hdr=(-H "$AUTH_HEADER")
    curl -s -o /dev/null "${hdr[@]}" "http://127.0.0.1:$port/api/bench/items/?page=[1-200]"
    callgrind_control -z "$pid" >/dev/null
    curl -s -o /dev/null -w '%{http_code}\n' "${hdr[@]}" "$url" | sort | uniq -c >"$OUT/codes-$name.txt"
    callgrind_control -d "$name" "$pid" >/dev/null
    sleep 1
    # --callgrind-out-file NAME.%p: the first dump of process PID is NAME.PID.1
    local f=$OUT/$name.$pid.1
    local total
    total=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    echo "$name $((total / REQUESTS)) $f"
}

results=()
free_port AG
free_port ADMIN
BENCH_LISTEN=127.0.0.1:$AG BENCH_ADMIN=127.0.0.1:$ADMIN BENCH_UPSTREAM=127.0.0.1:$UP RUST_LOG=$AUTHGATE_LOG \
    valgrind --tool=callgrind --callgrind-out-file="$OUT/authgate.%p" \
    "$AUTHGATE" --config "$CONFIG" >"$OUT/log-authgate.txt" 2>&1 &
PIDS+=($!)
wait_http authgate "$AG" "$!" "$OUT/log-authgate.txt" 30
results+=("$(measure authgate "$AG" "${PIDS[1]}")")
for base in "${ANCHOR_BINS[@]}"; do
    free_port port
    valgrind --tool=callgrind --callgrind-out-file="$OUT/$base.%p" \
        "target/release/$base" --listen "127.0.0.1:$port" --upstream "127.0.0.1:$UP" --threads 1 \
        >"$OUT/log-$base.txt" 2>&1 &
    PIDS+=($!)
    wait_http "$base" "$port" "$!" "$OUT/log-$base.txt" 30
    results+=("$(measure "$base" "$port" "${PIDS[-1]}")")
done

echo
echo "instructions per request (user space; $REQUESTS requests over one keep-alive connection)"
for r in "${results[@]}"; do
    read -r name per _ <<<"$r"
    printf '  %-14s %8d   status codes: %s\n' "$name" "$per" "$(tr '\n' ' ' <"$OUT/codes-$name.txt")"
done
# With VALGRIND_OPTS=--cache-sim=yes the profiles also count L1 misses (valgrind's model of
# this CPU's caches, the process alone): instruction fetches, data reads, data writes.
if grep -q '^events:.*I1mr' "$(cut -d' ' -f3 <<<"${results[0]}")"; then
    echo "L1 misses per request (callgrind's cache simulation): instruction / data read / data write"
    for r in "${results[@]}"; do
        read -r name _ f <<<"$r"
        awk -v n="$REQUESTS" -v name="$name" '
            /^events:/ { for (i = 2; i <= NF; i++) col[$i] = i }
            /^summary:/ { printf "  %-14s %8d %8d %8d\n", name, $col["I1mr"] / n, $col["D1mr"] / n, $col["D1mw"] / n }' "$f"
    done
fi
if ((${#ANCHOR_BINS[@]})); then
    read -r _ ag _ <<<"${results[0]}"
    read -r _ pp _ <<<"${results[1]}"
    read -r _ pt _ <<<"${results[2]}"
    read -r _ pf _ <<<"${results[3]}"
    awk -v a="$ag" -v p="$pp" -v t="$pt" -v f="$pf" 'BEGIN {
        printf "  authgate / pingora-plain: %.3f\n  authgate / pingora-tuned: %.3f\n  authgate / pingora-floor: %.3f\n  pingora-floor / pingora-tuned: %.3f\n\n", a / p, a / t, a / f, f / t }'
fi
read -r _ _ agf <<<"${results[0]}"
echo "heaviest inclusive entries in authgate (instructions per request):"
callgrind_annotate --inclusive=yes "$agf" 2>/dev/null | sed 's/,//g' |
    awk -v n="$REQUESTS" 'shown < 30 && $1 ~ /^[0-9]+$/ && $0 ~ /(authgate::|pingora_|http::header|memcpy|mi_)/ {
        line = $0; sub(/^ *[0-9]+ \([ 0-9.]+%\) +/, "", line); sub(/ \[.*$/, "", line); sub(/^[^:]*:/, "", line);
        printf "  %7d  %s\n", $1 / n, substr(line, 1, 110); shown++ }'
echo
echo "profiles: $OUT"
