# shellcheck shell=bash
# What every bench script needs to run processes on loopback and stop them. Source it after
# defining `die MESSAGE` (which must exit). It provides:
#
#   PIDS                      the processes to stop; append each one started
#   stop_pids                 SIGTERM them all, wait up to 3 s, SIGKILL what is left, reap
#   free_port VAR             sets VAR to a free loopback port (not a subshell, so the
#                             bookkeeping survives: no port is handed out twice)
#   wait_http NAME PORT PID LOG [SECONDS]
#                             waits (15 s unless told) until anything answers HTTP on PORT;
#                             fails at once if PID exits, with LOG's tail
#
# Ports come from below the kernel's ephemeral range. A port in that range can be checked
# free and still be taken a moment later as the local end of some outgoing connection (wrk's,
# curl's, a proxy's to its upstream); pingora then retries bind() for 30 s, which once made
# the PGO trainer's CI smoke run fail ("did not answer within 15 s").

PIDS=()

stop_pids() {
    local p alive
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 1 30); do
        alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}

# [PORT_FIRST, PORT_END): 20000 up to the ephemeral range (32768 by default), at most 12000.
PORT_FIRST=20000
PORT_END=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
((PORT_END > PORT_FIRST + 12000)) && PORT_END=$((PORT_FIRST + 12000))
((PORT_END >= PORT_FIRST + 1000)) \
    || die "the ephemeral port range starts at $PORT_END: no room below it for test ports (net.ipv4.ip_local_port_range)"
NEXT_PORT=$((PORT_FIRST + RANDOM % (PORT_END - PORT_FIRST)))

free_port() {
    local p
    for _ in $(seq 1 500); do
        p=$NEXT_PORT
        NEXT_PORT=$((NEXT_PORT + 1))
        ((NEXT_PORT >= PORT_END)) && NEXT_PORT=$PORT_FIRST
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            printf -v "$1" '%s' "$p"
            return 0
        fi
    done
    die "no free loopback port in $PORT_FIRST..$PORT_END"
}

wait_http() {
    local name=$1 port=$2 pid=$3 logf=$4 secs=${5:-15}
    for _ in $(seq 1 $((secs * 10))); do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$logf" >&2 || true; die "$name exited during start-up"; }
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" 2>/dev/null && return 0
        # pingora's bind() retries for 30 s while the port is taken: say so now.
        if grep -q 'is in use, will try again' "$logf" 2>/dev/null; then
            die "$name: 127.0.0.1:$port is taken by another socket (see $logf)"
        fi
        sleep 0.1
    done
    tail -20 "$logf" >&2 || true
    die "$name did not answer on 127.0.0.1:$port within $secs s"
}
