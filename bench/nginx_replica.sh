#!/bin/sh
# A replica that boots in milliseconds: nginx in the foreground, one process, answering
# /home like server_app ({"message": "Hello from Server: NAME", ...}) and /heartbeat.
# bench/churn.py --replica nginx runs it as --replica-cmd, so that what a change costs the
# load is the balancer's share alone, not a Python replica's boot (docs/performance.md).
# Usage: nginx_replica.sh PORT NAME
set -eu
port=$1
name=$2
dir=$(mktemp -d "${TMPDIR:-/tmp}/lbproxy-nginx-replica.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cat > "$dir/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir;
    proxy_temp_path $dir;
    fastcgi_temp_path $dir;
    uwsgi_temp_path $dir;
    scgi_temp_path $dir;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$port;
        location = /home {
            default_type application/json;
            return 200 '{"message": "Hello from Server: $name", "status": "successful"}';
        }
        location = /heartbeat { return 200; }
        location / { return 404; }
    }
}
CONF
nginx -c "$dir/nginx.conf" -p "$dir" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; rm -rf "$dir"' TERM INT HUP
wait "$child"
