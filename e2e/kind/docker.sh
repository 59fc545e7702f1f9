#!/usr/bin/env bash
# A Docker daemon of spoke's own for the kind tests, on a private socket so
# nothing else on the machine sees it (or is disturbed by it):
#
#   e2e/kind/docker.sh start [PID]  # prints DOCKER_HOST=unix:///run/spoke-docker/docker.sock
#   e2e/kind/docker.sh stop [PID]
#
# PID is the process the daemon is kept for (default: the caller, $PPID;
# make passes its recipe shell's $$, as a subshell may stand between).
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
# - --default-address-pool: its networks (kind's) take /24s of 10.213.0.0/16, never
#   Docker's default 172.17-31.0.0/16, which hold the real-kubelet tests'
#   node network (172.30.0.0/16); stop deletes their bridges, which dockerd
#   leaves behind when it exits. A new data root (a fresh clone) makes a new
#   kind network, and with Docker's default pools every clone's bridge stayed
#   on the machine holding the next /16 until one held 172.30.0.0/16 and the
#   real-kubelet tests could not add their route ("File exists").
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
POOL=10.213.0.0/16

answers() { DOCKER_HOST=unix://$sock docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; }

# Runs that use the daemon register their PID (the shell that runs them:
# make's recipe shell, or an operator's shell), under a lock; stop stops
# the daemon once no registered process is alive. A second run so
# keeps its daemon, and a killed run, which never says stop, does not keep
# it running forever (a count did: a killed run left it at 1).
user=${2:-$PPID}
users() { # add|remove; prints how many registered processes are alive after
	mkdir -p "$run/users.d"
	exec 9>"$run/users.lock"
	flock 9
	case $1 in
	add) touch "$run/users.d/$user" ;;
	remove) rm -f "$run/users.d/$user" ;;
	esac
	local n=0 f
	for f in "$run/users.d"/*; do
		[ -e "$f" ] || continue
		if kill -0 "${f##*/}" 2>/dev/null; then n=$((n + 1)); else rm -f "$f"; fi
	done
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
	local others
	others=$(($(users add) - 1))
	if [ "$(id -u)" = 0 ]; then
		at_least fs.inotify.max_user_instances 512
		at_least fs.inotify.max_user_watches 524288
	fi
	if answers; then
		same_mounts "$others" && { echo "DOCKER_HOST=unix://$sock"; return; }
	fi
	[ "$(id -u)" = 0 ] || { echo "docker.sh: starting dockerd needs root" >&2; exit 1; }
	if ! command -v dockerd >/dev/null; then
		export DEBIAN_FRONTEND=noninteractive
		apt-get install -y -qq docker.io >&2 || { apt-get update -qq >&2 && apt-get install -y -qq docker.io >&2; }
	fi
	mkdir -p "$run" "$data" "$(dirname "$log")"
	remove_bridges # a killed run's daemon left them
	# dockerd runs the wrapper at each runc call (a container's start, each
	# docker exec, each kill); python3 through pyenv's shim, first in many
	# PATHs, costs about eight times python's own start, so the wrapper
	# names the system's python3.
	python=/usr/bin/python3
	[ -x "$python" ] || python=$(command -v python3)
	sed "1s|.*|#!$python|" e2e/kind/runc-caps >"$run/runc-caps" && chmod 0755 "$run/runc-caps"
	# dockerd would take over /run/containerd's socket path for its own
	# containerd if none runs there; give it a place of its own.
	nohup dockerd -H "unix://$sock" --data-root "$data" --exec-root "$run/exec" --pidfile "$run/dockerd.pid" \
		--iptables=false --ip-masq=false --containerd-namespace spoke-moby --containerd-plugins-namespace spoke-plugins \
		--add-runtime "spoke-runc=$run/runc-caps" --default-runtime spoke-runc \
		--default-address-pool "base=$POOL,size=24" >"$log" 2>&1 &
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

# same_mounts refuses a daemon that answers but sees another file system
# (started in another mount namespace, e.g. a container sharing /run): the
# node image's bind mounts would silently be empty directories there.
# With no other live user ($1 = 0) such a daemon was left by a killed run:
# it is stopped (returns 1: start a new one).
same_mounts() {
	local root
	root=$(DOCKER_HOST=unix://$sock docker info --format '{{.DockerRootDir}}')
	[ -d "$root" ] && return 0
	if [ "$1" = 0 ] && [ -f "$run/dockerd.pid" ]; then
		echo "docker.sh: stopping the Docker daemon on $sock a killed run left (its data, $root, is not on this file system)" >&2
		kill_daemon "$(cat "$run/dockerd.pid")"
		return 1
	fi
	echo "docker.sh: the Docker daemon on $sock keeps its data in $root, which this machine's file system does not have: it runs in another mount namespace; stop it there (e2e/kind/docker.sh stop) or end that run" >&2
	exit 1
}

stop() {
	if [ "$(users remove)" -gt 0 ]; then
		return 0 # another run still uses it
	fi
	[ -f "$run/dockerd.pid" ] || return 0
	kill_daemon "$(cat "$run/dockerd.pid")"
	remove_bridges
}

# remove_bridges deletes the network bridges (br-*) in 10.213.0.0/16 once
# no daemon of ours runs: only ours uses the pool, and dockerd leaves them
# when it exits. docker0 stays (the system daemon's too, if there is one).
remove_bridges() {
	ip -o -4 addr show | awk -v pool="${POOL%.0.0/16}." 'index($4, pool) == 1 && $2 ~ /^br-/ {print $2}' |
		while read -r b; do ip link delete "$b"; done
}

# kill_daemon ends dockerd $1: TERM, then KILL after 30 s.
kill_daemon() {
	kill "$1" 2>/dev/null || true
	for _ in $(seq 1 30); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 1
	done
	kill -9 "$1" 2>/dev/null || true
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*) echo "usage: $0 start|stop [PID]" >&2; exit 2 ;;
esac
