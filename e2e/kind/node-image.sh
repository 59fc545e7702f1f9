#!/usr/bin/env bash
# Builds a kindest/node-compatible image for Kubernetes $K8S_VERSION from
# local material only (no image registry is reachable here): a Debian rootfs
# from debootstrap with systemd, containerd, runc and the CNI plugins;
# kubeadm, kubelet, kubectl and crictl from the module e2e/kube builds; and
# inside the node's containerd every image kubeadm pulls (kube-apiserver,
# -controller-manager, -scheduler, -proxy, etcd, coredns, pause), each built
# here from Go modules (pause from its C source); kind's own node files
# (entrypoint, systemd units, containerd config) from kind's Go module.
#
#   DOCKER_HOST=... e2e/kind/node-image.sh     # prints the image's name
#   e2e/kind/node-image.sh --rootfs            # only the Debian rootfs (no Docker
#                                              # needed): make test starts it beside
#                                              # the Kubernetes build
#
# Everything is cached under .tools, keyed by every version in the image and
# this script's content: a second run only checks that the image is there.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

K8S_VERSION=v1.37.2
KIND_VERSION=v0.33.0
PAUSE_VERSION=3.10.2
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=systemd,systemd-sysv,dbus,containerd,runc,containernetworking-plugins,iptables,nftables,iproute2,conntrack,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,ca-certificates,jq,procps,bash,socat,ebtables

# The image's key: every version in it and everything that builds it.
key=$(printf '%s\n' "$K8S_VERSION" "$KIND_VERSION" "$PAUSE_VERSION" "$DEBIAN_SUITE" "$PACKAGES" |
	cat - "$0" e2e/kind/node/* e2e/kube/build.sh e2e/kube/go.sum e2e/kube/cmd/*/*.go cmd/spoke-image/*.go | sha256sum | cut -c1-12)
image=spoke-kind-node:$K8S_VERSION-$key
out=$root/.tools/kind-node-$K8S_VERSION-$key
bins=$root/.tools/kind-bins-$K8S_VERSION
rootfs=$root/.tools/kind-rootfs-$DEBIAN_SUITE-$(printf '%s' "$PACKAGES" | sha256sum | cut -c1-12).tar
log() { echo "node-image: $*" >&2; }
start=$(date +%s)

# The rootfs (debootstrap: network and disk, one core) is made while Go
# builds use both cores: the Kubernetes build's in make test (--rootfs,
# e2e/test-lanes.sh), else the binaries' below.
build_rootfs() {
	command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
	local tmp=$rootfs.dir
	rm -rf "$tmp" && mkdir -p "$tmp"
	debootstrap --variant=minbase --include="$PACKAGES" "$DEBIAN_SUITE" "$tmp" "$DEBIAN_MIRROR" >"$rootfs.log" 2>&1 ||
		{ tail -20 "$rootfs.log" >&2; return 1; }
	rm -rf "$tmp/var/cache/apt/archives/"*.deb "$tmp/var/lib/apt/lists/"*
	tar -C "$tmp" -cf "$rootfs.tmp" . && mv "$rootfs.tmp" "$rootfs"
	rm -rf "$tmp"
	log "rootfs built ($(($(date +%s) - start)) s)"
}

# ensure_rootfs builds the rootfs unless it is there; a second run waits
# for the first (make test's --rootfs beside the Kubernetes build).
ensure_rootfs() {
	mkdir -p "$(dirname "$rootfs")"
	(
		flock 9
		[ -s "$rootfs" ] || build_rootfs
	) 9>"$rootfs.lock"
}
if [ "${1:-}" = --rootfs ]; then
	ensure_rootfs
	exit
fi
if docker image inspect "$image" >/dev/null 2>&1; then
	echo "$image"
	exit 0
fi
mkdir -p "$out/images" "$bins"

rootfs_job=
if [ ! -s "$rootfs" ]; then
	ensure_rootfs &
	rootfs_job=$!
fi

# Binaries, each built once (the Go build cache makes a rebuild cheap).
bash e2e/kube/build.sh >&2
kube=$root/.tools/kube-$K8S_VERSION
cp "$kube/kube-proxy" "$bins/" # the build context of its image, below
modcache=$(go env GOMODCACHE)
[ -x "$bins/pause" ] || gcc -Os -static -DVERSION="v$PAUSE_VERSION" -o "$bins/pause" "$modcache/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c"
log "binaries ready ($(($(date +%s) - start)) s)"

# The images kubeadm pulls, as archives for the node's containerd.
images=$(cd "$kube" && ./kubeadm config images list --kubernetes-version "$K8S_VERSION")
kube_proxy=
static_image() { # NAME BINARY PATH [ARGS...]: a one-binary image
	local name=$1 binary=$2 path=$3
	shift 3
	local args=()
	for a in "$@"; do args+=(--arg "$a"); done
	[ -s "$out/images/$(basename "${name%%:*}").tar" ] || go run ./cmd/spoke-image --static "$binary" --path "$path" "${args[@]}" --user 0 \
		--tag "$name" --version "${name##*:}" --out "$out/images/$(basename "${name%%:*}").tar" >&2
}
for ref in $images; do
	case $ref in
	*/kube-apiserver:*) static_image "$ref" "$kube/kube-apiserver" /usr/local/bin/kube-apiserver ;;
	*/kube-controller-manager:*) static_image "$ref" "$kube/kube-controller-manager" /usr/local/bin/kube-controller-manager ;;
	*/kube-scheduler:*) static_image "$ref" "$kube/kube-scheduler" /usr/local/bin/kube-scheduler ;;
	*/etcd:*) static_image "$ref" "$kube/etcd" /usr/local/bin/etcd ;;
	*/coredns:*) static_image "$ref" "$kube/coredns" /coredns ;;
	*/pause:*) static_image "$ref" "$bins/pause" /pause ;;
	*/kube-proxy:*) kube_proxy=$ref ;; # on the rootfs, below
	*) echo "node-image: kubeadm wants $ref, which this script does not build" >&2; exit 1 ;;
	esac
done

# The rootfs: what kind's base image installs, from Debian (started above;
# the one-binary images, which do not need it, were written meanwhile: on
# a fresh clone debootstrap is still running when the binaries are ready).
if [ -n "$rootfs_job" ]; then
	wait "$rootfs_job" || { echo "node-image: debootstrap failed (log: $rootfs.log)" >&2; exit 1; }
fi
base=spoke-kind-rootfs:$(basename "$rootfs" .tar | cut -d- -f4)
docker image inspect "$base" >/dev/null 2>&1 || docker import "$rootfs" "$base" >&2
# kube-proxy programs iptables and nftables: the rootfs has them.
[ -n "$kube_proxy" ] || { echo "node-image: kubeadm lists no kube-proxy image" >&2; exit 1; }
if [ ! -s "$out/images/kube-proxy.tar" ]; then
	printf 'FROM %s\nCOPY kube-proxy /usr/local/bin/kube-proxy\n' "$base" | docker build -q -t "$kube_proxy" -f - "$bins" >&2
	docker save -o "$out/images/kube-proxy.tar" "$kube_proxy"
fi
log "images ready ($(($(date +%s) - start)) s)"

# The node: kind's own files over the rootfs, the Kubernetes binaries.
ctx=$out/context
rm -rf "$ctx" && mkdir -p "$ctx/bin"
cp -r "$modcache/sigs.k8s.io/kind@$KIND_VERSION/images/base/files" "$ctx/files"
chmod -R u+w "$ctx/files"
cp "$kube/kubeadm" "$kube/kubelet" "$kube/kubectl" "$kube/crictl" "$ctx/bin/"
cp e2e/kind/node/Dockerfile "$ctx/"
printf '%s\n' "$K8S_VERSION" >"$ctx/version"
pause=$(printf '%s\n' $images | grep /pause:)
docker build -q -t "$image-unloaded" --build-arg "BASE=$base" --build-arg "PAUSE_IMAGE=$pause" -f "$ctx/Dockerfile" "$ctx" >&2

# The images go into the node's containerd, as kind's own build does it:
# start the node's containerd in a container of the image, import, commit.
cid=$(docker run -d --privileged --entrypoint sleep -v "$out/images:/kind/images:ro" "$image-unloaded" infinity)
trap 'docker rm -f "$cid" >/dev/null 2>&1 || true' EXIT
docker exec "$cid" bash -c 'containerd >/tmp/containerd.log 2>&1 & for i in $(seq 50); do ctr version >/dev/null 2>&1 && break; sleep 0.2; done
	for f in /kind/images/*.tar; do ctr -n k8s.io images import --no-unpack --digests --all-platforms "$f" >/dev/null; done
	for ref in $(ctr -n k8s.io images ls -q); do ctr -n k8s.io images label "$ref" io.cri-containerd.pinned=pinned >/dev/null; done
	ctr -n k8s.io images ls -q | grep -v "^sha256:"; pkill containerd; sleep 1' >&2
# The container keeps the image's STOPSIGNAL and ENV; its entrypoint was
# sleep's.
docker commit --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' --change 'CMD []' "$cid" "$image" >&2
docker rm -f "$cid" >/dev/null
docker rmi "$image-unloaded" >/dev/null 2>&1 || true
log "$image built in $(($(date +%s) - start)) s"
echo "$image"
