# Sourced by tests/demo.sh and benches/bench.sh: a throwaway OpenSSH sshd on 127.0.0.1.
# (The Rust tests have their own harness in tests/common.)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() { # PORT
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "no server on 127.0.0.1:$1" >&2
    return 1
}

# start_sshd DIR USER password|key: a host key and config in DIR, sshd started in the
# background; sets sshd_port and sshd_pid. With "key", DIR/authorized/USER lists the keys.
start_sshd() {
    local dir=$1 user=$2 auth=$3 password_auth=no
    [ "$auth" = password ] && password_auth=yes
    mkdir -p /run/sshd "$dir/authorized"
    ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
    sshd_port=$(free_port)
    cat > "$dir/sshd_config" <<CONF
Port $sshd_port
ListenAddress 127.0.0.1
HostKey $dir/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized/%u
PasswordAuthentication $password_auth
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin no
AllowUsers $user
Subsystem sftp internal-sftp
CONF
    /usr/sbin/sshd -D -e -f "$dir/sshd_config" 2>"$dir/sshd.log" &
    sshd_pid=$!
    wait_port "$sshd_port"
}
