#!/usr/bin/env bash
# Wall-clock CPU of two authgate binaries side by side: what one change (a pingora patch, say)
# saves, as the ratio B ÷ A measured in the same run on this shared machine.
#
#   bench/ab.sh A_BINARY B_BINARY            the public route (configs/a-public.yaml)
#   CONFIG=bench/configs/b-hs256.yaml AUTH_HEADER="Authorization: Bearer ..." bench/ab.sh A B
#   ROUNDS=7 DURATION=6 bench/ab.sh A B      (defaults: 5 rounds of 5 s, 32 connections)
#   bench/ab.sh A A                          an A/A run: how far apart two copies of one binary read
#   LOG_LEVEL=info REDIS=1 CONFIG=bench/configs/f-all.yaml AUTH_HEADER=... bench/ab.sh A B
#                                            everything on: the access log (to /dev/null) and a
#                                            redis-server of its own on the peers' core
#
# Both run with one worker in front of the same one-worker nginx upstream; each round runs wrk
# (-t1) against A then B (the order alternates between rounds, so drift in the machine's other
# load falls on both). CPU per request is the proxy's utime + stime over the round (all its
# threads, /proc/PID/stat) divided by the requests wrk completed. Prints every round, the
# medians and B ÷ A. Needs nginx and wrk (bench/run.sh installs them).
#
# Two things keep one run from carrying a bias that holds for all its rounds (two runs of the
# same kind of pair once read 0.824 and 1.137, bench/ANALYSIS.md):
#   FRESH=1 (default) starts A and B afresh every round, so each round draws a new address-space
#     layout and allocator state instead of the whole run living with one draw;
#   PIN=1 (default, two or more cores) runs the proxies on core 0 and nginx and wrk on core 1, so
#     where the scheduler puts the proxy next to its peers is the same for both sides.
# FRESH=0 PIN=0 gives the old behaviour.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[[ $# -eq 2 ]] || { sed -n 2,25p "$0" >&2; exit 2; }
A=$(realpath "$1")
B=$(realpath "$2")
CONFIG=${CONFIG:-bench/configs/a-public.yaml}
AUTH_HEADER=${AUTH_HEADER:-}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
WARM=${WARM:-2} # s of wrk before a process's first measured round (not counted)
CONNECTIONS=${CONNECTIONS:-32}
REQ_PATH="/api/bench/items/?page=1"
FRESH=${FRESH:-1}
LOG_LEVEL=${LOG_LEVEL:-warn} # info turns the access log on; its lines go to /dev/null
REDIS=${REDIS:-0}
PIN=${PIN:-1}
(($(nproc) >= 2)) && taskset -c 0,1 true 2>/dev/null || PIN=0
# Command prefixes that pin to core 0 or 1 (empty when PIN=0). Prefixes, not a function: a
# function run with & would put a subshell between $! and the proxy whose CPU is read.
CORE0=() CORE1=()
[[ $PIN == 1 ]] && CORE0=(taskset -c 0) CORE1=(taskset -c 1)
for bin in nginx wrk curl; do
    command -v "$bin" >/dev/null || { echo "ab.sh: $bin is missing" >&2; exit 1; }
done

OUT=$ROOT/bench/out/ab-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
die() { echo "ab.sh: $*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
trap stop_pids EXIT

# Until the request a round sends answers 200 (an authgate with JWKS keys may answer 401
# until its keys are in); fails at once if the process exits.
wait_200() { # port pid log
    local h=()
    [[ -n $AUTH_HEADER ]] && h=(-H "$AUTH_HEADER")
    wait_http "port $1" "$1" "$2" "$3" 30
    for _ in $(seq 1 300); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "${h[@]}" --max-time 1 "http://127.0.0.1:$1$REQ_PATH") == 200 ]] && return 0
        kill -0 "$2" 2>/dev/null || die "the process on port $1 exited (see $3)"
        sleep 0.1
    done
    die "no 200 from port $1 within 30 s (see $OUT)"
}
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)

free_port UP
# shellcheck source=bench/upstream-nginx.sh
source "$ROOT/bench/upstream-nginx.sh"
write_upstream_nginx_conf "$OUT/nginx" "$UP"
"${CORE1[@]}" nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -e "$OUT/nginx/error.log" &
PIDS+=($!)

if [[ $REDIS == 1 ]]; then
    command -v redis-server >/dev/null || die "REDIS=1 needs redis-server"
    free_port REDIS_PORT
    "${CORE1[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        >"$OUT/redis.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do
        redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
        sleep 0.1
    done
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG ||
        die "redis-server did not answer on $REDIS_PORT (see $OUT/redis.log)"
fi

declare -A PORT PID
# start SIDE: a new process of that side's binary, answering 200 before it returns.
start() {
    local side=$1 bin=${!1} admin
    free_port "PORT[$side]"
    free_port admin
    local log=$OUT/$side.log
    [[ $LOG_LEVEL == warn ]] || log=/dev/null
    BENCH_LISTEN=127.0.0.1:${PORT[$side]} BENCH_ADMIN=127.0.0.1:$admin BENCH_UPSTREAM=127.0.0.1:$UP \
        BENCH_REDIS=127.0.0.1:${REDIS_PORT:-0} RUST_LOG=$LOG_LEVEL "${CORE0[@]}" "$bin" --config "$CONFIG" \
        >>"$log" 2>&1 &
    PID[$side]=$!
    PIDS+=($!)
    wait_200 "${PORT[$side]}" "${PID[$side]}" "$log"
}
stop() {
    kill "${PID[$1]}" 2>/dev/null || true
    wait "${PID[$1]}" 2>/dev/null || true
}
for side in A B; do start "$side"; done

hdr=()
[[ -n $AUTH_HEADER ]] && hdr=(-H "$AUTH_HEADER")
# run SIDE ROUND [SECONDS]: prints "req/s cpu_us_per_req"
run() {
    local side=$1 round=$2 d=${3:-$DURATION} t0 t1 out reqs
    t0=$(ticks "${PID[$side]}")
    out=$("${CORE1[@]}" wrk -t1 -c"$CONNECTIONS" -d"${d}s" "${hdr[@]}" "http://127.0.0.1:${PORT[$side]}$REQ_PATH")
    t1=$(ticks "${PID[$side]}")
    echo "$out" >"$OUT/wrk-$side-$round.txt"
    reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
    grep -q 'Non-2xx' <<<"$out" && { echo "ab.sh: non-2xx answers from $side (see $OUT)" >&2; exit 1; }
    awk -v r="$reqs" -v d="$d" -v t=$((t1 - t0)) -v hz="$CLK_TCK" \
        'BEGIN { printf "%.0f %.2f\n", r / d, t / hz * 1e6 / r }'
}
for side in A B; do run "$side" warm "$WARM" >/dev/null; done

printf "%-6s %-4s %10s %12s\n" round side "req/s" "CPU µs/req"
: >"$OUT/rounds.txt"
for round in $(seq 1 "$ROUNDS"); do
    order=(A B)
    ((round % 2 == 0)) && order=(B A)
    for side in "${order[@]}"; do
        if [[ $FRESH == 1 && $round -gt 1 ]]; then
            stop "$side"
            start "$side"
            run "$side" "warm-$round" "$WARM" >/dev/null
        fi
        read -r rps cpu < <(run "$side" "$round")
        printf "%-6s %-4s %10s %12s\n" "$round" "$side" "$rps" "$cpu"
        echo "$side $rps $cpu" >>"$OUT/rounds.txt"
    done
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for side in A B; do
    declare "RPS_$side=$(awk -v s="$side" '$1 == s { print $2 }' "$OUT/rounds.txt" | median)"
    declare "CPU_$side=$(awk -v s="$side" '$1 == s { print $3 }' "$OUT/rounds.txt" | median)"
done
echo
echo "A: $A"
echo "B: $B"
echo "FRESH=$FRESH PIN=$PIN, $ROUNDS rounds of ${DURATION} s, -c$CONNECTIONS"
awk -v ra="$RPS_A" -v rb="$RPS_B" -v ca="$CPU_A" -v cb="$CPU_B" 'BEGIN {
    printf "median req/s        A %8.0f  B %8.0f  B÷A %.3f\n", ra, rb, rb / ra
    printf "median CPU µs/req   A %8.2f  B %8.2f  B÷A %.3f\n", ca, cb, cb / ca }'
echo "(rounds and wrk outputs in $OUT)"
