#!/usr/bin/env bash
# Makes sure a Redis answers on 127.0.0.1:6379 (Celery's broker); starts one that keeps nothing on disk.
set -euo pipefail
ping() { python3 - <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", 6379), timeout=2)
    s.sendall(b"PING\r\n")
    sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}
ping && exit 0
echo "Starting Redis on 127.0.0.1:6379"
mkdir -p /tmp/clusterra-redis
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no --dir /tmp/clusterra-redis \
  --logfile /tmp/clusterra-redis/redis.log
for _ in $(seq 50); do ping && exit 0; sleep 0.1; done
echo "Redis did not start; see /tmp/clusterra-redis/redis.log" >&2
exit 1
