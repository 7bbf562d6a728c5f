#!/usr/bin/env bash
# The whole job, end to end, on this machine: a throwaway OpenSSH server on 127.0.0.1 with a
# throwaway user, a simulated CVP (tests/fixtures/fake-cvpi), a Fernet key and token made by
# Python's `cryptography` as the old scripts did, then two runs and a dry run.
# Needs root (it creates the demo user and starts sshd). Leaves nothing behind.
set -euo pipefail

bin=$(realpath "${1:-target/x86_64-unknown-linux-musl/release/cvp-backup-copy}")
here=$(cd "$(dirname "$0")" && pwd)
. "$here/throwaway-sshd.sh"
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it creates a user and starts sshd)" >&2; exit 1; }

user=cvpbc-demo
work=$(mktemp -d /tmp/cvp-backup-copy-demo.XXXXXX)
sshd_pid=""
cleanup() {
    [ -n "$sshd_pid" ] && kill "$sshd_pid" 2>/dev/null || true
    rm -rf "$work"
    userdel -r "$user" >/dev/null 2>&1 || true
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "backup server: a throwaway sshd on 127.0.0.1 and user $user"
password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
id "$user" >/dev/null 2>&1 || useradd -m -s /bin/sh "$user"
printf '%s:%s\n' "$user" "$password" | chpasswd
mkdir -p "$work/server/backups"
chmod 755 "$work" "$work/server"
chown "$user" "$work/server/backups"
start_sshd "$work" "$user" password
port=$sshd_port
echo "sshd listening on 127.0.0.1:$port"

step "CVP node: simulated cvpi, an old images file, key and token as newKeyGen.py made them"
node="$work/node"
mkdir -p "$node/data/cvpbackup" "$node/logs" "$node/keys" "$node/state"
head -c 5000000 /dev/urandom > "$node/data/cvpbackup/cvp.eosimages.20240101020005.tgz"
token=$(printf '%s' "$password" | python3 -c '
import sys
from cryptography.fernet import Fernet
key = Fernet.generate_key()
open(sys.argv[1], "wb").write(key)
print(Fernet(key).encrypt(sys.stdin.buffer.read()).decode())' "$node/keys/backup.key")
chmod 600 "$node/keys/backup.key"
cat > "$node/backup.ini" <<INI
[Server_Settings]
# Backup Server Settings
user = $user
server = 127.0.0.1
port = $port
password = $token
keyFile = $node/keys/backup.key
destination = $work/server/backups/cvp
known_hosts = $node/known_hosts

[Backup_Settings]
# Backup script settings
limit = 2
backup_command = $here/fixtures/fake-cvpi --backup-dir $node/data/cvpbackup --log-dir $node/logs --size 20000000
backup_user = root
backup_dir = $node/data/cvpbackup
log_dir = $node/logs
state_dir = $node/state
metrics_dir = $node/metrics
INI
mkdir -p "$node/metrics"
chmod 600 "$node/backup.ini"
sed 's/^password = .*/password = gAAAAA... (Fernet token)/' "$node/backup.ini"

step "run 1: cvp-backup-copy --ini backup.ini (backup, copy, verify, prune)"
set +e
"$bin" --ini "$node/backup.ini" -v; code=$?
set -e
echo "exit code: $code"

step "the backup server now holds a complete restore set; sha256sum -c there:"
ls -l "$work/server/backups/cvp"
(cd "$work/server/backups/cvp" && sha256sum -c ./*.sha256)

step "run 2: --no-backup (nothing to copy: everything is there and verified)"
"$bin" --ini "$node/backup.ini" --no-backup -v

step "status: how the last night went (and where its whole log is)"
"$bin" status --ini "$node/backup.ini" || true

step "--dry-run: what the next run would do"
"$bin" --ini "$node/backup.ini" --dry-run

step "last run record ($node/state/last-run.json)"
cat "$node/state/last-run.json"

step "monitoring: status --nagios, and the Prometheus textfile ($node/metrics/cvp_backup_copy.prom)"
"$bin" status --nagios --state-dir "$node/state" || true
grep -v '^#' "$node/metrics/cvp_backup_copy.prom"
if [ "$code" -ne 0 ]; then echo "demo: the first run failed with exit code $code" >&2; exit 1; fi
echo; echo "demo: all done"
