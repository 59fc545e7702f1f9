#!/usr/bin/env bash
# A Docker daemon of spoke's own for the kind tests, on a private socket so
# nothing else on the machine sees it (or is disturbed by it):
#
#   e2e/kind/docker.sh start   # prints DOCKER_HOST=unix:///run/spoke-docker/docker.sock
#   e2e/kind/docker.sh stop
#
# start installs Debian's docker.io when dockerd is missing (root), and
# starts dockerd unless its socket answers. What this VM needs to run kind's
# privileged node containers (../../docs/testing.md, "kind"):
# - a runc wrapper (runc-caps) as the default runtime: the VM's capability
#   bounding set lacks some capabilities Docker 20.10 grants a privileged
#   container, and runc refuses to apply them;
# - --iptables=false --ip-masq=false: Docker's iptables rules set the FORWARD
#   policy to DROP, which would cut the network-namespace test hosts routed
#   through this machine; kind's nodes need no NAT to reach each other.
# start also raises the kernel's inotify limits to what kind's known issues
# page asks for ("Pod errors due to too many open files"; never lowered):
# every kubelet, containerd and systemd in the kind nodes and the
# real-kubelet test nodes is root's, and at the default of 128 instances a
# kubelet started beside two kind clusters failed ("Failed to start
# cAdvisor: inotify_init: too many open files") and its node never became
# Ready.
set -euo pipefail
cd "$(dirname "$0")/../.."
run=/run/spoke-docker
sock=$run/docker.sock
data=${SPOKE_DOCKER_DATA:-$PWD/.tools/docker-data}
log=$PWD/.tools/docker.log

answers() { DOCKER_HOST=unix://$sock docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; }

# Runs that use the daemon are counted (under a lock): stop stops it when
# the last one is done, so a second run on the machine keeps its daemon.
users() { # +1 or -1; prints the count after
	mkdir -p "$run"
	exec 9>"$run/users.lock"
	flock 9
	local n
	n=$(cat "$run/users" 2>/dev/null || echo 0)
	n=$((n + $1))
	[ "$n" -lt 0 ] && n=0
	echo "$n" >"$run/users"
	flock -u 9
	echo "$n"
}

# at_least sets sysctl $1 to $2 unless it is already that high.
at_least() {
	local now
	now=$(sysctl -n "$1")
	if [ "$now" -lt "$2" ]; then
		sysctl -q -w "$1=$2" >&2
		echo "docker.sh: $1 raised from $now to $2 (kind's known issues)" >&2
	fi
}

start() {
	users +1 >/dev/null
	if [ "$(id -u)" = 0 ]; then
		at_least fs.inotify.max_user_instances 512
		at_least fs.inotify.max_user_watches 524288
	fi
	if answers; then
		echo "DOCKER_HOST=unix://$sock"
		return
	fi
	[ "$(id -u)" = 0 ] || { echo "docker.sh: starting dockerd needs root" >&2; exit 1; }
	if ! command -v dockerd >/dev/null; then
		export DEBIAN_FRONTEND=noninteractive
		apt-get install -y -qq docker.io >&2 || { apt-get update -qq >&2 && apt-get install -y -qq docker.io >&2; }
	fi
	mkdir -p "$run" "$data" "$(dirname "$log")"
	install -m 0755 e2e/kind/runc-caps "$run/runc-caps"
	# dockerd would take over /run/containerd's socket path for its own
	# containerd if none runs there; give it a place of its own.
	nohup dockerd -H "unix://$sock" --data-root "$data" --exec-root "$run/exec" --pidfile "$run/dockerd.pid" \
		--iptables=false --ip-masq=false --containerd-namespace spoke-moby --containerd-plugins-namespace spoke-plugins \
		--add-runtime "spoke-runc=$run/runc-caps" --default-runtime spoke-runc >"$log" 2>&1 &
	for _ in $(seq 1 60); do
		if answers; then
			echo "DOCKER_HOST=unix://$sock"
			return
		fi
		sleep 1
	done
	echo "docker.sh: dockerd did not answer on $sock within 60 s; its log ($log):" >&2
	tail -20 "$log" >&2
	exit 1
}

stop() {
	if [ "$(users -1)" -gt 0 ]; then
		return 0 # another run still uses it
	fi
	[ -f "$run/dockerd.pid" ] || return 0
	pid=$(cat "$run/dockerd.pid")
	kill "$pid" 2>/dev/null || true
	for _ in $(seq 1 30); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 1
	done
	kill -9 "$pid" 2>/dev/null || true
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
