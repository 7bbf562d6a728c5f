# cvp-backup-copy pre-install (POSIX sh, base commands only). $1: 1 install, 2 upgrade.
# The nightly job runs as cvp and `cvpi backup` must run as cvp: without that account this is
# not a CloudVision Portal node, and the package's files would belong to no one who can use
# them. Refuse before anything is installed.
if ! id cvp >/dev/null 2>&1; then
    echo "cvp-backup-copy: not installed: this host has no user cvp. It is made for CloudVision Portal nodes, where the nightly backup runs as cvp (cvpi backup must); create the account first if this is one." >&2
    exit 1
fi
exit 0
