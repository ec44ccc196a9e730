# Shared by scripts/start and scripts/test: install what unicri needs on Debian 12.
# Sourced, not run.

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "unicri: $0 must run as root (it installs packages and runs a container runtime)" >&2
        exit 1
    fi
}

# apt_install PKG...: installs the packages that are missing, running `apt-get update` once.
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "unicri: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Packages to build and run the daemon.
RUNTIME_PACKAGES=(ca-certificates pkg-config libssl-dev gcc libseccomp-dev containernetworking-plugins iptables iproute2 erofs-utils)
# Extra packages for the test suite: a real registry, htpasswd, busybox for test images, CNI plugins.
TEST_PACKAGES=(docker-registry apache2-utils busybox openssl curl procps util-linux libc-bin iproute2 containernetworking-plugins iptables)

need_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        for d in "$HOME/.cargo/bin" /root/.cargo/bin /usr/local/cargo/bin; do
            [ -x "$d/cargo" ] && export PATH="$d:$PATH" && break
        done
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "unicri: cargo (Rust >= 1.88) is required; install a Rust toolchain with rustup" >&2
        exit 1
    fi
}

# Writes a bridge + host-local + portmap conflist to /etc/cni/net.d when that directory holds no
# network config yet (an existing config is never touched).
install_default_cni_conflist() {
    local dir=/etc/cni/net.d
    mkdir -p "$dir"
    if compgen -G "$dir/*.conf" >/dev/null || compgen -G "$dir/*.conflist" >/dev/null || compgen -G "$dir/*.json" >/dev/null; then
        return 0
    fi
    cat >"$dir/10-unicri.conflist" <<'JSON'
{
  "cniVersion": "1.0.0",
  "name": "unicri",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "unicri0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "10.88.0.0/16" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } },
    { "type": "bandwidth", "capabilities": { "bandwidth": true } }
  ]
}
JSON
    echo "unicri: wrote the default pod network $dir/10-unicri.conflist (bridge unicri0, 10.88.0.0/16)"
}
