#!/usr/bin/env bash
# Install everything libagentvault needs to build and test on Debian 12.
# Idempotent; run as root (or with sudo available).
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential meson ninja-build pkg-config clang libclang-rt-14-dev
  # libraries (BoringSSL is the default TLS backend; OpenSSL 3 must also build)
  android-libboringssl-dev libssl-dev openssl ca-certificates
  libev-dev libnghttp2-dev libwslay-dev libc-ares-dev libpsl-dev publicsuffix
  libcmocka-dev libargon2-dev zlib1g-dev
  # real clients and test peers
  curl git nodejs nghttp2-client nghttp2-server
  python3 python3-pytest python3-pytest-timeout python3-httpx python3-websockets python3-h2
  python3-hyperframe python3-cryptography python3-grpcio
  # bindings: Rust (cargo --offline, no external crates); Node uses the
  # nodejs package's own headers (/usr/include/node)
  cargo rustc
  # bench smoke (bench/run.py --smoke): origin and peer proxy
  nginx mitmproxy
  # compat suite clients (tests/compat): Python HTTP/WebSocket/gRPC clients, pip, Go
  python3-requests python3-aiohttp python3-grpcio python3-pip golang-go
  # egress (tests/integration/test_parent_proxy.py, test_socks.py): parent
  # proxies and SOCKS peers, Python SOCKS clients
  squid tinyproxy dante-server microsocks python3-socks python3-socksio
  # aws-sigv4 (tests/integration/test_sigv4.py): boto3/botocore and the AWS CLI
  python3-botocore python3-boto3 awscli
  # replicas and deploy files (tests/integration/test_replicas.py,
  # test_deploy_files.py): the load balancer, the image's init, manifests
  # (YAML), the unit's checker
  haproxy tini python3-yaml systemd
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup.sh: run as root (apt-get needs it)" >&2; exit 1; }
  SUDO=sudo
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup.sh: all packages present"
fi

# npm: machines with NodeSource's nodejs already have it (Debian's npm
# package would try to replace that nodejs), so install it only if absent.
if ! command -v npm >/dev/null; then
  echo "setup.sh: installing npm"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm
fi
