#!/usr/bin/env bash
# Stops the dockerd that scripts/docker-up.sh started, and only that one: the
# PID file is the sole authority, so an engine started any other way is left
# alone. Running containers are stopped by dockerd itself on SIGTERM.
set -euo pipefail

PIDFILE=/run/pi-relay-dockerd.pid

if [[ ! -f $PIDFILE ]]; then
    echo "docker-down: no $PIDFILE, so no dockerd of ours to stop"
    exit 0
fi
pid=$(cat "$PIDFILE")
# Guard against a stale file whose PID now belongs to another process.
if ! [[ $pid =~ ^[0-9]+$ ]] || [[ $(cat "/proc/$pid/comm" 2>/dev/null) != dockerd ]]; then
    echo "docker-down: PID ${pid:-?} from $PIDFILE is not a running dockerd; removing the stale file"
    rm -f "$PIDFILE"
    exit 0
fi

echo "docker-down: stopping dockerd $pid"
kill -TERM "$pid"
for ((i = 0; i < 40; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$PIDFILE"
        echo "docker-down: dockerd $pid stopped"
        exit 0
    fi
    sleep 0.5
done
echo "docker-down: dockerd $pid still running after 20 s; see /var/log/pi-relay-dockerd.log" >&2
exit 1
