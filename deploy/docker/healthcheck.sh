#!/bin/bash
# authgate-healthcheck [HOST:PORT] [PATH]
#
# The image's HEALTHCHECK: GET http://HOST:PORT/PATH (default 127.0.0.1:9090 /healthz, the
# admin listener) and exit 0 only on a 200. debian:bookworm-slim has no curl or wget; rather
# than installing curl and its libraries (about 10 MB, and more packages to keep patched) for
# one request every few seconds, this uses bash's /dev/tcp, which the slim image already has.
# deploy/check.sh runs it against a live authgate.
set -u
addr=${1:-${AUTHGATE_HEALTHCHECK_ADDR:-127.0.0.1:9090}}
path=${2:-${AUTHGATE_HEALTHCHECK_PATH:-/healthz}}
host=${addr%:*}
port=${addr##*:}

exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$addr" >&3 || exit 1
IFS= read -r -t 3 status <&3 || exit 1
exec 3<&- 3>&-
case "$status" in
    "HTTP/1."?" 200"*) exit 0 ;;
    *)
        echo "authgate-healthcheck: $addr$path: ${status%$'\r'}" >&2
        exit 1
        ;;
esac
