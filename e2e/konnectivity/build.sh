#!/usr/bin/env bash
# Builds Konnectivity's proxy-server and proxy-agent into $1 (default:
# ../../.tools/konnectivity-<version>), once per version: a cached build is
# reused. The release's own go.mod replaces konnectivity-client with its
# in-tree copy; go.mod here requires the client module at the same version,
# which is that copy as published.
set -euo pipefail
cd "$(dirname "$0")"
VERSION=v0.34.0
out=${1:-../../.tools/konnectivity-$VERSION}
if [ -x "$out/proxy-server" ] && [ -x "$out/proxy-agent" ] && [ -x "$out/agent-swarm" ]; then
  echo "konnectivity $VERSION: cached in $out"
  exit 0
fi
mkdir -p "$out"
# One go build, so the three links run side by side; stripped (-s -w) as
# the release images' binaries are: no symbol table or DWARF to write, and
# smaller images for the kind nodes to import.
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
go build -ldflags "-s -w" -o "$tmp/" sigs.k8s.io/apiserver-network-proxy/cmd/server sigs.k8s.io/apiserver-network-proxy/cmd/agent ./agent-swarm
mv "$tmp/server" "$out/proxy-server"
mv "$tmp/agent" "$out/proxy-agent"
mv "$tmp/agent-swarm" "$out/agent-swarm"
echo "built konnectivity $VERSION proxy-server, proxy-agent and agent-swarm into $out"
