#!/usr/bin/env bash
# make bench: cvp-backup-copy side by side with OpenSSH in one run, on loopback and through a
# 25 ms-each-way latency proxy. Prints a table (seconds, MB/s, peak RSS, ratios to scp) and
# writes it to benches/RESULTS.md (1 GiB) or, with BENCH_BIG=1, benches/RESULTS-4GiB.md. Needs root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
. "$top/tests/throwaway-sshd.sh"
bin=$top/target/x86_64-unknown-linux-musl/release/cvp-backup-copy
proxy_bin=$top/target/x86_64-unknown-linux-musl/release/examples/netem_proxy
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it creates a user and starts sshd)" >&2; exit 1; }
size_mib=1024
[ "${BENCH_BIG:-0}" = 1 ] && size_mib=4096
size=$((size_mib * 1024 * 1024))

user=cvpbc-bench
work=$(mktemp -d /tmp/cvp-backup-copy-bench.XXXXXX)
sshd_pid="" proxy_pid=""
cleanup() {
    [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
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
# Source and destination in RAM: the disks are not what is measured.
mount -t tmpfs -o "size=$((size_mib * 3 + 512))m,mode=0755" tmpfs "$work/fs"
mkdir -p "$work/fs/src/logs" "$work/fs/dest" "$work/keys" "$work/state"
chown "$user" "$work/fs/dest"
ssh-keygen -q -t ed25519 -N '' -f "$work/id"
mkdir -p "$work/authorized"
cp "$work/id.pub" "$work/authorized/$user"
start_sshd "$work" "$user" key
port=$sshd_port
proxy_port=$(free_port)
"$proxy_bin" "$proxy_port" "$port" 25 &
proxy_pid=$!
wait_port "$proxy_port"

name=cvp.20240101020010.tgz
echo "bench: writing ${size_mib} MiB of random data"
head -c "$size" /dev/urandom > "$work/fs/src/$name"
ssh_opts=(-i "$work/id" -o UserKnownHostsFile="$work/known_hosts" -o StrictHostKeyChecking=accept-new -o BatchMode=yes)

write_ini() { # port streams
    cat > "$work/backup.ini" <<INI
[Server_Settings]
user = $user
server = 127.0.0.1
port = $1
identity_file = $work/id
known_hosts = $work/known_hosts
destination = $work/fs/dest
streams = $2
[Backup_Settings]
backup_user = root
backup_dir = $work/fs/src
log_dir = $work/fs/src/logs
state_dir = $work/state
INI
}

results=()
# CPU time of the whole machine (client, sshd, proxy), in clock ticks: on loopback the
# server shares the CPUs, so this shows where a copy is CPU-bound.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
measure() { # label command...
    local label=$1; shift
    rm -rf "$work/fs/dest"/* "$work/fs/dest"/.[!.]* "$work/state"/* 2>/dev/null || true
    sync
    local ticks_before ticks_after hash=-
    ticks_before=$(machine_ticks)
    /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>&1 || { cat "$work/out"; echo "bench: $label failed" >&2; exit 1; }
    ticks_after=$(machine_ticks)
    read -r secs rss_kb < "$work/time"
    cmp -s "$work/fs/src/$name" "$work/fs/dest/$name" || { echo "bench: $label: copy differs" >&2; exit 1; }
    # The tool records, per file, the upload time and what hashing added to it.
    if [ -f "$work/state/last-run.json" ]; then
        hash=$(python3 -c 'import json, sys; f = json.load(open(sys.argv[1]))["files"][0]; print("%.1f" % (100 * f["hash_seconds"] / (f["seconds"] - f["hash_seconds"])))' "$work/state/last-run.json")
    fi
    local cpu
    cpu=$(awk -v t=$((ticks_after - ticks_before)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz }')
    results+=("$label|$secs|$rss_kb|$cpu|$hash")
    printf '  %-52s %7.2f s\n' "$label" "$secs"
}

src_file=$work/fs/src/$name
target=$user@127.0.0.1:$work/fs/dest/
ssh -p "$port" "${ssh_opts[@]}" "$user@127.0.0.1" true # record the host key
ssh -p "$proxy_port" "${ssh_opts[@]}" "$user@127.0.0.1" true

echo "bench: loopback"
measure "scp (default cipher)" scp -q -P "$port" "${ssh_opts[@]}" "$src_file" "$target"
measure "scp -c aes128-gcm@openssh.com" \
    scp -q -P "$port" "${ssh_opts[@]}" -c aes128-gcm@openssh.com "$src_file" "$target"
measure "ssh host 'cat > file' (one raw channel)" \
    sh -c "ssh -p $port ${ssh_opts[*]} $user@127.0.0.1 'cat > $work/fs/dest/$name' < $work/fs/src/$name"
write_ini "$port" 1
measure "cvp-backup-copy --no-backup, streams = 1" "$bin" --ini "$work/backup.ini" --no-backup
write_ini "$port" 4
measure "cvp-backup-copy --no-backup, streams = 4" "$bin" --ini "$work/backup.ini" --no-backup

echo "bench: through the latency proxy (25 ms each way, 50 ms RTT)"
measure "WAN: scp -c aes128-gcm@openssh.com" \
    scp -q -P "$proxy_port" "${ssh_opts[@]}" -c aes128-gcm@openssh.com "$src_file" "$target"
write_ini "$proxy_port" 1
measure "WAN: cvp-backup-copy --no-backup, streams = 1" "$bin" --ini "$work/backup.ini" --no-backup
write_ini "$proxy_port" 4
measure "WAN: cvp-backup-copy --no-backup, streams = 4" "$bin" --ini "$work/backup.ini" --no-backup

# The table, with ratios of throughput to the same network's fastest scp.
lookup() { for r in "${results[@]}"; do [ "${r%%|*}" = "$1" ] && { echo "$r" | cut -d'|' -f2; return; }; done; }
lan_ref=$(lookup "scp -c aes128-gcm@openssh.com")
wan_ref=$(lookup "WAN: scp -c aes128-gcm@openssh.com")
table=$(
    echo "| what | seconds | MB/s | peak RSS (MB) | machine CPU (s) | sha256 adds | throughput vs scp aes128-gcm, same network |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for r in "${results[@]}"; do
        IFS='|' read -r label secs rss cpu hash <<<"$r"
        ref=$lan_ref; case $label in WAN:*) ref=$wan_ref ;; esac
        [ "$hash" = - ] || hash="$hash %"
        awk -v l="$label" -v s="$secs" -v r="$rss" -v c="$cpu" -v h="$hash" -v ref="$ref" -v size="$size" \
            'BEGIN { printf "| %s | %.2f | %.0f | %.1f | %s | %s | %.2fx |\n", l, s, size / 1e6 / s, r / 1024, c, h, ref / s }'
    done
)
machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r), $(ssh -V 2>&1)"
report=$(cat <<MD
# Benchmark results

Command: \`make bench\`$([ "${BENCH_BIG:-0}" = 1 ] && echo " with BENCH_BIG=1"), on $(date -u +%Y-%m-%d).
Machine: $machine.
One ${size_mib} MiB random file, source and destination on tmpfs; every tool authenticates with
the same ed25519 key against the same sshd on 127.0.0.1; each copy is compared byte for byte.
"WAN" rows go through \`benches/netem_proxy\` (the test harness's proxy), which delays every
chunk 25 ms each way (50 ms RTT) without limiting throughput.

$table

"machine CPU" is CPU time used on the whole machine during the copy (client, sshd, proxy):
on loopback the server shares the same $(nproc) cores, so a copy near $(nproc) x its seconds is
CPU-bound. "sha256 adds" is what the tool itself records in last-run.json: how long the
sending waited for the thread that hashes the file beside it, as a share of the rest of the
copy.
MD
)
echo
echo "$report"
results_file=RESULTS.md
[ "${BENCH_BIG:-0}" = 1 ] && results_file=RESULTS-4GiB.md
echo "$report" > "$here/$results_file"
echo
echo "bench: written to benches/$results_file"
