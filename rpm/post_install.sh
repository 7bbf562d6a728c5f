# cvp-backup-copy post-install (POSIX sh, base commands only). $1: 1 install, 2 upgrade.
conf=/etc/cvp-backup-copy
state=/var/lib/cvp-backup-copy

# %pre refused a host without user cvp.
owner=cvp
group=$(id -gn cvp)

mkdir -p "$conf/keys" "$state"
chmod 0700 "$conf/keys"
chmod 0750 "$state"
chown "$owner:$group" "$conf/keys" "$state"
if [ "$1" = 1 ] && [ -f "$conf/backup.ini" ]; then
    chown "$owner:$group" "$conf/backup.ini"
fi

# The package's key, created once, never replaced: always $conf/keys/backup.key, whatever
# the (cvp-owned) INI names, and written as the INI's owner.
/usr/bin/cvp-backup-copy keygen --key-only --key-file "$conf/keys/backup.key" --ini "$conf/backup.ini" ||
    echo "cvp-backup-copy: could not create the key file; run: cvp-backup-copy keygen --key-only"

if [ "$1" = 1 ]; then
    cat <<MSG

cvp-backup-copy is installed. It runs every night at 02:00 as user cvp
(/etc/cron.d/cvp-backup-copy) and logs to syslog. Next steps:
  1. cvp-backup-copy edit        set the backup server, user, destination and password
  2. cvp-backup-copy check       test every link: key, password, cvpi, server, host key,
                                 login, destination (one line each, with the fix)
  3. Remove root's stock backup line so two backups never run at once:
       crontab -e   (as root; delete the line: 0 2 * * * /cvpi/tools/backup.py --limit 5)
MSG
fi
# A line that runs it, not a commented-out one.
if grep -qs '^[[:space:]]*[^#[:space:]].*/cvpi/tools/backup.py' /var/spool/cron/root; then
    echo "cvp-backup-copy: WARNING: root's crontab still runs /cvpi/tools/backup.py; remove that line"
fi
exit 0
