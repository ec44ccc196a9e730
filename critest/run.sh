#!/usr/bin/env bash
# Run critest (cri-tools v1.36.0) against unicri, offline.
#
# Builds critest's test images (tests/src/bin/unicri-testimages.rs), pushes them to a local
# docker-registry under critest's repository paths, mirrors registry.k8s.io, k8s.gcr.io, gcr.io,
# public.ecr.aws and docker.io to it through hosts.toml, starts unicri on its own
# socket/root/state, runs critest, prints "N passed, N failed" and exits non-zero on failures.
#
# usage: critest/run.sh [--handler H] [--focus REGEX] [--skip REGEX] [--config-extra FILE]
#                       [--keep] [--no-build] [--serve] [-- extra critest args]
# --serve: set everything up but run no critest; print the crictl endpoint and wait (Ctrl-C
#          tears it down). The registry also holds docker.io/unicri/wasm-hello:{compat,artifact},
#          unicri/wasm-component:artifact and unicri/wasm-ticker:compat for the wasm handler.
# env:   CRITEST (default /work/tools/bin/critest), UNICRI_BIN (default target/debug/unicri),
#        REGISTRY_BIN (default /usr/bin/docker-registry)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
WS="$(cd "$HERE/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$WS/target}"
CRITEST="${CRITEST:-/work/tools/bin/critest}"
UNICRI_BIN="${UNICRI_BIN:-$TARGET/debug/unicri}"
REGISTRY_BIN="${REGISTRY_BIN:-/usr/bin/docker-registry}"
HANDLER=""
FOCUS=""
SKIP=""
CONFIG_EXTRA=""
KEEP=0
BUILD=1
SERVE=0
EXTRA=()

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --handler) HANDLER="$2"; shift 2 ;;
        --focus) FOCUS="$2"; shift 2 ;;
        --skip) SKIP="$2"; shift 2 ;;
        --config-extra) CONFIG_EXTRA="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --serve) SERVE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "critest/run.sh: $*" >&2; exit 2; }
[[ -x "$CRITEST" ]] || die "critest not found at $CRITEST (set CRITEST=...)"
[[ -x "$REGISTRY_BIN" ]] || die "$REGISTRY_BIN missing: apt-get install -y docker-registry"
command -v curl >/dev/null || die "curl missing: apt-get install -y curl"
[[ -x /bin/busybox ]] || die "/bin/busybox missing: apt-get install -y busybox"

if [[ $BUILD == 1 ]]; then
    (cd "$WS" && cargo build -p unicri-e2e --bins)
fi
TESTIMAGES="$TARGET/debug/unicri-testimages"
[[ -x "$TESTIMAGES" ]] || die "$TESTIMAGES missing (cargo build -p unicri-e2e --bins)"
[[ -x "$UNICRI_BIN" ]] || die "unicri not found at $UNICRI_BIN (cargo build -p unicri-cri-server, or set UNICRI_BIN)"

TMP="$(mktemp -d /tmp/unicri-critest.XXXXXX)"
REG_PID=""
UNICRI_PID=""
cleanup() {
    local rc=$?
    if [[ -n "$UNICRI_PID" ]] && kill -0 "$UNICRI_PID" 2>/dev/null; then
        # Pods outlive the daemon by design: remove whatever critest left (failed specs skip their
        # clean-up) before stopping it, as a kubelet drain would.
        "$UNICRI_BIN" --address "$SOCK" rmp --all >/dev/null 2>&1 || echo "critest/run.sh: removing leftover pods failed" >&2
        kill -TERM "$UNICRI_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$UNICRI_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$UNICRI_PID" 2>/dev/null || true
        wait "$UNICRI_PID" 2>/dev/null || true
    fi
    # critest's mount-propagation specs mount /tmp/test<hex>/mnt on the host and leak them when a
    # spec fails before its AfterEach; remove the ones that appeared during this run.
    for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E '^/tmp/test[0-9a-f]+/mnt$' || true); do
        grep -qxF "$m" "$TMP/mounts.before" 2>/dev/null && continue
        umount -l "$m" 2>/dev/null || true
        rm -rf "$(dirname "$m")"
    done
    if [[ -n "${CNI_BRIDGE:-}" ]]; then
        ip link del "$CNI_BRIDGE" 2>/dev/null || true
    fi
    if [[ -n "$REG_PID" ]]; then
        kill -TERM "$REG_PID" 2>/dev/null || true
        wait "$REG_PID" 2>/dev/null || true
    fi
    if [[ $KEEP == 1 ]]; then
        echo "critest/run.sh: kept $TMP (unicri.log, registry.log, critest.log)" >&2
    else
        # the daemon should have unmounted everything; never rm through a live mount
        if grep -q " $TMP/" /proc/self/mountinfo; then
            echo "critest/run.sh: mounts left under $TMP, not removing it" >&2
        else
            rm -rf "$TMP"
        fi
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

awk '{print $5}' /proc/self/mountinfo >"$TMP/mounts.before"

# --- registry ---------------------------------------------------------------------------------
PORT="$("$TESTIMAGES" --free-port)"
REG_HOST="127.0.0.1:$PORT"
REG_URL="http://$REG_HOST"
mkdir -p "$TMP/registry"
cat >"$TMP/registry.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $TMP/registry
  delete:
    enabled: true
http:
  addr: $REG_HOST
  secret: unicri-critest
EOF
"$REGISTRY_BIN" serve "$TMP/registry.yml" >"$TMP/registry.log" 2>&1 &
REG_PID=$!
for i in $(seq 1 150); do
    curl -fsS "$REG_URL/v2/" >/dev/null 2>&1 && break
    kill -0 "$REG_PID" 2>/dev/null || { cat "$TMP/registry.log" >&2; die "docker-registry exited"; }
    [[ $i == 150 ]] && { cat "$TMP/registry.log" >&2; die "docker-registry not ready"; }
    sleep 0.1
done
echo "critest/run.sh: registry at $REG_URL, building and pushing test images"
"$TESTIMAGES" --registry "$REG_URL" >"$TMP/testimages.log" 2>&1 || { cat "$TMP/testimages.log" >&2; die "test image build/push failed"; }
echo "critest/run.sh: $(grep -c '^pushed' "$TMP/testimages.log") references pushed"

# --- unicri -------------------------------------------------------------------------------------
mkdir -p "$TMP/certs.d"
for host in registry.k8s.io k8s.gcr.io gcr.io public.ecr.aws docker.io "$REG_HOST"; do
    mkdir -p "$TMP/certs.d/$host"
    cat >"$TMP/certs.d/$host/hosts.toml" <<EOF
[host."$REG_URL"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
EOF
done
# --- pod network: a bridge + host-local conflist of our own (bridge removed on exit) -------------
CNI_BRIDGE="ucrt$(( $$ % 1000 ))"
mkdir -p "$TMP/net.d"
cat >"$TMP/net.d/10-critest.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "unicri-critest", "plugins": [
  {"type": "bridge", "bridge": "$CNI_BRIDGE", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.252.$(( $$ % 250 )).0/24"}]], "dataDir": "$TMP/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
EOF
{
    echo "[cni]"
    echo "conf_dir = \"$TMP/net.d\""
    echo "bin_dirs = [\"/usr/lib/cni\"]"
    echo
    echo "[registry]"
    echo "config_path = \"$TMP/certs.d\""
    if [[ -n "$CONFIG_EXTRA" ]]; then echo; cat "$CONFIG_EXTRA"; fi
} >"$TMP/unicri.toml"
SOCK="$TMP/unicri.sock"
"$UNICRI_BIN" daemon --config "$TMP/unicri.toml" --root "$TMP/root" --state "$TMP/state" \
    --address "$SOCK" --log-level debug >"$TMP/unicri.log" 2>&1 &
UNICRI_PID=$!
for i in $(seq 1 200); do
    [[ -S "$SOCK" ]] && break
    kill -0 "$UNICRI_PID" 2>/dev/null || { tail -50 "$TMP/unicri.log" >&2; die "unicri exited"; }
    [[ $i == 200 ]] && { tail -50 "$TMP/unicri.log" >&2; die "unicri socket did not appear in 20s"; }
    sleep 0.1
done
echo "critest/run.sh: unicri pid $UNICRI_PID on $SOCK"
if [[ $SERVE == 1 ]]; then
    echo "critest/run.sh: serving; export CONTAINER_RUNTIME_ENDPOINT=unix://$SOCK IMAGE_SERVICE_ENDPOINT=unix://$SOCK"
    echo "critest/run.sh: logs in $TMP; Ctrl-C (or kill $$) to tear down"
    wait "$UNICRI_PID" || true
    exit 0
fi

# --- critest ------------------------------------------------------------------------------------
ARGS=(--runtime-endpoint "unix://$SOCK" --image-endpoint "unix://$SOCK")
[[ -n "$HANDLER" ]] && ARGS+=(--runtime-handler "$HANDLER")
[[ -n "$FOCUS" ]] && ARGS+=("--ginkgo.focus=$FOCUS")
[[ -n "$SKIP" ]] && ARGS+=("--ginkgo.skip=$SKIP")
ARGS+=("${EXTRA[@]}")
echo "critest/run.sh: $CRITEST ${ARGS[*]}"
set +e
"$CRITEST" "${ARGS[@]}" 2>&1 | tee "$TMP/critest.log"
CRITEST_RC=${PIPESTATUS[0]}
set -e

# ginkgo v2 summary: "FAIL! -- 88 Passed | 3 Failed | 0 Pending | 31 Skipped"
# (ginkgo colours its output: strip the escapes first; no match must not end the script)
sed 's/\x1b\[[0-9;]*m//g' "$TMP/critest.log" >"$TMP/critest.plain.log"
SUMMARY="$(grep -Eo '[0-9]+ Passed \| [0-9]+ Failed \| [0-9]+ Pending \| [0-9]+ Skipped' "$TMP/critest.plain.log" | tail -1 || true)"
if [[ -z "$SUMMARY" ]]; then
    echo "critest/run.sh: no ginkgo summary found (critest exit $CRITEST_RC)" >&2
    echo "0 passed, 1 failed"
    exit 1
fi
PASSED="$(sed -E 's/^([0-9]+) Passed.*/\1/' <<<"$SUMMARY")"
FAILED="$(sed -E 's/.*\| ([0-9]+) Failed.*/\1/' <<<"$SUMMARY")"
SKIPPED="$(sed -E 's/.*\| ([0-9]+) Skipped.*/\1/' <<<"$SUMMARY")"
grep -E '^\s*\[FAIL\]' "$TMP/critest.plain.log" | sort -u || true
echo "($SKIPPED skipped; critest exit $CRITEST_RC)"
echo "$PASSED passed, $FAILED failed"
if [[ "$FAILED" != 0 || $CRITEST_RC != 0 ]]; then
    exit 1
fi
exit 0
