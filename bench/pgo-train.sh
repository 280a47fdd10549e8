#!/usr/bin/env bash
# Trains an instrumented authgate (bench/pgo.sh) without the benchmark's anchors:
#
#   bench/pgo-train.sh AUTHGATE_BIN PROFILE_DIR
#
# needs only upstream-mock (MOCK_BIN, default target/release/upstream-mock), nginx, wrk,
# redis-server, redis-cli and curl (Debian packages), not bench/run.sh's HAProxy and stock-pingora
# builds, so it also runs where only the workspace is built (a container's build stage, say).
#
# upstream-mock is the IdP (JWKS keys, RFC 7662 introspection) and one of two upstreams; the
# other is an nginx of the trainer's own. They answer in the two shapes backends use: hyper's
# lowercase field names, and nginx's (and gunicorn's) capitalised ones with `Connection:
# keep-alive`. Code for a shape never trained is laid out as cold (TRAIN_UPSTREAMS, default
# "nginx mock", picks them). Every configuration in bench/configs runs for PGO_SECONDS (3 s) per
# upstream under wrk, with its token (HS256, RS256, opaque, or UNCACHED_TOKENS (300) distinct
# RS256 and opaque tokens for the uncached ones). Behind auth, REJECT_SECONDS (1 s) each of the
# rejections an edge sees follow, once (they never reach an upstream): no token, a forged
# token, an expired one, and one that is not a JWT. They are trained on purpose: code that
# never runs in training is optimised for size, and a flood of bad tokens must not find
# authgate on its slowest path. Each authgate is stopped with SIGTERM and waited for, which is
# when it writes its profile (LLVM_PROFILE_FILE=PROFILE_DIR/authgate-%m.profraw).
#
# Every process it starts is stopped on exit; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[[ $# == 2 ]] || { sed -n 2,23p "$0" >&2; exit 2; }
AG=$1
PROFILE_DIR=$2
MOCK_BIN=${MOCK_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/upstream-mock}
PGO_SECONDS=${PGO_SECONDS:-3}
UNCACHED_TOKENS=${UNCACHED_TOKENS:-300}
REJECT_SECONDS=${REJECT_SECONDS:-1}
# REQUIRE_PROFILE=0: a binary that is not instrumented (the CI smoke run of this script).
REQUIRE_PROFILE=${REQUIRE_PROFILE:-1}
log() { printf '[pgo-train %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
TRAIN_UPSTREAMS=${TRAIN_UPSTREAMS:-nginx mock}
for tool in nginx wrk redis-server redis-cli curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt: nginx-light wrk redis-server redis-tools curl)"
done
[[ -x $AG ]] || die "$AG is missing"
[[ -x $MOCK_BIN ]] || die "$MOCK_BIN is missing (cargo build --release -p upstream-mock)"
mkdir -p "$PROFILE_DIR"
RUN=$(mktemp -d)

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pids
    # On failure the logs stay for a look (the authgate, nginx and redis logs, wrk's last report).
    if [[ $rc == 0 ]]; then rm -rf "$RUN"; else log "logs kept in $RUN"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

JWT_SECRET_VALUE="bench-hs256-secret-0123456789abcdef"
INTROSPECTION_CLIENT="authgate:bench-introspection-secret"
# Paths every configuration routes (under /api/) that upstream-mock answers 200: the profile
# of subject 42 (the tokens' subject) behind auth, a one-item search on the public routes.
AUTH_PATH="/api/users/42/profile/?page=1"
PUBLIC_PATH="/api/products/search/?q=tent&page_size=1"

free_port MOCK_PORT
RUST_LOG=warn "$MOCK_BIN" --listen "127.0.0.1:$MOCK_PORT" --jwt-secret "$JWT_SECRET_VALUE" \
    --introspection-client "$INTROSPECTION_CLIENT" --keys-dir "$ROOT/upstream-mock/keys" \
    --access-ttl 7200 >"$RUN/upstream-mock.log" 2>&1 &
PIDS+=($!)
wait_http upstream-mock "$MOCK_PORT" "$!" "$RUN/upstream-mock.log"

free_port NGINX_PORT
mkdir -p "$RUN/nginx/tmp"
cat >"$RUN/nginx/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $RUN/nginx/nginx.pid;
error_log $RUN/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $RUN/nginx/tmp;
    proxy_temp_path $RUN/nginx/tmp;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            default_type application/json;
            add_header Cache-Control "private, no-store";
            return 200 '{"id":42,"username":"alice","email":"alice@example.com","groups":["staff"]}';
        }
    }
}
CONF
nginx -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" -e "$RUN/nginx/error.log" >"$RUN/nginx/stdout.log" 2>&1 &
PIDS+=($!)
wait_http nginx "$NGINX_PORT" "$!" "$RUN/nginx/error.log"
for p in $(pgrep -P "${PIDS[-1]}" || true); do PIDS+=("$p"); done

free_port REDIS_PORT
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --dir "$RUN" --logfile "$RUN/redis.log" &
PIDS+=($!)
for _ in $(seq 1 100); do
    [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] && break
    sleep 0.1
done
[[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] || die "redis-server did not answer"

mint() { "$MOCK_BIN" mint --sub 42 --scope "read write" "$@"; }
HS256=$(mint --ttl 7200 --alg HS256 --jwt-secret "$JWT_SECRET_VALUE")
HS256_ISS=$(mint --ttl 7200 --alg HS256 --jwt-secret "$JWT_SECRET_VALUE" --iss https://i10.bench)
HS256_EXPIRED=$(mint --ttl -600 --alg HS256 --jwt-secret "$JWT_SECRET_VALUE")
HS256_FORGED=$(mint --ttl 7200 --alg HS256 --jwt-secret "not-the-bench-secret-0123456789abcdef")
RS256=$(mint --ttl 7200 --alg RS256 --kid rsa-1 --keys-dir "$ROOT/upstream-mock/keys")
opaque() {
    curl -sf --max-time 5 -H 'content-type: application/json' -d '{"sub":"42","scope":"read write","ttl_s":7200}' \
        "http://127.0.0.1:$MOCK_PORT/__mock/opaque" | sed -n 's/.*"token" *: *"\([^"]*\)".*/\1/p'
}
OPAQUE=$(opaque)
[[ -n $HS256 && -n $HS256_EXPIRED && -n $RS256 && -n $OPAQUE ]] || die "could not mint the tokens"
# Each mint draws its own jti.
now=$(date +%s)
for ((i = 1; i <= UNCACHED_TOKENS; i++)); do
    mint --ttl 7200 --alg RS256 --kid rsa-1 --keys-dir "$ROOT/upstream-mock/keys"
done >"$RUN/tokens-rs256.txt"
# One per line (the answer has no newline of its own).
for ((i = 1; i <= UNCACHED_TOKENS; i++)); do printf '%s\n' "$(opaque)"; done >"$RUN/tokens-opaque.txt"
[[ $(sort -u "$RUN/tokens-rs256.txt" | wc -l) == "$UNCACHED_TOKENS" ]] || die "minting distinct RS256 tokens"
[[ $(sort -u "$RUN/tokens-opaque.txt" | wc -l) == "$UNCACHED_TOKENS" ]] || die "issuing opaque tokens"

# wrk_for SECONDS PORT [ARGS...]: one bounded wrk run, its report in $RUN/wrk.out.
wrk_for() {
    local secs=$1 port=$2
    shift 2
    timeout $((secs + 20)) wrk -t1 -c16 -d"${secs}s" "$@" >"$RUN/wrk.out" 2>&1 \
        || die "wrk against 127.0.0.1:$port ($(tail -3 "$RUN/wrk.out" | tr '\n' ' '))"
}

# expect STATUS URL [CURL_ARGS...]
expect() {
    local want=$1 url=$2 got
    shift 2
    got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$url") || true
    [[ $got == "$want" ]] || die "$url answered $got, not $want"
}

# scenario CONFIG RUST_LOG KIND: KIND says what the route is trained with; once per upstream.
scenario() {
    local up rejections=1
    for up in $TRAIN_UPSTREAMS; do
        case $up in
            nginx) scenario_on "127.0.0.1:$NGINX_PORT" "$rejections" "$@" ;;
            mock) scenario_on "127.0.0.1:$MOCK_PORT" "$rejections" "$@" ;;
            *) die "TRAIN_UPSTREAMS: unknown upstream $up (nginx, mock)" ;;
        esac
        rejections=0
    done
}

# scenario_on UPSTREAM REJECTIONS(0/1) CONFIG RUST_LOG KIND
scenario_on() {
    local upstream=$1 rejections=$2 cfg=$3 level=$4 kind=$5 port admin pid url
    free_port port
    free_port admin
    url="http://127.0.0.1:$port$AUTH_PATH"
    [[ $kind == public || $kind == search ]] && url="http://127.0.0.1:$port$PUBLIC_PATH"
    log "$cfg ($kind, upstream $upstream)"
    env BENCH_LISTEN="127.0.0.1:$port" BENCH_ADMIN="127.0.0.1:$admin" BENCH_UPSTREAM="$upstream" \
        BENCH_THREADS=1 BENCH_MOCK="127.0.0.1:$MOCK_PORT" BENCH_REDIS="127.0.0.1:$REDIS_PORT" \
        JWT_SECRET="$JWT_SECRET_VALUE" INTROSPECTION_SECRET="${INTROSPECTION_CLIENT#*:}" RUST_LOG="$level" \
        LLVM_PROFILE_FILE="$PROFILE_DIR/authgate-%m.profraw" \
        "$AG" --config "$ROOT/bench/configs/$cfg" >/dev/null 2>"$RUN/$cfg.log" &
    pid=$!
    PIDS+=("$pid")
    wait_http "authgate $cfg" "$port" "$pid" "$RUN/$cfg.log"
    curl -s -o /dev/null "http://127.0.0.1:$admin/metrics" || true
    # Training what the route is meant to do: its token must pass (a typo would train 401s).
    local first=""
    case $kind in
        hs256) first=$HS256 ;; hs256-iss) first=$HS256_ISS ;; rs256) first=$RS256 ;; opaque) first=$OPAQUE ;;
        rs256-uncached) first=$(head -1 "$RUN/tokens-rs256.txt") ;;
        opaque-uncached) first=$(head -1 "$RUN/tokens-opaque.txt") ;;
    esac
    expect 200 "$url" ${first:+-H "Authorization: Bearer $first"}
    : >"$RUN/wrk.out"
    case $kind in
        public) wrk_for "$PGO_SECONDS" "$port" "$url" ;;
        hs256) wrk_for "$PGO_SECONDS" "$port" -H "Authorization: Bearer $HS256" "$url" ;;
        hs256-iss) wrk_for "$PGO_SECONDS" "$port" -H "Authorization: Bearer $HS256_ISS" "$url" ;;
        rs256) wrk_for "$PGO_SECONDS" "$port" -H "Authorization: Bearer $RS256" "$url" ;;
        opaque) wrk_for "$PGO_SECONDS" "$port" -H "Authorization: Bearer $OPAQUE" "$url" ;;
        rs256-uncached) wrk_for "$PGO_SECONDS" "$port" -s "$ROOT/bench/wrk/tokens.lua" "$url" -- "$RUN/tokens-rs256.txt" ;;
        opaque-uncached) wrk_for "$PGO_SECONDS" "$port" -s "$ROOT/bench/wrk/tokens.lua" "$url" -- "$RUN/tokens-opaque.txt" ;;
        search) wrk_for "$PGO_SECONDS" "$port" -s "$ROOT/bench/wrk/search.lua" "http://127.0.0.1:$port/" -- "train-$now" 1 1 ;;
        *) die "unknown kind $kind" ;;
    esac
    # The accepted traffic must have been accepted throughout (no 401, 429 or 5xx trained).
    ! grep -q 'Non-2xx' "$RUN/wrk.out" || die "$cfg: $(grep 'Non-2xx' "$RUN/wrk.out")"
    if [[ $rejections == 1 && $kind != public && $kind != search ]]; then
        local bad
        for bad in "" "$HS256_FORGED" "$HS256_EXPIRED" not-a-token; do
            expect 401 "$url" ${bad:+-H "Authorization: Bearer $bad"}
            wrk_for "$REJECT_SECONDS" "$port" ${bad:+-H "Authorization: Bearer $bad"} "$url"
        done
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && die "authgate ($cfg) did not exit within 10 s of SIGTERM"
    local rc=0
    wait "$pid" || rc=$?
    ((rc == 0)) || die "authgate ($cfg) exited with $rc (see $RUN/$cfg.log)"
}

scenario a-public.yaml warn public
scenario local-limit.yaml warn public
scenario e-shared-limit.yaml warn public
scenario b-hs256.yaml warn hs256
scenario b-hs256-assertion.yaml warn hs256
scenario b-hs256-ten-issuers.yaml warn hs256-iss
scenario c-rs256.yaml warn rs256
scenario d-opaque.yaml warn opaque
scenario f-all.yaml info hs256
scenario f-all.yaml warn hs256
scenario c-rs256-uncached.yaml warn rs256-uncached
scenario d-opaque-uncached.yaml warn opaque-uncached
scenario g-search-uncached.yaml warn search
scenario g-search-cached.yaml warn search
if [[ $REQUIRE_PROFILE == 1 ]]; then
    compgen -G "$PROFILE_DIR/*.profraw" >/dev/null || die "no profile written to $PROFILE_DIR"
fi
log "done: $(find "$PROFILE_DIR" -name '*.profraw' | wc -l) profile file(s)"
