#!/usr/bin/env bash
# Installs the migration tools whose files and databases `kubectl pg migrate` takes over, at
# pinned versions, once, into the tests' cache outside the work tree, and prints KEY=VALUE lines
# on stdout (progress on stderr). A tool that does not install prints no line and an error on
# stderr; the tests then fail in CI and say SKIPPED elsewhere.
#
#   golang-migrate v4.20.1  Go module proxy (go install -tags postgres)
#   dbmate 2.36.0           npm registry (the package ships its binary)
#   Flyway 13.12.2          Maven Central: flyway-core and flyway-database-postgresql, driven by
#                           flyway/FlywayCli.java (flyway-commandline cannot start here: see it)
#
#   KPG_TEST_CACHE          cache root (default /var/cache/kubectl-pg-tests as root, else ~/.cache/…)
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ "$(id -u)" = 0 ]; then default_cache=/var/cache/kubectl-pg-tests; else default_cache="${XDG_CACHE_HOME:-$HOME/.cache}/kubectl-pg-tests"; fi
tools="${KPG_TEST_CACHE:-$default_cache}/tools"
mkdir -p "$tools"
exec 9>"$tools/.lock"
flock 9

golang_migrate() {
    local dir="$tools/golang-migrate-v4.20.1"
    if [ ! -x "$dir/migrate" ]; then
        echo "installing golang-migrate v4.20.1 (go install -tags postgres)" >&2
        rm -rf "$dir.tmp" && mkdir -p "$dir.tmp" || return 1
        GOBIN="$dir.tmp" GOFLAGS=-mod=mod GOTOOLCHAIN=local GOSUMDB=off \
            go install -tags postgres github.com/golang-migrate/migrate/v4/cmd/migrate@v4.20.1 >&2 || return 1
        rm -rf "$dir" && mv "$dir.tmp" "$dir" || return 1
    fi
    echo "KPG_GOLANG_MIGRATE=$dir/migrate"
}

dbmate() {
    local dir="$tools/dbmate-2.36.0"
    local bin="$dir/node_modules/@dbmate/linux-x64/bin/dbmate"
    if [ ! -x "$bin" ]; then
        echo "installing dbmate 2.36.0 (npm)" >&2
        rm -rf "$dir.tmp" && mkdir -p "$dir.tmp" || return 1
        npm install --silent --no-audit --no-fund --prefix "$dir.tmp" dbmate@2.36.0 >&2 || return 1
        rm -rf "$dir" && mv "$dir.tmp" "$dir" || return 1
    fi
    "$bin" --version >/dev/null || return 1
    echo "KPG_DBMATE=$bin"
}

flyway() {
    local dir="$tools/flyway-13.12.2"
    local source="$here/flyway/FlywayCli.java"
    local stamp
    stamp="$(sha256sum "$source" | cut -c1-16)"
    if [ ! -f "$dir/.complete-$stamp" ]; then
        echo "installing Flyway 13.12.2 (Maven Central: flyway-core, flyway-database-postgresql, pgjdbc)" >&2
        command -v java >/dev/null && command -v javac >/dev/null && command -v mvn >/dev/null || {
            echo "error: Flyway needs java, javac (JDK 17+) and mvn" >&2; return 1; }
        rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/lib" "$dir.tmp/classes" || return 1
        local artifact
        for artifact in org.flywaydb:flyway-core:13.12.2 org.flywaydb:flyway-database-postgresql:13.12.2 \
            org.postgresql:postgresql:42.7.7; do
            mvn -q -B dependency:copy "-Dartifact=$artifact" "-DoutputDirectory=$dir.tmp/lib" \
                "-Dmaven.repo.local=$tools/m2" >&2 || return 1
        done
        javac -d "$dir.tmp/classes" -cp "$dir.tmp/lib/*" "$source" >&2 || return 1
        printf '#!/bin/sh\nexec java -cp "%s/lib/*:%s/classes" FlywayCli "$@"\n' "$dir" "$dir" > "$dir.tmp/flyway"
        chmod 755 "$dir.tmp/flyway"
        touch "$dir.tmp/.complete-$stamp"
        rm -rf "$dir" && mv "$dir.tmp" "$dir" || return 1
    fi
    echo "KPG_FLYWAY=$dir/flyway"
}

status=0
for tool in golang_migrate dbmate flyway; do
    if ! "$tool"; then
        echo "error: ${tool//_/-} did not install (see above)" >&2
        status=1
    fi
done
chmod -R a+rX "$tools" 2>/dev/null
exit $status
