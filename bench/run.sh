#!/usr/bin/env bash
# authgate benchmark (issue 9): authgate and its anchors measured side by side in one run.
#
#   bench/run.sh            full run: ROUNDS (3) interleaved rounds of DURATION (10) s per target,
#                           medians written to bench/RESULTS.md
#   bench/run.sh --smoke    1 round of 1 s per target: checks that every target answers 2xx and
#                           that the results can be produced (bench/out/RESULTS-smoke.md); no
#                           assertion on speed; debug binaries unless BENCH_PROFILE=release.
#                           CI runs this.
#   bench/run.sh --no-build reuse the release binaries already in target/release
#
# Environment: DURATION (s, default 10), ROUNDS (3), CONNECTIONS (32), WARMUP (s, default 2;
# 0 skips the warm-up), BENCH_NOTE (a sentence added to RESULTS.md), TARGETS (space-separated
# subset of target names, default all; `jwt-verify` selects the verification timer, `authgate`
# every authgate scenario; a subset
# run writes bench/out/RESULTS-subset.md, not bench/RESULTS.md), RESULTS_FILE (where to write
# the results instead), MEM_KEYS / MEM_TOKENS (memory probe sizes), UNCACHED_TOKENS (distinct
# tokens per uncached scenario, 5000), SEARCH_CONNECTIONS (64), SEARCH_DELAY_MS (200),
# VERIFY_BATCHES (7) / VERIFY_BATCH_MS (200) (the JWT verification timer), PROXY_THREADS (1:
# worker threads of every proxy; a full run with 2 writes bench/RESULTS-threads2.md),
# AUTHGATE_BIN (the authgate binary the scenarios run, default the one built), PGO_BIN (an
# authgate from bench/pgo.sh: adds ag-{public,hs256,rs256,opaque,all}-pgo), PIN (default 1 with
# one worker: the proxy under test on core 0, wrk and the upstreams on core 1; 0 to not pin).
#
# It installs what is missing with apt (nginx-light, haproxy, wrk, redis-server, procps, curl),
# builds the release binaries, starts on loopback only: an nginx upstream serving a small fixed
# JSON body (one worker), upstream-mock (JWKS, introspection, token minting), a redis-server of
# its own (no persistence), and every proxy with one worker thread. Every process it starts is
# killed on exit. Raw wrk outputs go to bench/out/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=0
BUILD=1
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        --no-build) BUILD=0 ;;
        -h | --help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

if [[ $SMOKE == 1 ]]; then
    DURATION=1
    ROUNDS=1
    WARMUP=0
    UNCACHED_TOKENS=${UNCACHED_TOKENS:-200}
    VERIFY_BATCHES=3
    VERIFY_BATCH_MS=20
    # The probes only have to work here (debug binaries): smaller fills.
    MEM_KEYS=${MEM_KEYS:-100000}
    MEM_TOKENS=${MEM_TOKENS:-10000}
fi
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2}
WRK_THREADS=1
# PERF=1: a cpu-clock profile (kernel included) of each proxy during each measured round, in
# the run folder as perf-TARGET-rROUND.data; bench/perf-table.sh RUN_FOLDER compares them.
# The sampling costs the proxy CPU: a PERF=1 run's CPU figures are not for the budgets.
PERF=${PERF:-0}
PERF_FREQ=${PERF_FREQ:-4000}
# Worker threads of every proxy (nginx, HAProxy, pingora, authgate); wrk and the upstream keep
# one each and share the machine's cores with them.
PROXY_THREADS=${PROXY_THREADS:-1}
[[ $PROXY_THREADS =~ ^[1-9][0-9]*$ ]] || { echo "PROXY_THREADS must be a positive integer" >&2; exit 2; }
MEM_KEYS=${MEM_KEYS:-1000000}
MEM_TOKENS=${MEM_TOKENS:-100000}
UNCACHED_TOKENS=${UNCACHED_TOKENS:-5000}
SEARCH_CONNECTIONS=${SEARCH_CONNECTIONS:-64}
SEARCH_DELAY_MS=${SEARCH_DELAY_MS:-200}
VERIFY_BATCHES=${VERIFY_BATCHES:-7}
VERIFY_BATCH_MS=${VERIFY_BATCH_MS:-200}
JWT_SECRET_VALUE="bench-hs256-secret-0123456789abcdef"
INTROSPECTION_CLIENT="authgate:bench-introspection-secret"
REQ_PATH="/api/bench/items/?page=1"
SEARCH_CHECK_PATH="/api/products/search/?q=yoga+mat&delay_ms=$SEARCH_DELAY_MS"
# Whether a target (or `jwt-verify`) is part of this run.
wanted() { [[ -z ${TARGETS:-} || " $TARGETS " == *" $1 "* || ($1 == ag-* && " $TARGETS " == *" authgate "*) ]]; }

# median(S): the median of the space-separated numbers in S, for the awk programs below.
AWK_MEDIAN='
    function median(s,   n, a, i, j, x) {
        n = split(s, a, " ")
        for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > x + 0; j--) a[j + 1] = a[j]; a[j + 1] = x }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }'
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# ---------------------------------------------------------------- packages
SUDO=""
if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
fi
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need nginx nginx-light
need haproxy haproxy
need wrk wrk
need redis-server redis-server
need redis-cli redis-tools
need pgrep procps
need curl curl
need getconf libc-bin
need taskset util-linux
[[ $PERF == 1 ]] && need perf linux-perf
if ((${#missing[@]})); then
    log "installing ${missing[*]} with apt"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || { [[ " ${missing[*]} " == *" nginx-light "* ]] \
             && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
                    "${missing[@]/nginx-light/nginx}" >/dev/null; } \
        || die "apt-get install ${missing[*]}"
fi
# Debian's packages start the services on install on real machines; the bench uses its own.

# ---------------------------------------------------------------- build
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# The smoke run checks that the script and every target work, not how fast: it uses the debug
# build the tests already made (BENCH_PROFILE=release to smoke-test the release build instead).
BENCH_PROFILE=${BENCH_PROFILE:-$([[ $SMOKE == 1 ]] && echo debug || echo release)}
case $BENCH_PROFILE in
    release) profile_flag=(--release) ;;
    debug) profile_flag=() ;;
    *) echo "BENCH_PROFILE must be release or debug" >&2; exit 2 ;;
esac
BIN=$TARGET_DIR/$BENCH_PROFILE
if [[ $BUILD == 1 ]]; then
    log "building $BENCH_PROFILE binaries"
    cargo build "${profile_flag[@]}" --locked -p authgate -p upstream-mock -p authgate-bench-probes
    # The stock anchors are their own workspace: they must not see the root's pingora patch.
    cargo build "${profile_flag[@]}" --locked --manifest-path "$ROOT/bench/pingora-stock/Cargo.toml" \
        --target-dir "$TARGET_DIR"
fi
# AUTHGATE_BIN: another authgate binary to run the scenarios with.
AUTHGATE_BIN=${AUTHGATE_BIN:-$BIN/authgate}
[[ -x $AUTHGATE_BIN ]] || die "$AUTHGATE_BIN is missing"
# PGO_BIN: an authgate built by bench/pgo.sh; adds the *-pgo targets (five scenarios on it).
PGO_BIN=${PGO_BIN:-}
[[ -z $PGO_BIN || -x $PGO_BIN ]] || die "PGO_BIN $PGO_BIN is missing"
for b in authgate upstream-mock pingora-plain pingora-tuned pingora-floor authgate-memory authgate-verify; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing (build first, or drop --no-build)"
done

# ---------------------------------------------------------------- run folder, cleanup
STAMP=$(date +%Y%m%d-%H%M%S)
if [[ $SMOKE == 1 ]]; then
    RUN=$ROOT/bench/out/smoke
    RESULTS=$ROOT/bench/out/RESULTS-smoke.md
else
    RUN=$ROOT/bench/out/run-$STAMP
    RESULTS=$ROOT/bench/RESULTS.md
    ((PROXY_THREADS > 1)) && RESULTS=$ROOT/bench/RESULTS-threads$PROXY_THREADS.md
    # A subset run must not replace the full results.
    [[ -n ${TARGETS:-} ]] && RESULTS=$ROOT/bench/out/RESULTS-subset.md
fi
RESULTS=${RESULTS_FILE:-$RESULTS}
rm -rf "$RUN"
mkdir -p "$RUN"
log "run folder: ${RUN#"$ROOT"/}"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pids
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- pinning
# With one worker per proxy, the proxy under test runs alone on core 0 and everything that
# serves or drives it (upstream nginx, upstream-mock, redis, wrk) on core 1, so where the
# scheduler puts each proxy next to its peers is the same for every target. Unpinned ab.sh runs
# once carried a bias of up to ±15 % for a whole run, and placement was one suspected cause
# (bench/ANALYSIS.md). PIN=0 turns it off; a two-worker run is not pinned.
PIN=${PIN:-$([[ $PROXY_THREADS == 1 ]] && (($(nproc) >= 2)) && echo 1 || echo 0)}
CORE_PROXY=() CORE_PEER=()
if [[ $PIN == 1 ]] && ! taskset -c 0,1 true 2>/dev/null; then
    log "cores 0 and 1 cannot both be used here (taskset): not pinning"
    PIN=0
fi
if [[ $PIN == 1 ]]; then
    CORE_PROXY=(taskset -c 0) CORE_PEER=(taskset -c 1)
fi

# ---------------------------------------------------------------- upstream nginx
free_port UP_PORT
# shellcheck source=bench/upstream-nginx.sh
source "$ROOT/bench/upstream-nginx.sh"
write_upstream_nginx_conf "$RUN/nginx-upstream" "$UP_PORT"
"${CORE_PEER[@]}" nginx -p "$RUN/nginx-upstream" -c "$RUN/nginx-upstream/nginx.conf" -e "$RUN/nginx-upstream/error.log" \
    >"$RUN/nginx-upstream/stdout.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
wait_http "upstream nginx" "$UP_PORT" "$UP_PID" "$RUN/nginx-upstream/error.log"
# Its worker too, in case the master has to be killed hard (workers outlive a SIGKILLed master).
for p in $(pgrep -P "$UP_PID" || true); do PIDS+=("$p"); done

# ---------------------------------------------------------------- upstream-mock, redis
free_port MOCK_PORT
RUST_LOG=warn "${CORE_PEER[@]}" "$BIN/upstream-mock" --listen "127.0.0.1:$MOCK_PORT" --jwt-secret "$JWT_SECRET_VALUE" \
    --introspection-client "$INTROSPECTION_CLIENT" --keys-dir "$ROOT/upstream-mock/keys" \
    --access-ttl 7200 >"$RUN/upstream-mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_http "upstream-mock" "$MOCK_PORT" "$MOCK_PID" "$RUN/upstream-mock.log"

free_port REDIS_PORT
mkdir -p "$RUN/redis"
"${CORE_PEER[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --dir "$RUN/redis" --logfile "$RUN/redis/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 1 100); do
    [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] && break
    kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited (see $RUN/redis/redis.log)"
    sleep 0.1
done
[[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] || die "redis-server did not answer"

# ---------------------------------------------------------------- tokens
mint() { "$BIN/upstream-mock" mint --sub 42 --ttl 7200 --scope "read write" "$@"; }
TOKEN_HS256=$(mint --alg HS256 --jwt-secret "$JWT_SECRET_VALUE") || die "minting the HS256 token"
TOKEN_HS256_ISS=$(mint --alg HS256 --jwt-secret "$JWT_SECRET_VALUE" --iss https://i10.bench) || die "minting the HS256 token with iss"
TOKEN_RS256=$(mint --alg RS256 --kid rsa-1 --keys-dir "$ROOT/upstream-mock/keys") || die "minting the RS256 token"
TOKEN_OPAQUE=$(curl -sf --max-time 5 -H 'content-type: application/json' \
    -d '{"sub":"42","scope":"read write","ttl_s":7200}' "http://127.0.0.1:$MOCK_PORT/__mock/opaque" \
    | sed -n 's/.*"token" *: *"\([^"]*\)".*/\1/p') || true
[[ -n $TOKEN_HS256 && -n $TOKEN_RS256 && -n $TOKEN_OPAQUE ]] || die "could not get the bench tokens"
TOKEN_ES256=$(mint --alg ES256 --kid ec-1 --keys-dir "$ROOT/upstream-mock/keys") || die "minting the ES256 token"
# DPoP proofs (issue 21) for the verification timer, for the request it expects.
proof() { "$BIN/upstream-mock" dpop-proof --method GET --url http://bench.test/dpop --token bench-token "$@"; }
PROOF_ES256=$(proof --kid ec-1 --alg ES256) || die "making the ES256 DPoP proof"
PROOF_EDDSA=$(proof --kid ed-1 --alg EdDSA) || die "making the EdDSA DPoP proof"

# Uncached scenarios (issue 4): UNCACHED_TOKENS distinct tokens each, all for subject 42 with the
# same scopes as the cached ones (so only the token cache differs): RS256 tokens that differ in
# their jti, signed by upstream-mock (POST /__mock/mint, claims verbatim), and opaque tokens
# issued by upstream-mock (POST /__mock/opaque). One curl over one keep-alive connection each.
# mint_many KIND FILE: KIND rs256 or opaque; writes one token per line.
mint_many() {
    local kind=$1 file=$2 cfg=$RUN/mint-$1.curlrc now i
    now=$(date +%s)
    {
        echo 'silent'
        echo 'fail'
        echo 'max-time = 300'
        for ((i = 1; i <= UNCACHED_TOKENS; i++)); do
            ((i > 1)) && echo 'next'
            echo 'header = "content-type: application/json"'
            if [[ $kind == rs256 ]]; then
                echo "url = \"http://127.0.0.1:$MOCK_PORT/__mock/mint\""
                printf 'data = "{\\"alg\\":\\"RS256\\",\\"kid\\":\\"rsa-1\\",\\"claims\\":{\\"token_type\\":\\"access\\",\\"exp\\":%d,\\"iat\\":%d,\\"jti\\":\\"bench-uncached-%d\\",\\"user_id\\":42,\\"scope\\":\\"read write\\"}}"\n' \
                    $((now + 7200)) "$now" "$i"
            else
                echo "url = \"http://127.0.0.1:$MOCK_PORT/__mock/opaque\""
                echo 'data = "{\"sub\":\"42\",\"scope\":\"read write\",\"ttl_s\":7200}"'
            fi
        done
    } >"$cfg"
    curl -K "$cfg" 2>"$RUN/mint-$kind.err" | grep -o '"token" *: *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/' >"$file" || true
    local n
    n=$(wc -l <"$file")
    [[ $n == "$UNCACHED_TOKENS" ]] || die "minting $kind tokens: got $n of $UNCACHED_TOKENS ($(head -c 300 "$RUN/mint-$kind.err"))"
    [[ $(sort -u "$file" | wc -l) == "$n" ]] || die "minting $kind tokens: duplicates"
}
TOKENS_RS256_FILE=$RUN/tokens-rs256.txt
TOKENS_OPAQUE_FILE=$RUN/tokens-opaque.txt
if wanted ag-rs256-uncached; then
    log "minting $UNCACHED_TOKENS distinct RS256 tokens"
    mint_many rs256 "$TOKENS_RS256_FILE"
fi
if wanted ag-opaque-uncached; then
    log "issuing $UNCACHED_TOKENS distinct opaque tokens"
    mint_many opaque "$TOKENS_OPAQUE_FILE"
fi

# ---------------------------------------------------------------- anchors
free_port NGINX_PORT
mkdir -p "$RUN/nginx-proxy"
cat >"$RUN/nginx-proxy/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $PROXY_THREADS;
pid $RUN/nginx-proxy/nginx.pid;
error_log $RUN/nginx-proxy/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $RUN/nginx-proxy/tmp;
    proxy_temp_path $RUN/nginx-proxy/tmp;
    upstream fast {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://fast;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
"${CORE_PROXY[@]}" nginx -p "$RUN/nginx-proxy" -c "$RUN/nginx-proxy/nginx.conf" -e "$RUN/nginx-proxy/error.log" \
    >"$RUN/nginx-proxy/stdout.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_http "nginx proxy" "$NGINX_PORT" "$NGINX_PID" "$RUN/nginx-proxy/error.log"
for p in $(pgrep -P "$NGINX_PID" || true); do PIDS+=("$p"); done

HAPROXY_VERSION=$(haproxy -v 2>/dev/null | sed -n '1s/^HA-\{0,1\}Proxy version \([^ ]*\).*/\1/p')
HAPROXY_JWT=0
HAPROXY_BUILD=$(haproxy -vv 2>/dev/null || true)
if [[ $HAPROXY_BUILD == *USE_OPENSSL=1* ]]; then
    # jwt_verify exists from 2.5 on, in OpenSSL builds; the config check below is the real test.
    HAPROXY_JWT=1
fi
free_port HAPROXY_PORT
HAPROXY_NOTE=""
write_haproxy_cfg() {
    local jwt=$1
    {
        cat <<EOF
global
    nbthread $PROXY_THREADS
    maxconn 4000
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    option http-keep-alive
frontend bench
    bind 127.0.0.1:$HAPROXY_PORT
    http-request set-var(txn.bearer) http_auth_bearer
EOF
        if [[ $jwt == 1 ]]; then
            cat <<EOF
    # HS256 JWT: algorithm pinned, signature, then exp (as authgate does), subject for the limit.
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
    http-request deny deny_status 401 unless { var(txn.alg) -m str HS256 }
    http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$JWT_SECRET_VALUE") -m int 1 }
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
    http-request set-var(txn.now) date
    http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
    http-request set-var(txn.sub) var(txn.bearer),jwt_payload_query('\$.user_id','int')
EOF
        else
            cat <<EOF
    # Fallback without jwt_verify: only checks that a bearer token is present.
    http-request deny deny_status 401 unless { var(txn.bearer) -m found }
    http-request set-var(txn.sub) var(txn.bearer),crc32
EOF
        fi
        cat <<EOF
    # Stick-table rate limit keyed by subject, with a limit nothing reaches.
    http-request track-sc0 var(txn.sub) table per_subject
    http-request deny deny_status 429 if { sc_http_req_rate(0,per_subject) gt 1000000000 }
    default_backend fast
backend per_subject
    stick-table type integer size 1m expire 60s store http_req_rate(10s)
backend fast
    http-reuse safe
    server up 127.0.0.1:$UP_PORT
EOF
    } >"$RUN/haproxy.cfg"
}
write_haproxy_cfg "$HAPROXY_JWT"
if ! haproxy -c -q -f "$RUN/haproxy.cfg" >"$RUN/haproxy-check.log" 2>&1; then
    if [[ $HAPROXY_JWT == 1 ]]; then
        HAPROXY_JWT=0
        HAPROXY_NOTE="haproxy $HAPROXY_VERSION refused the jwt_verify configuration ($(head -c 300 "$RUN/haproxy-check.log" | tr '\n' ' ')); the HAProxy row only checks that a bearer token is present plus the stick-table limit, so it is cheaper than a real JWT check."
        write_haproxy_cfg 0
        haproxy -c -q -f "$RUN/haproxy.cfg" >"$RUN/haproxy-check.log" 2>&1 || die "haproxy config: $(cat "$RUN/haproxy-check.log")"
    else
        die "haproxy config: $(cat "$RUN/haproxy-check.log")"
    fi
elif [[ $HAPROXY_JWT == 0 ]]; then
    HAPROXY_NOTE="haproxy $HAPROXY_VERSION is built without OpenSSL, so it has no jwt_verify; the HAProxy row only checks that a bearer token is present plus the stick-table limit."
fi
"${CORE_PROXY[@]}" haproxy -db -f "$RUN/haproxy.cfg" >"$RUN/haproxy.log" 2>&1 &
HAPROXY_PID=$!
PIDS+=("$HAPROXY_PID")
wait_http "haproxy" "$HAPROXY_PORT" "$HAPROXY_PID" "$RUN/haproxy.log"

# start_baseline BIN: a plain pingora proxy (stock or tuned) on a free port; sets BASE_PORT and
# BASE_PID.
start_baseline() {
    free_port BASE_PORT
    "${CORE_PROXY[@]}" "$BIN/$1" --listen "127.0.0.1:$BASE_PORT" --upstream "127.0.0.1:$UP_PORT" --threads "$PROXY_THREADS" \
        >"$RUN/$1.log" 2>&1 &
    BASE_PID=$!
    PIDS+=("$BASE_PID")
    wait_http "$1" "$BASE_PORT" "$BASE_PID" "$RUN/$1.log"
}
start_baseline pingora-plain
PLAIN_PORT=$BASE_PORT PLAIN_PID=$BASE_PID
start_baseline pingora-tuned
TUNED_PORT=$BASE_PORT TUNED_PID=$BASE_PID
# The tuned proxy on the workspace's patched pingora (bench/probes): any proxy's floor on it.
start_baseline pingora-floor
FLOOR_PORT=$BASE_PORT FLOOR_PID=$BASE_PID

# ---------------------------------------------------------------- authgate scenarios
# name:config:RUST_LOG
SCENARIOS=(
    "ag-public:a-public.yaml:warn"
    "ag-local-limit:local-limit.yaml:warn"
    "ag-shared-limit:e-shared-limit.yaml:warn"
    "ag-hs256:b-hs256.yaml:warn"
    "ag-hs256-assertion:b-hs256-assertion.yaml:warn"
    "ag-hs256-ten-issuers:b-hs256-ten-issuers.yaml:warn"
    "ag-rs256:c-rs256.yaml:warn"
    "ag-opaque:d-opaque.yaml:warn"
    "ag-all:f-all.yaml:info"
    "ag-all-nolog:f-all.yaml:warn"
    "ag-rs256-uncached:c-rs256-uncached.yaml:warn"
    "ag-opaque-uncached:d-opaque-uncached.yaml:warn"
    "ag-search-uncached:g-search-uncached.yaml:warn"
    "ag-search-cached:g-search-cached.yaml:warn"
)
PGO_TARGETS=()
if [[ -n $PGO_BIN ]]; then
    PGO_TARGETS=(ag-public-pgo ag-hs256-pgo ag-rs256-pgo ag-opaque-pgo ag-all-pgo)
    SCENARIOS+=("ag-public-pgo:a-public.yaml:warn" "ag-hs256-pgo:b-hs256.yaml:warn" "ag-rs256-pgo:c-rs256.yaml:warn"
        "ag-opaque-pgo:d-opaque.yaml:warn" "ag-all-pgo:f-all.yaml:info")
fi
declare -A PORT PIDOF HEADER DESC ADMIN PATHOF CONNS
for s in "${SCENARIOS[@]}"; do
    IFS=: read -r name cfg level <<<"$s"
    port="" admin=""
    free_port port
    free_port admin
    errlog=$RUN/$name.log
    bin=$AUTHGATE_BIN
    [[ $name == *-pgo ]] && bin=$PGO_BIN
    # The access log of the "all" scenario is written in full by the smoke run (to check it), and
    # thrown away by measuring runs (it would be hundreds of MB; /dev/null still pays formatting).
    if [[ $name == ag-all* && $SMOKE == 0 ]]; then errlog=/dev/null; fi
    # The environment the configuration expands (${BENCH_*}) and its secrets.
    ag_env=(BENCH_LISTEN="127.0.0.1:$port" BENCH_ADMIN="127.0.0.1:$admin" BENCH_UPSTREAM="127.0.0.1:$UP_PORT" BENCH_THREADS="$PROXY_THREADS"
        BENCH_MOCK="127.0.0.1:$MOCK_PORT" BENCH_REDIS="127.0.0.1:$REDIS_PORT"
        JWT_SECRET="$JWT_SECRET_VALUE" INTROSPECTION_SECRET="${INTROSPECTION_CLIENT#*:}")
    env "${ag_env[@]}" "$bin" check --config "$ROOT/bench/configs/$cfg" >"$RUN/$name.check.txt" 2>&1 \
        || die "authgate check of bench/configs/$cfg: $(cat "$RUN/$name.check.txt")"
    "${CORE_PROXY[@]}" env "${ag_env[@]}" RUST_LOG="$level" "$bin" --config "$ROOT/bench/configs/$cfg" 2>"$errlog" >/dev/null &
    pid=$!
    PIDS+=("$pid")
    PORT[$name]=$port
    PIDOF[$name]=$pid
    ADMIN[$name]=$admin
    [[ $name == ag-all ]] && ALL_ADMIN=$admin
    wait_http "authgate $name" "$port" "$pid" "$RUN/$name.log"
done

# ---------------------------------------------------------------- targets
# Anchors first, then authgate; every round runs them all in this order.
PORT[direct]=$UP_PORT
PORT[nginx]=$NGINX_PORT
PORT[haproxy-jwt]=$HAPROXY_PORT
PORT[pingora-plain]=$PLAIN_PORT
PORT[pingora-tuned]=$TUNED_PORT
PORT[pingora-floor]=$FLOOR_PORT
HEADER[haproxy-jwt]=$TOKEN_HS256
HEADER[ag-hs256]=$TOKEN_HS256
HEADER[ag-hs256-assertion]=$TOKEN_HS256
HEADER[ag-hs256-ten-issuers]=$TOKEN_HS256_ISS
HEADER[ag-rs256]=$TOKEN_RS256
HEADER[ag-opaque]=$TOKEN_OPAQUE
HEADER[ag-all]=$TOKEN_HS256
HEADER[ag-all-nolog]=$TOKEN_HS256
HEADER[ag-hs256-pgo]=$TOKEN_HS256
HEADER[ag-all-pgo]=$TOKEN_HS256
HEADER[ag-rs256-pgo]=$TOKEN_RS256
HEADER[ag-opaque-pgo]=$TOKEN_OPAQUE
# The uncached scenarios are checked (2xx, forged 401) with their first token; wrk cycles them all.
[[ -s $TOKENS_RS256_FILE ]] && HEADER[ag-rs256-uncached]=$(head -1 "$TOKENS_RS256_FILE")
[[ -s $TOKENS_OPAQUE_FILE ]] && HEADER[ag-opaque-uncached]=$(head -1 "$TOKENS_OPAQUE_FILE")
for t in ag-search-uncached ag-search-cached; do
    PATHOF[$t]=$SEARCH_CHECK_PATH
    CONNS[$t]=$SEARCH_CONNECTIONS
done
DESC[direct]="upstream nginx hit directly (CPU: the upstream's own)"
DESC[nginx]="nginx plain proxy_pass, upstream keepalive"
if [[ $HAPROXY_JWT == 1 ]]; then
    DESC[haproxy-jwt]="HAProxy $HAPROXY_VERSION, HS256 jwt_verify + exp + stick-table limit"
else
    DESC[haproxy-jwt]="HAProxy $HAPROXY_VERSION, bearer present (NO jwt_verify) + stick-table limit"
fi
DESC[pingora-plain]="stock pingora 0.9 plain proxy, defaults"
DESC[pingora-tuned]="the same pingora proxy with mimalloc and work stealing off (as authgate)"
DESC[pingora-floor]="that tuned proxy on authgate's patched pingora, header case off (PATCHES.md): the floor of any proxy on it"
DESC[ag-public]="authgate (a) public route"
DESC[ag-local-limit]="authgate public route + local limit"
DESC[ag-shared-limit]="authgate (e) public route + Redis-shared limit"
DESC[ag-hs256]="authgate (b) HS256 JWT + local limit"
DESC[ag-hs256-assertion]="authgate (b) with upstream_assertion (EdDSA, reused per identity)"
DESC[ag-hs256-ten-issuers]="authgate (b) with ten HS256 providers on the route, the token naming the last issuer"
DESC[ag-rs256]="authgate (c) RS256 JWT (cached) + local limit"
DESC[ag-opaque]="authgate (d) opaque token, tier-1 cache + local limit"
DESC[ag-all]="authgate (f) JWT + local + shared limit, upstream assertion, metrics, access log"
DESC[ag-all-nolog]="authgate (f) without the access log (RUST_LOG=warn): what the log costs"
DESC[ag-public-pgo]="ag-public on the PGO build (bench/pgo.sh)"
DESC[ag-hs256-pgo]="ag-hs256 on the PGO build"
DESC[ag-all-pgo]="ag-all on the PGO build"
DESC[ag-rs256-pgo]="ag-rs256 on the PGO build"
DESC[ag-opaque-pgo]="ag-opaque on the PGO build"
DESC[ag-rs256-uncached]="authgate (c) RS256 JWT, a different token every request (cache of 1) + local limit"
DESC[ag-opaque-uncached]="authgate (d) opaque token, a different token every request: introspection each time + local limit"
DESC[ag-search-uncached]="authgate (g) search mix, upstream-mock at ${SEARCH_DELAY_MS} ms, no response cache (-c$SEARCH_CONNECTIONS)"
DESC[ag-search-cached]="authgate (g) search mix, upstream-mock at ${SEARCH_DELAY_MS} ms, response cache ttl 60s (-c$SEARCH_CONNECTIONS)"

ALL_TARGETS=(direct nginx haproxy-jwt pingora-plain pingora-tuned pingora-floor ag-public ag-local-limit ag-shared-limit ag-hs256 ag-hs256-assertion ag-hs256-ten-issuers ag-rs256
    ag-opaque ag-all ag-all-nolog ag-rs256-uncached ag-opaque-uncached ag-search-uncached ag-search-cached "${PGO_TARGETS[@]}")
VERIFY=1
if [[ -n ${TARGETS:-} ]]; then
    RUN_TARGETS=()
    VERIFY=0
    for t in $TARGETS; do
        if [[ $t == jwt-verify ]]; then VERIFY=1; continue; fi
        # `authgate`: every authgate scenario on AUTHGATE_BIN.
        if [[ $t == authgate ]]; then
            for s in "${SCENARIOS[@]}"; do [[ ${s%%:*} == *-pgo ]] || RUN_TARGETS+=("${s%%:*}"); done
            continue
        fi
        [[ -n ${DESC[$t]:-} ]] || die "unknown target $t"
        RUN_TARGETS+=("$t")
    done
else
    RUN_TARGETS=("${ALL_TARGETS[@]}")
fi

# Process ids whose CPU time is charged to a target (nginx: master + worker).
pids_of() {
    case "$1" in
        direct) echo "$UP_PID $(pgrep -P "$UP_PID" | tr '\n' ' ')" ;;
        nginx) echo "$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')" ;;
        haproxy-jwt) echo "$HAPROXY_PID" ;;
        pingora-plain) echo "$PLAIN_PID" ;;
        pingora-tuned) echo "$TUNED_PID" ;;
        pingora-floor) echo "$FLOOR_PID" ;;
        *) echo "${PIDOF[$1]}" ;;
    esac
}

# utime + stime of the processes (all their threads), in clock ticks.
cpu_ticks() {
    local total=0 p s f
    for p in "$@"; do
        [[ -r /proc/$p/stat ]] || continue
        s=$(<"/proc/$p/stat")
        s=${s##*) }
        read -r -a f <<<"$s"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}
# stime alone: the kernel's share (loopback TCP, wake-ups of the peers), for the user/system split.
sys_ticks() {
    local total=0 p s f
    for p in "$@"; do
        [[ -r /proc/$p/stat ]] || continue
        s=$(<"/proc/$p/stat")
        s=${s##*) }
        read -r -a f <<<"$s"
        total=$((total + f[12]))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# One request before measuring: must be 2xx.
check_target() {
    local t=$1 code
    local -a h=()
    [[ -n ${HEADER[$t]:-} ]] && h=(-H "Authorization: Bearer ${HEADER[$t]}")
    code=$(curl -s -o "$RUN/check-$t.body" -w '%{http_code}' --max-time 5 "${h[@]}" \
        "http://127.0.0.1:${PORT[$t]}${PATHOF[$t]:-$REQ_PATH}") || code=000
    if [[ $code != 2?? ]]; then
        log "target $t answered $code: $(head -c 400 "$RUN/check-$t.body" 2>/dev/null)"
        return 1
    fi
    echo "$code"
}

# "commands scripts reads": Redis commands (INFO excluded), EVAL/EVALSHA calls, and read
# system calls of redis-server (one per batch of commands a client sends: its round trips).
# Authenticated targets must refuse a forged token (so no target passes by not checking).
check_refuses_forgery() {
    local t=$1 code forged
    [[ -n ${HEADER[$t]:-} ]] || return 0
    # Change one character of the signature (not the last: its low bits can be base64 padding that
    # decoders ignore): a bad signature for a JWT, an unknown token for an opaque one.
    local tok=${HEADER[$t]} i c
    i=$((${#tok} - 5))
    c=${tok:i:1}
    if [[ $c == A ]]; then c=B; else c=A; fi
    forged=${tok:0:i}$c${tok:i+1}
    code=$(curl -s -o "$RUN/forged-$t.body" -w '%{http_code}' --max-time 5 \
        -H "Authorization: Bearer $forged" "http://127.0.0.1:${PORT[$t]}${PATHOF[$t]:-$REQ_PATH}") || code=000
    if [[ $code != 401 ]]; then
        log "target $t answered $code to a forged token (expected 401)"
        return 1
    fi
}

# What Redis says one key matching the pattern takes (MEMORY USAGE: key, value, overhead).
redis_key_bytes() {
    local key
    key=$(redis-cli -p "$REDIS_PORT" --scan --pattern "$1" 2>/dev/null | head -n 1)
    [[ -n $key ]] || { echo n/a; return; }
    redis-cli -p "$REDIS_PORT" memory usage "$key" 2>/dev/null || echo n/a
}

redis_calls() {
    local reads
    reads=$(awk '/^syscr:/ { print $2 }' "/proc/$REDIS_PID/io" 2>/dev/null || echo 0)
    redis-cli -p "$REDIS_PORT" info commandstats 2>/dev/null | tr -d '\r' \
        | awk -F'[:=,]' -v reads="${reads:-0}" '/^cmdstat_/ { n = substr($1, 9); if (n != "info") { tot += $3; if (n == "evalsha" || n == "eval") ev += $3 } }
                         END { printf "%d %d %d\n", tot, ev, reads }'
}

# Busy CPU ticks of the whole machine: user, nice, system, irq, softirq (loopback traffic is
# mostly softirq work done on behalf of the processes sending it), steal.
machine_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }

# CPU ticks of everything this script started: its services, and its finished children (wrk,
# curl...) as the shell's `times` reports them. `our_ticks VAR` sets VAR: `times` must run in
# this shell, not in a $(...) subshell, to see this shell's children.
our_ticks() {
    local own kids
    own=$(cpu_ticks "${PIDS[@]}")
    times >"$RUN/.times"
    kids=$(awk -v hz="$CLK_TCK" 'NR == 2 {
            t = 0
            for (i = 1; i <= 2; i++) { v = $i; m = v; sub(/m.*/, "", m); sec = v; sub(/^[0-9]+m/, "", sec); sub(/s$/, "", sec); t += m * 60 + sec }
            printf "%.0f", t * hz }' "$RUN/.times")
    printf -v "$1" '%s' $((own + kids))
}

busy_others() {
    # Other heavy processes on the machine (builds), to flag shared-machine runs.
    { pgrep -x 'rustc|cargo|cc1|cc1plus|ld|ld.lld|mold' 2>/dev/null || true; } | wc -l
}

# to_ms VALUE: "512.00us" / "1.20ms" / "1.01s" -> milliseconds
RAW=$RUN/raw.tsv
printf 'target\tround\trps\tp50_ms\tp99_ms\tcpu_us\trequests\tnon2xx\tsock_err\tredis_cmds\tredis_scripts\tbusy\tredis_reads\tother_cores\tsys_us\n' >"$RAW"

run_wrk() {
    local t=$1 round=$2 dur=$3 out=$4
    local -a h=() script=()
    case $t in
        ag-rs256-uncached) script=(-s "$ROOT/bench/wrk/tokens.lua") ;;
        ag-opaque-uncached) script=(-s "$ROOT/bench/wrk/tokens.lua") ;;
        ag-search-*) script=(-s "$ROOT/bench/wrk/search.lua") ;;
        *) [[ -n ${HEADER[$t]:-} ]] && h=(-H "Authorization: Bearer ${HEADER[$t]}") ;;
    esac
    local -a args=()
    case $t in
        ag-rs256-uncached) args=(-- "$TOKENS_RS256_FILE") ;;
        ag-opaque-uncached) args=(-- "$TOKENS_OPAQUE_FILE") ;;
        # A nonce unique to this run keeps the tail queries unseen; the seed (the round) gives
        # the cached and the uncached target the same draw.
        ag-search-*) args=(-- "r${round}n${RANDOM}${RANDOM}" "$((round + 1))" "$SEARCH_DELAY_MS") ;;
    esac
    timeout $((dur + 30)) "${CORE_PEER[@]}" wrk -t"$WRK_THREADS" -c"${CONNS[$t]:-$CONNECTIONS}" -d"${dur}s" --latency "${h[@]}" \
        "${script[@]}" "http://127.0.0.1:${PORT[$t]}${PATHOF[$t]:-$REQ_PATH}" "${args[@]}" >"$out" 2>&1
}

# Counters of authgate's /metrics that tell what the caches did: "series value" lines for
# authgate_response_cache_total and authgate_token_cache_total.
cache_counters() {
    local admin=${ADMIN[$1]:-}
    [[ -n $admin ]] || return 0
    curl -s --max-time 5 "http://127.0.0.1:$admin/metrics" 2>/dev/null \
        | awk '/^authgate_(response|token)_cache_total\{/ { print $1, $2 }' || true
}
CACHESTATS=$RUN/cachestats.tsv
printf 'target\tround\tseries\tdelta\trequests\n' >"$CACHESTATS"

measure() {
    local t=$1 round=$2 out pids c0 c1 k0 k1 r0 r1 m0 m1 o0 o1 busy
    out=$RUN/wrk-$t-r$round.txt
    pids=$(pids_of "$t")
    busy=$(busy_others)
    r0=$(redis_calls)
    m0=$(machine_ticks)
    our_ticks o0
    cache_counters "$t" >"$RUN/.counters0"
    # shellcheck disable=SC2086
    c0=$(cpu_ticks $pids)
    # shellcheck disable=SC2086
    k0=$(sys_ticks $pids)
    # A limiter key lives only until its bucket is full again: read its size while wrk runs.
    if [[ $t == ag-shared-limit ]]; then
        (sleep 1; redis_key_bytes 'bench-e:rl:*' >"$RUN/redis-bytes-limiter-key.txt") &
    fi
    local perf_pids=() plist
    if [[ $PERF == 1 ]]; then
        # shellcheck disable=SC2086
        plist=$(echo $pids | tr ' ' ,)
        "${CORE_PEER[@]}" perf record -q -e cpu-clock -F "$PERF_FREQ" -g -p "$plist" \
            -o "$RUN/perf-$t-r$round.data" -- sleep "$DURATION" >"$RUN/perf-$t-r$round.log" 2>&1 &
        perf_pids+=($!)
        # Wake-ups the proxy starts (sched_waking fires in the waker), context switches, and
        # system calls: counted, not sampled.
        "${CORE_PEER[@]}" perf stat -x, -e sched:sched_waking,sched:sched_switch,raw_syscalls:sys_enter -p "$plist" \
            -o "$RUN/perf-$t-r$round.stat" -- sleep "$DURATION" >>"$RUN/perf-$t-r$round.log" 2>&1 &
        perf_pids+=($!)
        # And whom it wakes (the wakee's command name).
        "${CORE_PEER[@]}" perf record -q -e sched:sched_waking -p "$plist" \
            -o "$RUN/perf-$t-r$round.wakes" -- sleep "$DURATION" >>"$RUN/perf-$t-r$round.log" 2>&1 &
        perf_pids+=($!)
    fi
    run_wrk "$t" "$round" "$DURATION" "$out" || die "wrk against $t failed: $(tail -5 "$out")"
    local p
    for p in "${perf_pids[@]}"; do wait "$p" || log "perf on $t failed (see $RUN/perf-$t-r$round.log)"; done
    # shellcheck disable=SC2086
    c1=$(cpu_ticks $pids)
    # shellcheck disable=SC2086
    k1=$(sys_ticks $pids)
    cache_counters "$t" >"$RUN/.counters1"
    our_ticks o1
    m1=$(machine_ticks)
    r1=$(redis_calls)
    if [[ $t == ag-shared-limit || $t == ag-all* ]]; then
        redis-cli -p "$REDIS_PORT" info commandstats >"$RUN/redis-commandstats-after-$t-r$round.txt" 2>&1 || true
    fi
    busy=$((busy + $(busy_others)))
    awk -v t="$t" -v round="$round" -v ticks=$((c1 - c0)) -v kticks=$((k1 - k0)) -v hz="$CLK_TCK" -v r0="$r0" -v r1="$r1" -v busy="$busy" \
        -v other=$(((m1 - m0) - (o1 - o0))) -v dur="$DURATION" '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
            return v + 0
        }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        $2 == "requests" && $3 == "in" { reqs = $1 }
        $1 == "Requests/sec:" { rps = $2 }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { gsub(/,/, ""); serr = $4 + $6 + $8 + $10 }
        END {
            split(r0, a, " "); split(r1, b, " ")
            cpu = reqs > 0 ? ticks * 1e6 / hz / reqs : 0
            rc = reqs > 0 ? (b[1] - a[1]) / reqs : 0
            rs = reqs > 0 ? (b[2] - a[2]) / reqs : 0
            rr = reqs > 0 ? (b[3] - a[3]) / reqs : 0
            oc = other / hz / dur
            sys = reqs > 0 ? kticks * 1e6 / hz / reqs : 0
            printf "%s\t%d\t%.0f\t%.3f\t%.3f\t%.2f\t%d\t%d\t%d\t%.3f\t%.3f\t%d\t%.3f\t%.2f\t%.2f\n",
                t, round, rps, p50, p99, cpu, reqs, non2xx + 0, serr + 0, rc, rs, busy, rr, oc, sys
        }' "$out" >>"$RAW"
    local line
    line=$(tail -1 "$RAW")
    # Cache counter deltas over the run, with wrk's request count.
    awk -v t="$t" -v round="$round" -v reqs="$(cut -f7 <<<"$line")" '
        FILENAME == ARGV[1] { before[$1] = $2; next }
        { printf "%s\t%s\t%s\t%.0f\t%s\n", t, round, $1, $2 - before[$1], reqs }' \
        "$RUN/.counters0" "$RUN/.counters1" >>"$CACHESTATS"
    log "$(awk -F'\t' '{ printf "%-18s round %s: %7d req/s  p50 %6.3f ms  p99 %6.3f ms  CPU %6.2f us/req  non-2xx %d", $1, $2, $3, $4, $5, $6, $8 }' <<<"$line")"
    [[ $(cut -f8 <<<"$line") == 0 ]] || die "$t answered non-2xx during the run ($out)"
}

# ---------------------------------------------------------------- checks, warm-up, rounds
for t in "${RUN_TARGETS[@]}"; do
    check_target "$t" >/dev/null || die "target $t did not answer 2xx"
    check_refuses_forgery "$t" || die "target $t does not check its tokens"
done
log "every target answered 2xx (and 401 to a forged token where it authenticates)"

if [[ $WARMUP -gt 0 ]]; then
    log "warm-up: ${WARMUP}s per target"
    for t in "${RUN_TARGETS[@]}"; do run_wrk "$t" 0 "$WARMUP" "$RUN/warmup-$t.txt" || die "warm-up of $t"; done
fi

# Odd rounds run the targets in the table's order, even rounds in reverse: the pairs a budget
# compares sit minutes apart in a round, and a drift of the host over a round then weighs on
# both sides alike.
for round in $(seq 1 "$ROUNDS"); do
    log "round $round of $ROUNDS"
    order=("${RUN_TARGETS[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#RUN_TARGETS[@]} - 1; i >= 0; i--)); do order+=("${RUN_TARGETS[i]}"); done
    fi
    for t in "${order[@]}"; do measure "$t" "$round"; done
done

# The access log of the "all" scenario must have been written when it was kept.
if [[ $SMOKE == 1 && " ${RUN_TARGETS[*]} " == *" ag-all "* ]]; then
    grep -q '"kind":"access"\|"kind": "access"' "$RUN/ag-all.log" \
        || log "warning: no access-log line found in $RUN/ag-all.log"
fi
if [[ -n ${ALL_ADMIN:-} ]]; then
    curl -s --max-time 5 "http://127.0.0.1:$ALL_ADMIN/metrics" >"$RUN/ag-all.metrics.txt" || true
fi

# ---------------------------------------------------------------- JWT verification timer
# Issue 3: the verification itself (authgate's JwtVerifier, no token cache), one algorithm at a
# time in one process, while the services above sit idle.
VERIFY_OUT=$RUN/verify.txt
VERIFY_BUSY=0
if [[ $VERIFY == 1 ]]; then
    log "JWT verification timer: $VERIFY_BATCHES batches of ~${VERIFY_BATCH_MS} ms per algorithm"
    VERIFY_BUSY=$(busy_others)
    timeout 300 "$BIN/authgate-verify" --keys-dir "$ROOT/upstream-mock/keys" --hmac-secret "$JWT_SECRET_VALUE" \
        --batches "$VERIFY_BATCHES" --batch-ms "$VERIFY_BATCH_MS" \
        "HS256=$TOKEN_HS256" "RS256=$TOKEN_RS256" "ES256=$TOKEN_ES256" \
        "DPOP-ES256=$PROOF_ES256" "DPOP-EDDSA=$PROOF_EDDSA" >"$VERIFY_OUT" 2>"$RUN/verify.err" \
        || die "authgate-verify failed: $(cat "$RUN/verify.err")"
    VERIFY_BUSY=$((VERIFY_BUSY + $(busy_others)))
    cat "$VERIFY_OUT" >&2
fi

# ---------------------------------------------------------------- memory probe
log "memory probe: $MEM_KEYS limiter keys, $MEM_TOKENS cached tokens"
MEM=$RUN/memory.txt
{
    timeout 300 "$BIN/authgate-memory" limiter "$MEM_KEYS"
    timeout 300 "$BIN/authgate-memory" tokens "$MEM_TOKENS"
    timeout 300 "$BIN/authgate-memory" principals "$MEM_TOKENS"
} >"$MEM" 2>"$RUN/memory.err" || die "memory probe failed: $(cat "$RUN/memory.err")"
cat "$MEM" >&2

# ---------------------------------------------------------------- RESULTS.md
cpu_model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem_total=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
git_rev=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
nginx_v=$(nginx -v 2>&1 | sed 's/^nginx version: //' || true)
wrk_v=$( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $2 }')
redis_v=$(redis-server --version 2>/dev/null | sed -n 's/.*v=\([^ ]*\).*/\1/p' || true)
rustc_v=$(rustc --version 2>/dev/null || echo unknown)

for t in "${RUN_TARGETS[@]}"; do printf '%s\t%s\n' "$t" "${DESC[$t]}"; done >"$RUN/desc.tsv"

{
    if [[ $SMOKE == 1 ]]; then
        echo "# authgate benchmark: SMOKE run (1 s per target, not a measurement)"
    else
        echo "# authgate benchmark results"
    fi
    echo
    echo "Generated by \`bench/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), authgate \`$git_rev\`."
    echo "Regenerate with \`bench/run.sh\` (see bench/README.md); raw wrk outputs are in"
    echo "\`bench/out/${RUN#"$ROOT"/bench/out/}/\` (not committed)."
    echo
    if [[ -n ${BENCH_NOTE:-} ]]; then
        echo "**Note:** $BENCH_NOTE"
        echo
    fi
    busy_runs=$(awk -F'\t' 'NR > 1 && $12 > 0 { n++ } END { print n + 0 }' "$RAW")
    total_runs=$(awk 'END { print NR - 1 }' "$RAW")
    other_runs=$(awk -F'\t' 'NR > 1 && $14 > 0.25 { n++ } END { print n + 0 }' "$RAW")
    other_max=$(awk -F'\t' 'NR > 1 && $14 > m { m = $14 } END { printf "%.2f", m }' "$RAW")
    if [[ $other_runs -gt 0 ]]; then
        echo "**Shared machine:** processes this script did not start used more than a quarter of a core during"
        echo "$other_runs of the $total_runs measured runs (up to $other_max cores; column \"other load\" of the last"
        echo "table), so those runs are noisy."
        echo
    fi
    if [[ $busy_runs -gt 0 ]]; then
        echo "**Shared machine:** compilers or linkers (cargo/rustc/cc/ld) were running during"
        echo "$busy_runs of the $total_runs measured runs, so absolute figures are low and noisy; ratios"
        echo "within a round are less affected but still suspect."
        echo
    fi
    if [[ -n $HAPROXY_NOTE ]]; then
        echo "**HAProxy:** $HAPROXY_NOTE"
        echo
    fi
    echo "## Machine"
    echo
    echo "- CPU: $cpu_model, $(nproc) cores online; memory $mem_total"
    echo "- Kernel: $(uname -sr); $(sed -n 's/^PRETTY_NAME="\(.*\)"/\1/p' /etc/os-release 2>/dev/null)"
    echo "- Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- nginx $nginx_v, HAProxy $HAPROXY_VERSION, wrk $wrk_v, redis $redis_v, $rustc_v"
    echo
    echo "## Settings"
    echo
    echo "- \`wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s --latency\`, \`GET $REQ_PATH\`, on loopback;"
    echo "  except: the uncached token targets, \`-s bench/wrk/tokens.lua\` cycling $UNCACHED_TOKENS distinct tokens;"
    echo "  the search targets (g), \`-c$SEARCH_CONNECTIONS -s bench/wrk/search.lua\` against upstream-mock's"
    echo "  \`/api/products/search/\` held ${SEARCH_DELAY_MS} ms."
    echo "- $ROUNDS round(s), interleaved: each round runs every target once, odd rounds in the order of the"
    echo "  table, even rounds in reverse; figures are the median over rounds. Warm-up: ${WARMUP} s per target"
    echo "  before round 1. A budget's \"measured\" is the ratio of the two medians (its verdict); \"per-round"
    echo "  median\" is the median of the ratios within each round, a check that pairs each round with itself."
    echo "- Every proxy has $PROXY_THREADS worker thread(s) (nginx \`worker_processes $PROXY_THREADS\`, HAProxy \`nbthread $PROXY_THREADS\`,"
    echo "  pingora/authgate \`threads: $PROXY_THREADS\`). The upstream is an nginx with one worker answering a fixed"
    if [[ $PIN == 1 ]]; then
        echo "  ${#UP_BODY}-byte JSON body. Pinned (PIN=1): the proxy under test on core 0; wrk, the upstream,"
        echo "  upstream-mock and redis on core 1 (so \"direct\" has wrk and the upstream on one core)."
    else
        echo "  ${#UP_BODY}-byte JSON body; wrk, the upstream and the proxy share the $(nproc) cores (not pinned)."
    fi
    echo "- CPU µs/req: utime+stime of the proxy process (all threads; nginx: master + worker) from"
    echo "  \`/proc/<pid>/stat\` over the wrk run, divided by the requests wrk counted (CLK_TCK $CLK_TCK)."
    echo "- authgate logs at RUST_LOG=warn in (a)-(e), info in (f) (access log on, written to"
    if [[ $SMOKE == 1 ]]; then echo "  a file)."; else echo "  /dev/null)."; fi
    echo "  Every rate limit is far above the load (nothing is refused); tokens are valid for 2 h."
    echo
    echo "## Results (median of $ROUNDS round(s))"
    echo
    echo "| target | what | req/s | p50 ms | p99 ms | CPU µs/req |"
    echo "|---|---|---:|---:|---:|---:|"
    awk -F'\t' "$AWK_MEDIAN"'
        FNR == NR { desc[$1] = $2; order[++no] = $1; next }
        FNR > 1 { rps[$1] = rps[$1] " " $3; p50[$1] = p50[$1] " " $4; p99[$1] = p99[$1] " " $5; cpu[$1] = cpu[$1] " " $6 }
        END {
            for (i = 1; i <= no; i++) {
                t = order[i]
                printf "| %s | %s | %.0f | %.3f | %.3f | %.2f |\n", t, desc[t], median(rps[t]), median(p50[t]), median(p99[t]), median(cpu[t])
            }
        }' "$RUN/desc.tsv" "$RAW"
    echo
} >"$RESULTS.tmp"

# Medians per target for the ratio table.
declare -A M_RPS M_CPU M_RCMD M_RSCR M_RRD M_P50 M_P99
while IFS=$'\t' read -r t rps cpu rc rs rr p50 p99; do
    M_RPS[$t]=$rps
    M_CPU[$t]=$cpu
    M_RCMD[$t]=$rc
    M_RSCR[$t]=$rs
    M_RRD[$t]=$rr
    M_P50[$t]=$p50
    M_P99[$t]=$p99
done < <(awk -F'\t' "$AWK_MEDIAN"'
    NR > 1 { if (!($1 in seen)) { seen[$1] = 1; order[++no] = $1 }
             rps[$1] = rps[$1] " " $3; cpu[$1] = cpu[$1] " " $6; rc[$1] = rc[$1] " " $10; rs[$1] = rs[$1] " " $11; rr[$1] = rr[$1] " " $13
             p50[$1] = p50[$1] " " $4; p99[$1] = p99[$1] " " $5 }
    END { for (i = 1; i <= no; i++) { t = order[i]; printf "%s\t%.0f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\n", t, median(rps[t]), median(cpu[t]), median(rc[t]), median(rs[t]), median(rr[t]), median(p50[t]), median(p99[t]) } }' "$RAW")

# verdict KIND MEASURED LIMIT: KIND "max" (measured must be <= limit) or "min" (>=).
verdict() {
    awk -v kind="$1" -v m="$2" -v l="$3" 'BEGIN {
        if (m == "" || l == "") { print "n/a"; exit }
        if (kind == "max") {
            if (m == l) printf "PASS (at the limit)"
            else if (m < l) printf "PASS (%.1f %% under the limit)", (l - m) / l * 100
            else printf "**MISS** by %.1f %% (%.3g over)", (m - l) / l * 100, m - l
        } else {
            if (m == l) printf "PASS (at the limit)"
            else if (m > l) printf "PASS (%.1f %% above the limit)", (m - l) / l * 100
            else printf "**MISS** by %.1f %% (%.3g short)", (l - m) / l * 100, l - m
        }
    }'
}
ratio() { awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print ""; else printf "%.3f", a / b }'; }
# paired COLUMN A B: the median over rounds of A's value ÷ B's in the same round (COLUMN of raw.tsv:
# rps, p99_ms or cpu_us), a check on the ratio of medians that pairs each round with itself.
paired() {
    awk -F'\t' -v col="$1" -v a="$2" -v b="$3" "$AWK_MEDIAN"'
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        $1 == a { va[$2] = $c } $1 == b { vb[$2] = $c }
        END {
            for (r in va) if ((r in vb) && vb[r] + 0 > 0) x = x " " va[r] / vb[r]
            if (x != "") printf "%.3f", median(x)
        }' "$RAW"
}

{
    echo "## Ratios against the budgets of issue 23 (same run)"
    echo
    echo "| budget | measured | limit | verdict | per-round median |"
    echo "|---|---:|---:|---|---:|"
    row() { # label measured kind limit-text limit [per-round median]
        local v
        v=$(verdict "$3" "$2" "$5")
        echo "| $1 | ${2:-n/a} | $4 | $v | ${6:-} |"
    }
    # headline_rows LABEL_PREFIX TARGET_SUFFIX: the five headline budgets, for one build.
    headline_rows() {
        local p=$1 x=$2
        row "${p}authgate public CPU/req ÷ pingora-plain CPU/req" "$(ratio "${M_CPU[ag-public$x]:-}" "${M_CPU[pingora-plain]:-}")" max "≤ 0.85" 0.85 \
            "$(paired cpu_us "ag-public$x" pingora-plain)"
        row "${p}authgate HS256+local limit+metrics CPU/req ÷ HAProxy-jwt CPU/req" "$(ratio "${M_CPU[ag-hs256$x]:-}" "${M_CPU[haproxy-jwt]:-}")" max "≤ 1.0" 1.0 \
            "$(paired cpu_us "ag-hs256$x" haproxy-jwt)"
        row "${p}authgate HS256+local limit+metrics req/s ÷ HAProxy-jwt req/s" "$(ratio "${M_RPS[ag-hs256$x]:-}" "${M_RPS[haproxy-jwt]:-}")" min "≥ 1.0" 1.0 \
            "$(paired rps "ag-hs256$x" haproxy-jwt)"
        row "${p}authgate HS256+local limit+metrics p99 ÷ HAProxy-jwt p99" "$(ratio "${M_P99[ag-hs256$x]:-}" "${M_P99[haproxy-jwt]:-}")" max "≤ 1.0" 1.0 \
            "$(paired p99_ms "ag-hs256$x" haproxy-jwt)"
        row "${p}authgate everything on (f) CPU/req ÷ HAProxy-jwt CPU/req" "$(ratio "${M_CPU[ag-all$x]:-}" "${M_CPU[haproxy-jwt]:-}")" max "≤ 1.3" 1.3 \
            "$(paired cpu_us "ag-all$x" haproxy-jwt)"
    }
    headline_rows "" ""
    row "cached RS256 CPU/req ÷ HS256 CPU/req" "$(ratio "${M_CPU[ag-rs256]:-}" "${M_CPU[ag-hs256]:-}")" max "≤ 1.10" 1.10 \
        "$(paired cpu_us ag-rs256 ag-hs256)"
    row "cached opaque CPU/req ÷ HS256 CPU/req" "$(ratio "${M_CPU[ag-opaque]:-}" "${M_CPU[ag-hs256]:-}")" max "≤ 1.10" 1.10 \
        "$(paired cpu_us ag-opaque ag-hs256)"
    row "HS256 with upstream assertions CPU/req ÷ HS256 CPU/req" "$(ratio "${M_CPU[ag-hs256-assertion]:-}" "${M_CPU[ag-hs256]:-}")" max "≤ 1.05" 1.05 \
        "$(paired cpu_us ag-hs256-assertion ag-hs256)"
    row "ten issuers on a route CPU/req ÷ one issuer CPU/req" "$(ratio "${M_CPU[ag-hs256-ten-issuers]:-}" "${M_CPU[ag-hs256]:-}")" max "≤ 1.05" 1.05 \
        "$(paired cpu_us ag-hs256-ten-issuers ag-hs256)"
    row "shared limit req/s ÷ local limit req/s" "$(ratio "${M_RPS[ag-shared-limit]:-}" "${M_RPS[ag-local-limit]:-}")" min "≥ 0.50" 0.50
    # Two decimals: wrk does not count the up to $CONNECTIONS requests in flight when it stops.
    row "shared limit: Redis requests per request (EVAL/EVALSHA; each is one round trip)" \
        "$(awk -v v="${M_RSCR[ag-shared-limit]:-}" 'BEGIN { if (v != "") printf "%.2f", v }')" max "≤ 1.00" 1.0
    row "shared limit CPU/req ÷ local limit CPU/req (issue 22: tokens reserved from Redis, spent locally)" \
        "$(ratio "${M_CPU[ag-shared-limit]:-}" "${M_CPU[ag-local-limit]:-}")" max "≤ 1.10" 1.10
    row "shared limit: Redis script calls per request (issue 22)" \
        "$(awk -v v="${M_RSCR[ag-shared-limit]:-}" 'BEGIN { if (v != "") printf "%.4f", v }')" max "≤ 0.10" 0.10
    echo
    if ((${#PGO_TARGETS[@]})); then
        echo "The same budgets with authgate built by \`bench/pgo.sh\` (profile-guided, trained by"
        echo "\`bench/pgo-train.sh\` behind its own nginx and upstream-mock, not on these runs; the anchors are not PGO builds,"
        echo "the rows above are the plain release build):"
        echo
        echo "| budget | measured | limit | verdict | per-round median |"
        echo "|---|---:|---:|---|---:|"
        headline_rows "PGO: " -pgo
        row "PGO: cached RS256 CPU/req ÷ HS256 CPU/req" "$(ratio "${M_CPU[ag-rs256-pgo]:-}" "${M_CPU[ag-hs256-pgo]:-}")" max "≤ 1.10" 1.10 \
            "$(paired cpu_us ag-rs256-pgo ag-hs256-pgo)"
        row "PGO: cached opaque CPU/req ÷ HS256 CPU/req" "$(ratio "${M_CPU[ag-opaque-pgo]:-}" "${M_CPU[ag-hs256-pgo]:-}")" max "≤ 1.10" 1.10 \
            "$(paired cpu_us ag-opaque-pgo ag-hs256-pgo)"
        echo
        echo "| PGO build ÷ plain build, CPU/req | value |"
        echo "|---|---:|"
        for t in ag-public ag-hs256 ag-rs256 ag-opaque ag-all; do
            echo "| $t | $(ratio "${M_CPU[$t-pgo]:-}" "${M_CPU[$t]:-}") |"
        done
        echo
    fi
    # Where the CPU goes: the proxy's own code (user) or the kernel (loopback TCP, waking the
    # peers it writes to), medians of the per-round split.
    echo "User and system CPU per request (µs, medians over rounds):"
    echo
    echo "| target | user | system | CPU |"
    echo "|---|---:|---:|---:|"
    awk -F'\t' "$AWK_MEDIAN"'
        NR > 1 && $1 ~ /^(haproxy-jwt|pingora-plain|pingora-floor|ag-public|ag-hs256|ag-all)(-pgo)?$/ {
            if (!($1 in seen)) { seen[$1] = 1; order[++no] = $1 }
            u[$1] = u[$1] " " ($6 - $15); k[$1] = k[$1] " " $15; c[$1] = c[$1] " " $6
        }
        END { for (i = 1; i <= no; i++) { t = order[i]; printf "| %s | %.2f | %.2f | %.2f |\n", t, median(u[t]), median(k[t]), median(c[t]) } }' "$RAW"
    echo
    echo "Context (no budget):"
    echo
    echo "| ratio | value |"
    echo "|---|---:|"
    echo "| authgate public CPU/req ÷ nginx CPU/req | $(ratio "${M_CPU[ag-public]:-}" "${M_CPU[nginx]:-}") |"
    echo "| authgate public req/s ÷ pingora-plain req/s | $(ratio "${M_RPS[ag-public]:-}" "${M_RPS[pingora-plain]:-}") |"
    echo "| pingora-tuned CPU/req ÷ pingora-plain CPU/req (what mimalloc and no work stealing are worth) | $(ratio "${M_CPU[pingora-tuned]:-}" "${M_CPU[pingora-plain]:-}") |"
    echo "| authgate public CPU/req ÷ pingora-tuned CPU/req (what authgate's own phases cost) | $(ratio "${M_CPU[ag-public]:-}" "${M_CPU[pingora-tuned]:-}") |"
    echo "| pingora-floor CPU/req ÷ pingora-tuned CPU/req (what the patches are worth to a plain proxy) | $(ratio "${M_CPU[pingora-floor]:-}" "${M_CPU[pingora-tuned]:-}") |"
    echo "| pingora-floor CPU/req ÷ HAProxy-jwt CPU/req (the patched pingora's own cost against HAProxy's whole request) | $(ratio "${M_CPU[pingora-floor]:-}" "${M_CPU[haproxy-jwt]:-}") |"
    echo "| authgate public CPU/req ÷ pingora-floor CPU/req (authgate's phases and timeouts on the same pingora) | $(ratio "${M_CPU[ag-public]:-}" "${M_CPU[pingora-floor]:-}") |"
    echo "| authgate HS256 CPU/req ÷ pingora-floor CPU/req | $(ratio "${M_CPU[ag-hs256]:-}" "${M_CPU[pingora-floor]:-}") |"
    echo "| authgate all (f) CPU/req ÷ the same without the access log (what the log costs) | $(ratio "${M_CPU[ag-all]:-}" "${M_CPU[ag-all-nolog]:-}") |"
    echo "| authgate all (f) without the access log CPU/req ÷ HAProxy-jwt CPU/req | $(ratio "${M_CPU[ag-all-nolog]:-}" "${M_CPU[haproxy-jwt]:-}") |"
    echo "| authgate all (f) req/s ÷ HAProxy-jwt req/s | $(ratio "${M_RPS[ag-all]:-}" "${M_RPS[haproxy-jwt]:-}") |"
    echo "| authgate local limit CPU/req ÷ authgate public CPU/req | $(ratio "${M_CPU[ag-local-limit]:-}" "${M_CPU[ag-public]:-}") |"
    echo "| authgate HS256 CPU/req ÷ authgate public CPU/req | $(ratio "${M_CPU[ag-hs256]:-}" "${M_CPU[ag-public]:-}") |"
    echo "| nginx proxy req/s ÷ upstream direct req/s | $(ratio "${M_RPS[nginx]:-}" "${M_RPS[direct]:-}") |"
    echo "| Redis script calls (EVAL/EVALSHA) per request, shared limit (e) / all (f) | ${M_RSCR[ag-shared-limit]:-n/a} / ${M_RSCR[ag-all]:-n/a} |"
    echo "| Redis commands per request incl. those run inside scripts, (e) / (f) | ${M_RCMD[ag-shared-limit]:-n/a} / ${M_RCMD[ag-all]:-n/a} |"
    echo "| redis-server reads per request, (e) / (f) | ${M_RRD[ag-shared-limit]:-n/a} / ${M_RRD[ag-all]:-n/a} |"
    echo "| Redis bytes per limiter key / per cached token (MEMORY USAGE of one key, (e) / (f)) | $(cat "$RUN/redis-bytes-limiter-key.txt" 2>/dev/null || echo n/a) / $(redis_key_bytes 'bench-f:tok:*') |"
    echo
    echo "Redis figures are deltas over the run divided by wrk's requests (which leave out the requests"
    echo "in flight when wrk stops). Commands come from \`INFO commandstats\`; the second row also"
    echo "counts the TIME/GET/SET a script runs inside Redis, which cost no round trip. Reads are the"
    echo "read system calls of redis-server (\`syscr\` of /proc/<pid>/io): one per batch a client"
    echo "writes, so under 1 per request means concurrent requests share writes on the multiplexed"
    echo "connection (pipelining)."
    echo
    # ------------------------------------------------ issue 3: JWT verification cost
    if [[ -s $VERIFY_OUT ]]; then
        echo "## JWT verification cost (issue 3, \`authgate-verify\`)"
        echo
        echo "\`authgate::auth::jwt::JwtVerifier::verify\` on one valid token per algorithm, no token cache:"
        echo "header decoding, the signature, the claims (exp, subject, scopes), in one thread of one"
        echo "process while the services sit idle. Keys: HS256 a 35-byte secret, RS256 \`rsa-1\` (RSA"
        echo "2048), ES256 \`ec-1\` (P-256), from upstream-mock/keys. Median of $VERIFY_BATCHES batches of"
        echo "about $VERIFY_BATCH_MS ms each (iterations calibrated per algorithm)."
        if [[ $VERIFY_BUSY -gt 0 ]]; then
            echo
            echo "**Shared machine:** compilers or linkers were running around this measurement; it is noisy."
        fi
        echo
        echo "| algorithm | µs per verification | verifications/s (one core) | batch min–max µs | ÷ HS256 |"
        echo "|---|---:|---:|---:|---:|"
        awk '
            { delete kv; for (i = 2; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
              alg[++n] = kv["alg"]; us[n] = kv["us_per_verify"]; ps[n] = kv["verifies_per_s"]; lo[n] = kv["min_us"]; hi[n] = kv["max_us"]
              if (kv["alg"] == "HS256") hs = kv["us_per_verify"] }
            END { for (i = 1; i <= n; i++)
                printf "| %s | %.2f | %d | %.2f–%.2f | %s |\n", alg[i], us[i], ps[i], lo[i], hi[i], (hs > 0 ? sprintf("%.1f", us[i] / hs) : "n/a") }' "$VERIFY_OUT"
        echo
        v_us() { awk -v a="$1" '$2 == "alg=" a { sub(/us_per_verify=/, "", $3); print $3 }' "$VERIFY_OUT"; }
        echo "RS256 ÷ HS256: $(ratio "$(v_us RS256)" "$(v_us HS256)"); ES256 ÷ HS256: $(ratio "$(v_us ES256)" "$(v_us HS256)")"
        echo "(per-verification time). This is the cost the token cache saves on every repeat of a"
        echo "token; compare with the CPU µs/req of a whole proxied request in the table above."
        echo
        # Issue 21: a DPoP proof is verified on every request (each proof is new), cached token
        # or not; its share of a request is its time over a whole cached HS256 request plus it.
        share() { awk -v p="${1:-}" -v r="${2:-}" 'BEGIN { if (p == "" || r == "") print "n/a"; else printf "%.0f %%", 100 * p / (p + r) }'; }
        echo "DPoP rows: \`authgate::auth::dpop::verify_proof\` on one proof (every check of RFC 9449 4.3:"
        echo "header, public jwk, signature, htm, htu, iat, ath, and the thumbprint; the replay set adds"
        echo "one hash-set insert). A DPoP request pays this on top of a cached token's request: share of"
        echo "such a request, taking ag-hs256's CPU µs/req (${M_CPU[ag-hs256]:-n/a}) as the rest: ES256"
        echo "$(share "$(v_us DPOP-ES256)" "${M_CPU[ag-hs256]:-}"), EdDSA $(share "$(v_us DPOP-EDDSA)" "${M_CPU[ag-hs256]:-}")."
        echo
    fi

    # ------------------------------------------------ cache counters
    # cache_sum TARGET NAME [LABEL...]: sum over the measured rounds of the counter's deltas.
    cache_sum() {
        awk -F'\t' -v t="$1" -v name="$2{" -v l1="${3:-}" -v l2="${4:-}" '
            NR > 1 && $1 == t && index($3, name) == 1 && index($3, l1) && index($3, l2) { s += $4 }
            END { print s + 0 }' "$CACHESTATS"
    }
    # Requests wrk counted over the rounds that have counters.
    cache_reqs() { awk -F'\t' -v t="$1" 'NR > 1 && $1 == t && !seen[$2]++ { s += $5 } END { print s + 0 }' "$CACHESTATS"; }
    per_req() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.3f", a / b; else print "n/a" }'; }
    fmt() { awk -v v="${1:-}" -v f="$2" 'BEGIN { if (v == "") print "n/a"; else printf f, v }'; }
    have() { [[ -n ${M_RPS[$1]:-} ]]; }

    # ------------------------------------------------ issue 4: cached vs uncached tokens
    if have ag-rs256-uncached || have ag-opaque-uncached; then
        echo "## Token cache: cached vs uncached (issue 4, same run)"
        echo
        echo "Cached: one token repeated (\`ag-rs256\`, \`ag-opaque\`: answered from the tier-1 cache after"
        echo "the first request). Uncached: the same route and limit with \`auth.cache.max_entries: 1\`"
        echo "and a different token on every request (\`bench/wrk/tokens.lua\` cycling $UNCACHED_TOKENS"
        echo "tokens for the same subject: RS256 tokens differing in their jti; opaque tokens issued by"
        echo "upstream-mock), so each request verifies an RSA signature or makes an introspection call."
        echo "\"misses/req\" is \`authgate_token_cache_total{tier=\"local\",result=\"miss\"}\` over the"
        echo "measured runs ÷ wrk's requests (wrk leaves out the requests in flight when it stops, so 1"
        echo "can read a little above 1). CPU µs/req is authgate's alone: for opaque tokens the"
        echo "introspection work of upstream-mock comes on top, on the same cores."
        echo
        echo "| target | token | req/s | p50 ms | p99 ms | CPU µs/req | token-cache misses/req |"
        echo "|---|---|---:|---:|---:|---:|---:|"
        for t in ag-rs256 ag-rs256-uncached ag-opaque ag-opaque-uncached; do
            have "$t" || continue
            case $t in
                ag-rs256) what="RS256, one token (cached)" ;;
                ag-rs256-uncached) what="RS256, new token each request" ;;
                ag-opaque) what="opaque, one token (cached)" ;;
                ag-opaque-uncached) what="opaque, new token each request" ;;
            esac
            echo "| $t | $what | ${M_RPS[$t]} | $(fmt "${M_P50[$t]}" %.3f) | $(fmt "${M_P99[$t]}" %.3f) | $(fmt "${M_CPU[$t]}" %.2f) | $(per_req "$(cache_sum "$t" authgate_token_cache_total 'tier="local"' 'result="miss"')" "$(cache_reqs "$t")") |"
        done
        echo
        echo "| ratio | RS256 JWT | opaque (introspection) |"
        echo "|---|---:|---:|"
        echo "| req/s cached ÷ uncached | $(fmt "$(ratio "${M_RPS[ag-rs256]:-}" "${M_RPS[ag-rs256-uncached]:-}")" %s) | $(fmt "$(ratio "${M_RPS[ag-opaque]:-}" "${M_RPS[ag-opaque-uncached]:-}")" %s) |"
        echo "| p50 cached ÷ uncached | $(fmt "$(ratio "${M_P50[ag-rs256]:-}" "${M_P50[ag-rs256-uncached]:-}")" %s) | $(fmt "$(ratio "${M_P50[ag-opaque]:-}" "${M_P50[ag-opaque-uncached]:-}")" %s) |"
        echo "| p99 cached ÷ uncached | $(fmt "$(ratio "${M_P99[ag-rs256]:-}" "${M_P99[ag-rs256-uncached]:-}")" %s) | $(fmt "$(ratio "${M_P99[ag-opaque]:-}" "${M_P99[ag-opaque-uncached]:-}")" %s) |"
        echo "| CPU µs/req uncached ÷ cached | $(fmt "$(ratio "${M_CPU[ag-rs256-uncached]:-}" "${M_CPU[ag-rs256]:-}")" %s) | $(fmt "$(ratio "${M_CPU[ag-opaque-uncached]:-}" "${M_CPU[ag-opaque]:-}")" %s) |"
        echo
        echo "The uncached targets are driven through a wrk Lua script (requests pre-built, one table"
        echo "lookup per request); the cached ones with a fixed header. wrk shares the cores, so"
        echo "the script's small cost lowers the uncached req/s a little; authgate's CPU µs/req is"
        echo "not affected."
        echo
    fi

    # ------------------------------------------------ issue 7: search with and without the response cache
    if have ag-search-uncached || have ag-search-cached; then
        echo "## Search with and without the response cache (issue 7, same run)"
        echo
        echo "\`GET /api/products/search/?...&delay_ms=$SEARCH_DELAY_MS\` through authgate to upstream-mock, which"
        echo "holds every answer ${SEARCH_DELAY_MS} ms; route with \`auth: none\`, \`deadline: 5s\`, and"
        echo "\`cache: { ttl: 60s }\` (cached) or no cache (uncached). \`bench/wrk/search.lua\`, -c$SEARCH_CONNECTIONS:"
        echo "80 % of requests draw one of 20 popular searches (weight 1/rank), 20 % are searches never"
        echo "made before (unique per run); both targets get the same draw. A cached answer costs no"
        echo "upstream time; a miss holds its connection ${SEARCH_DELAY_MS} ms (wrk is closed-loop, so req/s follows"
        echo "from the miss rate)."
        echo
        # Mean latency from Little's law (closed loop: every connection always has one request out).
        mean_ms() {
            awk -F'\t' -v t="$1" -v c="$SEARCH_CONNECTIONS" -v d="$DURATION" "$AWK_MEDIAN"'
                NR > 1 && $1 == t && $7 > 0 { v = v " " c * d * 1000 / $7 }
                END { if (v != "") printf "%.1f", median(v) }' "$RAW"
        }
        echo "| target | req/s | p50 ms | p99 ms | mean ms (Little) | CPU µs/req |"
        echo "|---|---:|---:|---:|---:|---:|"
        for t in ag-search-uncached ag-search-cached; do
            have "$t" || continue
            echo "| $t | ${M_RPS[$t]} | $(fmt "${M_P50[$t]}" %.3f) | $(fmt "${M_P99[$t]}" %.3f) | $(fmt "$(mean_ms "$t")" %s) | $(fmt "${M_CPU[$t]}" %.2f) |"
        done
        echo
        echo "p50/p99 are wrk's, and wrk 4 \"corrects\" its latency histogram for coordinated omission:"
        echo "every response slower than the mean interval per connection adds synthetic samples in"
        echo "steps of that interval. With this bimodal mix (sub-ms hits, ${SEARCH_DELAY_MS} ms misses) that"
        echo "moves the cached target's p50 from a hit's latency up to tens of ms, so read it as an upper"
        echo "bound; \"mean ms (Little)\" is connections × seconds ÷ requests, the true mean per request."
        echo
        echo "| ratio | value |"
        echo "|---|---:|"
        echo "| req/s cached ÷ uncached | $(fmt "$(ratio "${M_RPS[ag-search-cached]:-}" "${M_RPS[ag-search-uncached]:-}")" %s) |"
        echo "| p50 cached ÷ uncached | $(fmt "$(ratio "${M_P50[ag-search-cached]:-}" "${M_P50[ag-search-uncached]:-}")" %s) |"
        echo "| p99 cached ÷ uncached | $(fmt "$(ratio "${M_P99[ag-search-cached]:-}" "${M_P99[ag-search-uncached]:-}")" %s) |"
        if have ag-search-cached; then
            rc_hit=$(cache_sum ag-search-cached authgate_response_cache_total 'result="hit"')
            rc_miss=$(cache_sum ag-search-cached authgate_response_cache_total 'result="miss"')
            rc_stale=$(cache_sum ag-search-cached authgate_response_cache_total 'result="stale"')
            rc_bypass=$(cache_sum ag-search-cached authgate_response_cache_total 'result="bypass"')
            rc_all=$((rc_hit + rc_miss + rc_stale + rc_bypass))
            echo "| X-Cache HIT ratio, \`ag-search-cached\` (authgate_response_cache_total over the measured runs) | $(per_req "$rc_hit" "$rc_all") |"
            echo
            echo "Response-cache outcomes of \`ag-search-cached\` over the measured runs: HIT $rc_hit, MISS $rc_miss,"
            echo "STALE $rc_stale, BYPASS $rc_bypass (wrk counted $(cache_reqs ag-search-cached) requests). A fifth of the"
            echo "requests sent are never-seen searches, which can only miss; the counters count answered"
            echo "requests, and the ones still waiting on the upstream when wrk stops are mostly misses, so"
            echo "short runs read a little above 0.80."
        fi
        echo
    fi

    echo "## Memory (authgate's public API, \`authgate-memory\`, mimalloc as in the binary)"
    echo
    echo "| what | entries | RSS growth | bytes/entry | budget | at the budget's size: verdict |"
    echo "|---|---:|---:|---:|---|---|"
    TOKENS_PER="" PRINCIPALS_PER="" ENTRY_SIZE="" PRINCIPAL_SIZE=""
    while read -r what rest; do
        declare -A kv=()
        for pair in $rest; do kv[${pair%%=*}]=${pair#*=}; done
        mb() { awk -v d="$1" 'BEGIN { printf "%.1f", d / 1e6 }'; }
        case $what in
            principals)
                PRINCIPALS_PER=${kv[bytes_per_entry]}
                printf '| (context) the same identities in a plain Vec, no cache | %s | %s MB | %s | | |\n' \
                    "${kv[entries]}" "$(mb "${kv[rss_delta]}")" "${kv[bytes_per_entry]}"
                ;;
            limiter | tokens)
                if [[ $what == limiter ]]; then
                    label="local limiter, distinct keys"; budget_mb=150; budget_n=1000000; btxt="1,000,000 keys ≤ 150 MB"
                else
                    label="token cache tier 1, cached identities"; budget_mb=50; budget_n=100000; btxt="100,000 tokens ≤ 50 MB"
                    TOKENS_PER=${kv[bytes_per_entry]}
                    ENTRY_SIZE=${kv[entry_size]:-}
                    PRINCIPAL_SIZE=${kv[principal_size]:-}
                fi
                # Scaled to the budget's entry count (the same when the probe ran at full size).
                projected_mb=$(awk -v p="${kv[bytes_per_entry]}" -v n="$budget_n" 'BEGIN { printf "%.1f", p * n / 1e6 }')
                printf '| %s | %s | %s MB | %s | %s | %s MB: %s |\n' "$label" "${kv[entries]}" \
                    "$(mb "${kv[rss_delta]}")" "${kv[bytes_per_entry]}" "$btxt" "$projected_mb" \
                    "$(verdict max "$projected_mb" "$budget_mb")"
                ;;
        esac
        unset kv
    done <"$MEM"
    echo
    if [[ -n $TOKENS_PER && -n $PRINCIPALS_PER ]]; then
        echo "Of the token cache's $TOKENS_PER bytes per entry, about $PRINCIPALS_PER are the cached identity"
        echo "itself (32-byte key, the ${ENTRY_SIZE:-?}-byte \`Entry\`, the \`Arc<Principal>\` of ${PRINCIPAL_SIZE:-?} bytes plus"
        echo "its subject, scopes and jti strings: the \"plain Vec\" row) and about"
        echo "$(awk -v a="$TOKENS_PER" -v b="$PRINCIPALS_PER" 'BEGIN { printf "%.0f", a - b }') the cache's own bookkeeping (quick_cache)."
        echo
    fi
    echo "MB = 10^6 bytes. RSS from \`/proc/self/status\` (VmRSS) before creating the structure and after"
    echo "filling it, each in a fresh process."
    echo
    if [[ -f $ROOT/bench/ANALYSIS.md ]]; then
        echo "## Analysis"
        echo
        echo "(kept in bench/ANALYSIS.md, included verbatim)"
        echo
        cat "$ROOT/bench/ANALYSIS.md"
        echo
    fi
    echo "## Every run"
    echo
    echo "\"other load\": CPU used by processes this script did not start, in cores (busy ticks of"
    echo "/proc/stat minus those of the bench's own processes and wrk; ±0.1 is tick noise)."
    echo
    echo "| target | round | req/s | p50 ms | p99 ms | CPU µs/req | requests | other load | builds running |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
    awk -F'\t' 'NR > 1 { printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, ($14 > 0 ? $14 : "0.00"), ($12 > 0 ? "yes" : "") }' "$RAW"
} >>"$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
cp "$RESULTS" "$RUN/RESULTS.md"

# Smoke: every target must appear with a non-zero rate in the results.
for t in "${RUN_TARGETS[@]}"; do
    grep -q "^| $t | " "$RESULTS" || die "$t missing from $RESULTS"
done
log "results written to ${RESULTS#"$ROOT"/}"
if [[ $SMOKE == 1 ]]; then log "smoke OK"; fi
