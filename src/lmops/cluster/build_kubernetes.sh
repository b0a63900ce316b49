#!/usr/bin/env bash
# Build the control plane (kube-apiserver, kube-controller-manager, kube-scheduler) and the node's
# binaries (kubelet, kube-proxy, the pause container's static `pause`) from Debian bookworm's `kubernetes`
# source package, and install Debian's etcd-server. Run by lmops.cluster.binaries (which caches the result keyed by the
# version and a hash of this file); the measured recipe and its pitfalls are in STACK-NOTES.md.
#
# Inputs (environment): OUT (folder for bin/), WORK (scratch folder, deleted by the caller on success),
# K8S_DEB_VERSION (the Debian source version), K8S_VERSION (e.g. v1.20.2, stamped into /version).
# On failure the last lines are `FAILED: <step>` and `FIX: <what to do>`; the caller shows them.
set -uo pipefail

step_no=0
step() { step_no=$((step_no + 1)); CURRENT_STEP="$1"; echo "== step $step_no/11: $1"; }
fail() { echo "FAILED: $CURRENT_STEP"; echo "FIX: $1"; exit 3; }
# A download failure names the archive, not the package: tell the two apart for the user.
apt_fix() {
  if grep -qiE "Temporary failure resolving|Could not resolve|Failed to fetch|Connection (failed|timed out)|Unable to connect" "$1"; then
    echo "no network to the Debian archive (see $1); apt-get needs deb.debian.org or a mirror reachable"
  else
    echo "apt-get failed (see $1): $(tail -n 3 "$1" | tr '\n' ' ')"
  fi
}
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"

mkdir -p "$OUT/bin" "$WORK"
LOG="$WORK/apt.log"

step "Debian source archive (deb-src) enabled"
has_src() { grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; }
if ! has_src; then
  [ -f /etc/apt/sources.list.d/debian.sources ] && [ "$(id -u)" = 0 ] || \
    fail "enable deb-src: add 'Types: deb-src' entries for your Debian archive (e.g. copy /etc/apt/sources.list.d/debian.sources with Types: deb-src) and run apt-get update"
  # Same archive entries as the binary ones, only the type differs; our own file, so removing it undoes this.
  sed -E 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > /etc/apt/sources.list.d/lmops-deb-src.sources
  echo "   wrote /etc/apt/sources.list.d/lmops-deb-src.sources (Types: deb-src for the entries of debian.sources)"
  NEED_UPDATE=1
fi
if [ -n "${NEED_UPDATE:-}" ] || ! ls /var/lib/apt/lists/ | grep -q '_Sources'; then
  $SUDO apt-get update -q >"$LOG" 2>&1 || fail "$(apt_fix "$LOG")"
fi

step "apt-get install golang-1.19-go etcd-server rsync dpkg-dev gcc libc6-dev"
if ! dpkg -s golang-1.19-go etcd-server rsync dpkg-dev gcc libc6-dev >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
    golang-1.19-go etcd-server rsync dpkg-dev gcc libc6-dev >"$LOG" 2>&1 || fail "$(apt_fix "$LOG")"
  # Debian's etcd-server starts its service on install where an init system runs; lmops runs its own etcd
  # on free ports, so stop that service (only it: never other etcd processes on this machine).
  (systemctl disable --now etcd || service etcd stop) >/dev/null 2>&1 || true
fi
export PATH=/usr/lib/go-1.19/bin:$PATH
command -v go >/dev/null || fail "go 1.19 not found at /usr/lib/go-1.19/bin after installing golang-1.19-go"

step "apt-get source kubernetes=$K8S_DEB_VERSION"
cd "$WORK"
if [ ! -d src ]; then
  rm -rf dl && mkdir dl && cd dl
  apt-get source -q "kubernetes=$K8S_DEB_VERSION" >"$LOG" 2>&1 || fail "$(apt_fix "$LOG")"
  cd "$WORK" && mv "$(find dl -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)" src \
    || fail "apt-get source left no kubernetes-* folder (see $LOG)"
fi
TREE="$WORK/src"

step "vendor github.com/modern-go/reflect2 1.0.2 (1.0.1 crashes under Go 1.19)"
# The vendored v1.0.1 faults (`fatal error: fault`) on the first custom object when built with Go 1.19.
rm -rf r2 && mkdir r2 && cd r2
apt-get download -q golang-github-modern-go-reflect2-dev >"$LOG" 2>&1 || fail "$(apt_fix "$LOG")"
dpkg-deb -x golang-github-modern-go-reflect2-dev_*.deb x || fail "dpkg-deb could not unpack the reflect2 package"
SRC_R2=$(find x -type d -path '*github.com/modern-go/reflect2' | head -n1)
[ -n "$SRC_R2" ] || fail "no github.com/modern-go/reflect2 in golang-github-modern-go-reflect2-dev"
rm -rf "$TREE/vendor/github.com/modern-go/reflect2" && mkdir -p "$TREE/vendor/github.com/modern-go/reflect2"
find "$SRC_R2" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
  -exec cp {} "$TREE/vendor/github.com/modern-go/reflect2/" \;
cd "$WORK"

# GOPATH mode: the tree ships vendor/ and builds as k8s.io/kubernetes (module mode with -mod=vendor fails).
# GOCACHE (content-addressed, safe to share) lives beside the cache entries: a changed recipe recompiles
# only what changed.
export GOPATH="$WORK/gopath" GO111MODULE=off CGO_ENABLED=0 GOFLAGS="" GOCACHE="${GOCACHE:-$WORK/gocache}"
mkdir -p "$GOPATH/src/k8s.io" && ln -sfn "$TREE" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"

step "generate pkg/generated/openapi (make gen_openapi)"
if [ ! -f pkg/generated/openapi/zz_generated.openapi.go ]; then
  make gen_openapi >"$WORK/gen_openapi.log" 2>&1 || { tail -n 20 "$WORK/gen_openapi.log"; fail "make gen_openapi failed (see $WORK/gen_openapi.log)"; }
fi

# /version reports v0.0.0 unless both version packages are stamped.
LDFLAGS=""
for pkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  LDFLAGS="$LDFLAGS -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=20 -X $pkg.gitTreeState=clean"
done

build() {  # $1: command name. `go build -v` names each package as it compiles it: count them for progress.
  local log="$WORK/build-$1.log" n=0
  # (a bash loop, not awk: mawk buffers its input and the counts would arrive in bursts)
  go build -v -ldflags "-s -w $LDFLAGS" -o "$OUT/bin/$1" "./cmd/$1" 2>&1 | tee "$log" | \
    while read -r _; do n=$((n + 1)); [ $((n % 100)) = 0 ] && echo "   $1: $n packages compiled"; done
  [ "${PIPESTATUS[0]}" = 0 ] || { tail -n 30 "$log"; fail "go build ./cmd/$1 failed (see $log)"; }
}
step "go build ./cmd/kube-apiserver (the long step: 5-10 min on 2 cores)"
build kube-apiserver
step "go build ./cmd/kube-controller-manager"
build kube-controller-manager
step "go build ./cmd/kube-scheduler"
build kube-scheduler
step "go build ./cmd/kubelet (the node agent: 3-5 min more)"
build kubelet
step "go build ./cmd/kube-proxy"
build kube-proxy

step "gcc -static build/pause/linux/pause.c (the pod sandbox's process)"
# No registry serves k8s.gcr.io/pause here: the node's sandbox image is made from this binary.
gcc -Os -static -DVERSION="$K8S_VERSION-lmops" -o "$OUT/bin/pause" build/pause/linux/pause.c >"$WORK/pause.log" 2>&1 \
  || { cat "$WORK/pause.log"; fail "gcc could not build build/pause/linux/pause.c (see $WORK/pause.log)"; }

echo "built: $("$OUT/bin/kube-apiserver" --version); kubelet $("$OUT/bin/kubelet" --version)"
echo "etcd: $(command -v etcd) ($(etcd --version | head -n1))"
