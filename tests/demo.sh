#!/usr/bin/env bash
# The whole job, end to end, on this machine: two destinations, a throwaway OpenSSH server on
# 127.0.0.1 with a throwaway user and a throwaway S3 bucket (SeaweedFS, `weed mini`), a
# simulated CVP (tests/fixtures/fake-cvpi), a Fernet key and token made by Python's
# `cryptography` as the old scripts did, then two runs, a dry run and a fetch from the bucket.
# Needs root (it creates the demo user and starts sshd). Leaves nothing behind.
set -euo pipefail

bin=$(realpath "${1:-target/x86_64-unknown-linux-musl/release/cvp-backup-copy}")
here=$(cd "$(dirname "$0")" && pwd)
. "$here/throwaway-sshd.sh"
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it creates a user and starts sshd)" >&2; exit 1; }

user=cvpbc-demo
work=$(mktemp -d /tmp/cvp-backup-copy-demo.XXXXXX)
sshd_pid=""
weed_pid=""
cleanup() {
    [ -n "$sshd_pid" ] && kill "$sshd_pid" 2>/dev/null || true
    if [ -n "$weed_pid" ]; then
        kill "$weed_pid" 2>/dev/null || true
        for _ in 1 2 3 4 5; do kill -0 "$weed_pid" 2>/dev/null || break; sleep 1; done
        kill -9 "$weed_pid" 2>/dev/null || true
    fi
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

step "object storage: a throwaway SeaweedFS S3 server on 127.0.0.1, bucket cvp-backups"
s3_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
s3_secret=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
mkdir -p "$work/weed/data" "$work/weed/logs"
cat > "$work/weed/identities.json" <<JSON
{"identities": [
 {"name": "admin", "credentials": [{"accessKey": "demo-admin", "secretKey": "$s3_secret-admin"}],
  "actions": ["Admin", "Read", "Write", "List"]},
 {"name": "cvp-node", "credentials": [{"accessKey": "cvp-node-key", "secretKey": "$s3_secret"}],
  "actions": ["Read:cvp-backups", "Write:cvp-backups", "List:cvp-backups"]}]}
JSON
weed=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/weed
"$weed" -logdir="$work/weed/logs" mini -dir="$work/weed/data" -ip=127.0.0.1 -s3.port="$s3_port" \
    -s3.config="$work/weed/identities.json" -admin.ui=false -master.telemetry=false \
    -s3.localSocket="$work/weed/s3.sock" -filer.localSocket="$work/weed/filer.sock" \
    >"$work/weed/out.log" 2>&1 &
weed_pid=$!
s3() { # s3 PYTHON: run with `s3` a boto3 client (the admin's)
    python3 -c "import boto3, os, sys
s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:$s3_port', region_name='us-east-1',
    aws_access_key_id='demo-admin', aws_secret_access_key='$s3_secret-admin')
$1"
}
for _ in $(seq 120); do s3 's3.list_buckets()' 2>/dev/null && break; sleep 1; done
s3 "s3.create_bucket(Bucket='cvp-backups')"
echo "S3 endpoint http://127.0.0.1:$s3_port, bucket cvp-backups (identity cvp-node: that bucket only)"

step "CVP node: simulated cvpi, an old images file, key and token as newKeyGen.py made them"
node="$work/node"
mkdir -p "$node/data/cvpbackup" "$node/logs" "$node/keys" "$node/state"
# An older images file, a real archive as cvpi writes one (the run checks every archive).
"$here/fixtures/fake-cvpi" --backup-dir "$work/old-images" --log-dir "$work/old-images" \
    --images --no-data --size 5000000 backup cvp > /dev/null
mv "$work"/old-images/cvp.eosimages.*.tgz "$node/data/cvpbackup/cvp.eosimages.20240101020005.tgz"
token=$(printf '%s' "$password" | python3 -c '
import sys
from cryptography.fernet import Fernet
key = Fernet.generate_key()
open(sys.argv[1], "wb").write(key)
print(Fernet(key).encrypt(sys.stdin.buffer.read()).decode())' "$node/keys/backup.key")
chmod 600 "$node/keys/backup.key"
s3_token=$(printf '%s' "$s3_secret" | python3 -c '
import sys
from cryptography.fernet import Fernet
print(Fernet(open(sys.argv[1], "rb").read()).encrypt(sys.stdin.buffer.read()).decode())' "$node/keys/backup.key")
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

# A second copy, in a bucket (3-2-1): the same set goes there side by side every night.
[Destination offsite]
user = cvp-node-key
server = http://127.0.0.1:$s3_port
password = $s3_token
destination = s3://cvp-backups/cvp1
remote_limit = 3
INI
mkdir -p "$node/metrics"
chmod 600 "$node/backup.ini"
sed 's/^password = .*/password = gAAAAA... (Fernet token)/' "$node/backup.ini"

step "check: every link of both destinations, before the first night"
"$bin" check --ini "$node/backup.ini" || true

step "run 1: cvp-backup-copy --ini backup.ini (backup, copy, verify, prune)"
set +e
"$bin" --ini "$node/backup.ini" -v; code=$?
set -e
echo "exit code: $code"

step "the backup server now holds a complete restore set; sha256sum -c there:"
ls -l "$work/server/backups/cvp"
(cd "$work/server/backups/cvp" && sha256sum -c ./*.sha256)

step "the bucket holds the same set; downloaded with boto3 (not this tool), sha256sum -c:"
mkdir -p "$work/from-s3"
s3 "
for o in s3.list_objects_v2(Bucket='cvp-backups', Prefix='cvp1/')['Contents']:
    print('%12d  s3://cvp-backups/%s' % (o['Size'], o['Key']))
    s3.download_file('cvp-backups', o['Key'], os.path.join('$work/from-s3', o['Key'][5:]))"
(cd "$work/from-s3" && sha256sum -c ./*.set.sha256)

step "run 2: --no-backup (nothing to copy: everything is there and verified)"
"$bin" --ini "$node/backup.ini" --no-backup -v

step "verify --read-data: read every member of the newest set back from both destinations (the RPM's weekly job)"
"$bin" verify --ini "$node/backup.ini" --read-data

step "a byte of the server's copy rots: the read-back names it (exit 5), the next night mends it"
data=$(cd "$work/server/backups/cvp" && ls cvp.2*.tgz | tail -1)
printf 'X' | dd of="$work/server/backups/cvp/$data" bs=1 seek=1000000 conv=notrunc status=none
set +e
"$bin" verify --ini "$node/backup.ini" --destination main --read-data; echo "exit code: $?"
set -e
"$bin" --ini "$node/backup.ini" --no-backup
"$bin" verify --ini "$node/backup.ini" --destination main --read-data

step "status: how the last night went (and where its whole log is)"
"$bin" status --ini "$node/backup.ini" || true

step "--dry-run: what the next run would do"
"$bin" --ini "$node/backup.ini" --dry-run

step "fetch --destination offsite: the set back from the bucket alone, verified"
"$bin" fetch --ini "$node/backup.ini" --destination offsite --to "$work/restore"

step "list --destination offsite"
"$bin" list --ini "$node/backup.ini" --destination offsite

step "last run record ($node/state/last-run.json)"
cat "$node/state/last-run.json"

step "monitoring: status --nagios, and the Prometheus textfile ($node/metrics/cvp_backup_copy.prom)"
"$bin" status --nagios --state-dir "$node/state" || true
grep -v '^#' "$node/metrics/cvp_backup_copy.prom"
if [ "$code" -ne 0 ]; then echo "demo: the first run failed with exit code $code" >&2; exit 1; fi
echo; echo "demo: all done"
