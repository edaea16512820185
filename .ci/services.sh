#!/usr/bin/env bash
# Start the local PostgreSQL, Redis and RabbitMQ if they are not answering (commands from DESIGN.md).
# Exits non-zero if one is still unreachable afterwards.
set -u
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || python3 - <<'PY' 2>/dev/null
import socket; socket.create_connection(("127.0.0.1", 5432), 2)
PY
}
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
rabbit_up() { rabbitmqctl -q await_startup --timeout 2 >/dev/null 2>&1; }

if ! pg_up; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort | tail -n 1)" main start || true
fi
if ! redis_up; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
if ! rabbit_up; then
  echo "starting RabbitMQ"
  service rabbitmq-server start >/dev/null 2>&1 || rabbitmq-server -detached >/dev/null 2>&1 || true
fi
for _ in $(seq 1 60); do
  if pg_up && redis_up && rabbit_up; then exit 0; fi
  sleep 1
done
pg_up || echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2
redis_up || echo "Redis is not reachable on 127.0.0.1:6379" >&2
rabbit_up || echo "RabbitMQ is not running (rabbitmqctl await_startup)" >&2
exit 1
