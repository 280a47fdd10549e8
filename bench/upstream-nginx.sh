# Sourced by bench/run.sh and bench/callgrind.sh: the fast upstream both measure against.
# shellcheck shell=bash

# The fixed JSON body the upstream answers with.
UP_BODY='{"id":1,"name":"bench","status":"ok","items":[1,2,3]}'

# write_upstream_nginx_conf DIR PORT: a one-worker nginx on 127.0.0.1:PORT answering every
# request with UP_BODY, keeping connections alive indefinitely; writes DIR/nginx.conf.
write_upstream_nginx_conf() {
    local dir=$1 port=$2
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<CONF
daemon off;
master_process on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $dir/tmp;
    proxy_temp_path $dir/tmp;
    server {
        listen 127.0.0.1:$port;
        location / {
            default_type application/json;
            return 200 '$UP_BODY';
        }
    }
}
CONF
}
