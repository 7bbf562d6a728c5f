# cvp-backup-copy post-uninstall (POSIX sh, base commands only). $1: 0 erase, 1 upgrade.
conf=/etc/cvp-backup-copy
if [ "$1" = 0 ]; then
    # rpm renames an edited %config file to .rpmsave on erase: put the settings back.
    if [ -f "$conf/backup.ini.rpmsave" ] && [ ! -e "$conf/backup.ini" ]; then
        mv "$conf/backup.ini.rpmsave" "$conf/backup.ini"
    fi
    echo "cvp-backup-copy removed (binary and cron job). Kept, delete them by hand if no longer needed:"
    for kept in "$conf/backup.ini" "$conf/keys" /var/lib/cvp-backup-copy; do
        [ -e "$kept" ] && echo "  $kept"
    done
fi
exit 0
