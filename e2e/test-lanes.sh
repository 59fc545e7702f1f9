#!/usr/bin/env bash
# make test's schedule, after the tools every part needs (Envoy, the node
# packages; make test's prerequisites):
#
#   kind node's rootfs ─┐
#   Kubernetes binaries ┴▶ kind node image ────────────────▶ kind lane ─┐
#                       └▶ Konnectivity, static spoke ─▶ promtool, other lane ┤
#                             vet, race detector, fuzzer after the first lane ┘
#
# The node image's Debian rootfs (debootstrap: network, disk and one core)
# is made while the Kubernetes binaries build. The node image needs only
# those binaries and the rootfs, so it is built beside the tools both lanes
# need instead of after them; promtool, which only the
# other lane needs, starts that lane. vet, the race detector and the fuzzer
# follow whichever lane ends first (the kind lane mostly waits for pods).
# Each step says when it ends, counted from this script's start. The kind
# lane's output and the checks' go to files named at the start and are
# printed whole at the end, so a failure reads as go test printed it; a
# failed run then ends with what failed (e2e/failures.sh: each failed
# test's last lines), since CI keeps only the end of the output.
# Fails if any part does.
#
#   MAKE=make DOCKER_HOST=... bash e2e/test-lanes.sh   # make test runs it
set -uo pipefail
cd "$(dirname "$0")/.."
make="${MAKE:-make} --no-print-directory"
start=$(date +%s)
say() {
	local s=$(($(date +%s) - start))
	printf 'make test: [%d:%02d] %s\n' $((s / 60)) $((s % 60)) "$*"
}

tmp=${TMPDIR:-/tmp}
kind_log=$(mktemp "$tmp/spoke-kind-lane.XXXXXX.log")
other_log=$(mktemp "$tmp/spoke-other-lane.XXXXXX.log")
checks_log=$(mktemp "$tmp/spoke-checks.XXXXXX.log")
image_name=$(mktemp "$tmp/spoke-kind-image.XXXXXX")
trap 'rm -f "$image_name" "$kind_log" "$other_log" "$checks_log"' EXIT

bash e2e/kind/node-image.sh --rootfs 2>>"$kind_log" &
rootfs_job=$!
say "kind node's rootfs: building beside the Kubernetes binaries (tail -f $kind_log)"
if ! $make tools-kube; then
	say "the Kubernetes binaries failed; waiting for the rootfs build to end"
	wait $rootfs_job
	exit 1
fi
say "Kubernetes binaries ready"

bash e2e/kind/node-image.sh >"$image_name" 2>>"$kind_log" & # waits for the rootfs
image_job=$!
say "kind node image: building beside Konnectivity and the static spoke"

if ! $make tools-konnectivity static-build-cache; then
	say "Konnectivity or the static spoke failed; waiting for the node image build to end"
	wait $image_job
	cat "$kind_log"
	exit 1
fi
say "Konnectivity and the static spoke ready; the other lane starts (promtool first)"
$make lane-other > >(tee "$other_log") 2>&1 & # its prerequisite promtool first
other_lane=$!

wait $image_job
image=$?
say "kind node image: exit $image; the kind lane starts (output at the end)"
if [ $image = 0 ]; then
	# Beside the other lane the two cores are busy throughout (93% of a
	# CI-like run), so ginkgo processes beyond two only slow each upstream
	# spec, and some specs wait on fixed windows (PreStop's 30 s grace):
	# two processes here, four alone (make e2e-kind).
	SPOKE_UPSTREAM_PROCS=${SPOKE_UPSTREAM_PROCS:-2} SPOKE_KIND_NODE_IMAGE=$(cat "$image_name") $make lane-kind >>"$kind_log" 2>&1 &
else
	(exit $image) &
fi
kind_lane=$!

wait -n -p first $kind_lane $other_lane
first_exit=$?
[ "$first" = "$kind_lane" ] && name=kind || name=other
say "the $name lane ended (exit $first_exit); vet, race detector and fuzzer start (tail -f $checks_log)"
$make checks >"$checks_log" 2>&1
checks=$?
say "vet, race detector and fuzzer: exit $checks"
if [ "$first" = "$kind_lane" ]; then
	kind=$first_exit
	wait $other_lane
	other=$?
else
	other=$first_exit
	wait $kind_lane
	kind=$?
fi
say "both lanes ended"

echo "==== make test: the kind lane's output ===="
cat "$kind_log"
echo "==== make test: vet's, the race detector's and the fuzzer's output ===="
cat "$checks_log"
if [ $kind != 0 ] || [ $other != 0 ] || [ $checks != 0 ]; then
	echo "==== make test: what failed (the whole output is above) ===="
	[ $kind = 0 ] || { echo "-- the kind lane (exit $kind):"; bash e2e/failures.sh "$kind_log"; }
	[ $other = 0 ] || { echo "-- the other lane (exit $other):"; bash e2e/failures.sh "$other_log"; }
	[ $checks = 0 ] || { echo "-- vet, the race detector and the fuzzer (exit $checks), their last lines:"; tail -n 15 "$checks_log"; }
fi
say "kind lane exit $kind, other lane exit $other, vet, race and fuzz exit $checks"
[ $kind = 0 ] && [ $other = 0 ] && [ $checks = 0 ]
