# Shared by ci/test, ci/demo and ci/bench: install what the project needs from Debian, idempotently.
# shellcheck shell=bash

# Debian packages: build (nginx's PCRE2, bindgen's libclang) and test tools (nodejs: the Node
# transformer of examples/pool/, served by tests/examples.rs).
BUILD_PACKAGES=(libpcre2-dev libclang1-14 libclang-common-14-dev libssl-dev zlib1g-dev gcc make)
TEST_PACKAGES=(curl openssl strace imagemagick procps ffmpeg libjpeg-turbo-progs python3 nodejs)
# Benchmark contestants and load tools (ci/bench); apache2-bin for W7 (the server and its modules,
# mod_ext_filter and mod_proxy, without the apache2 package's system service); python3-pil for W8
# (PIL for Debian's /usr/bin/python3, which W8's Python contestants run).
# curl and openssl: W1t (the TLS and HTTP/2 client, the self-signed certificate).
BENCH_PACKAGES=(python3 procps wrk curl openssl fcgiwrap uwsgi-core uwsgi-plugin-python3 apache2-bin
    python3-pil)

# ci/package: Debian's packaging tools and nginx-dev (Debian's nginx source tree, dh_nginx and the
# nginx ABI; it depends on the nginx package, which tests/package.rs installs the module into).
PACKAGE_PACKAGES=(nginx-dev debhelper dpkg-dev)

ensure_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "ci: installing ${missing[*]}"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_rust() {
    command -v cargo >/dev/null || { echo "ci: cargo not found (install Rust with rustup)" >&2; exit 1; }
}
