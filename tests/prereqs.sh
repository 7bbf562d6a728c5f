#!/usr/bin/env bash
# Install what building and testing need, on a fresh Debian machine; quick when all is there.
set -euo pipefail

missing=()
command -v musl-gcc >/dev/null || missing+=(musl-tools)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v rpm >/dev/null || missing+=(rpm)
command -v cpio >/dev/null || missing+=(cpio)
# A static shell for the scratch root the RPM tests install into.
[ -x /bin/busybox ] || missing+=(busybox-static)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "prereqs: missing ${missing[*]}; run as root (or install them) and retry" >&2
        exit 1
    fi
    echo "prereqs: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    rustup target add x86_64-unknown-linux-musl
fi
for component in clippy rustfmt; do
    rustup component list --installed | grep -q "^$component" || rustup component add "$component"
done

# 0.21 is the first to own directories (`dir = true` assets).
command -v cargo-generate-rpm >/dev/null || cargo install --locked cargo-generate-rpm --version 0.21.1
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

# The tests use Python's `cryptography` as the reference Fernet implementation.
if ! python3 -c 'import cryptography.fernet' 2>/dev/null; then
    python3 -m pip install -q cryptography
fi
