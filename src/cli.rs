//! The command line (clap). `run` is the default; later subcommands slot in beside it.

use crate::config::{DEFAULT_INI, INI_ENV};
use crate::exit_codes::{CHECK_EXIT_CODES_HELP, EXIT_CODES_HELP};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "cvp-backup-copy",
    version,
    about = "Back up CloudVision Portal and copy a complete, verified restore set to a backup server",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// The configuration file (before or after the subcommand). Paths given on the command
    /// line are relative to the current folder; paths inside the INI, to the INI's folder
    #[arg(long, global = true, value_name = "FILE", env = INI_ENV, default_value = DEFAULT_INI)]
    pub ini: PathBuf,

    #[command(flatten)]
    pub run: RunArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Back up CVP and copy the restore set (the default when no subcommand is given)
    #[command(after_help = EXIT_CODES_HELP)]
    Run(RunArgs),

    /// Generate a new key and encrypt the password with it (replaces newKeyGen.py)
    #[command(after_help = KEYGEN_HELP)]
    Keygen(KeygenArgs),

    /// Show and change the settings, or set them from a script (replaces iniEditor.py)
    #[command(after_help = EDIT_HELP)]
    Edit(EditArgs),

    /// Test every link of the nightly chain and say how to fix a broken one
    #[command(after_help = CHECK_EXIT_CODES_HELP)]
    Check,

    /// The backup sets, newest first, and where each file is (local, remote, both)
    List(ListArgs),

    /// Download a restore set from the backup server, verified, and print the restore command
    #[command(after_help = FETCH_HELP)]
    Fetch(FetchArgs),

    /// How the last run went; exits non-zero when it failed or is too old (for monitoring)
    #[command(after_help = EXIT_CODES_HELP)]
    Status(StatusArgs),

    /// Check that a set on the backup server is still whole; with --read-data read every
    /// byte back (run weekly by the RPM's cron.d)
    #[command(after_help = VERIFY_HELP)]
    Verify(VerifyArgs),

    /// On the backup server: keep the newest N sets in DIR, for destinations the node may
    /// not prune (append_only); run by the server's cron as the account that owns DIR
    #[command(name = "prune-dir", after_help = PRUNE_DIR_HELP)]
    PruneDir(PruneDirArgs),

    /// Write the man page and bash completion into DIR (used to build the RPM)
    #[command(hide = true)]
    GenerateAssets {
        #[arg(value_name = "DIR")]
        out: PathBuf,
    },
}

/// An age as the help shows them (26h, 90m, 2d; also 30s, 1h30m), with a message that names
/// those units when one is missing.
pub fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{text}` has no unit: give {text}h (hours), {text}m (minutes), {text}d (days) or \
             {text}s (seconds)"
        ));
    }
    humantime::parse_duration(text).map_err(|_| {
        format!("`{text}` is not an age: give a number and a unit, such as 26h, 90m or 2d")
    })
}

/// The man page and bash completion, generated from this definition so they never drift.
pub fn generate_assets(out: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(out)?;
    let command = Cli::command();
    let mut man = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut man)?;
    std::fs::write(out.join("cvp-backup-copy.1"), man)?;
    let mut completion = Vec::new();
    clap_complete::generate(
        clap_complete::Shell::Bash,
        &mut command.clone(),
        "cvp-backup-copy",
        &mut completion,
    );
    std::fs::write(out.join("cvp-backup-copy.bash"), completion)
}

const KEYGEN_HELP: &str = "\
The key goes to --key-file, else the INI's keyFile, else /etc/cvp-backup-copy/keys/backup.key,
with mode 0600; an existing key is kept as NAME.bak-<timestamp>. The password is read twice
without echo, or as one line from standard input with --password-stdin.
Paths: --ini and --key-file are relative to the current folder; paths inside the INI
(keyFile, ...) are relative to the INI's folder. A relative --key-file is stored absolute.";

const EDIT_HELP: &str = "\
On a terminal: shows the settings (password masked) and asks for each; the password changes
only after the current one is typed. From a script:
  cvp-backup-copy edit --set Server_Settings.server=backup.example.net --set Backup_Settings.limit=7
  printf '%s\\n' \"$PASSWORD\" | cvp-backup-copy edit --password-stdin
An invalid value changes nothing and exits 3. A missing --ini FILE is offered to be created
from the default settings.
Paths: --ini is relative to the current folder; paths inside the INI (keyFile, known_hosts,
state_dir, ...) and path values given to --set are relative to the INI's folder.";

const FETCH_HELP: &str = "\
Downloads the data file, the EOS images file it needs and its log into DIR (default: the INI's
backup_dir) as temporary files, checks each against its NAME.sha256 on the server, and only
then gives it its name. Prints the `cvpi restore cvp ...` command to run. Exit codes as for a
run; 5: a file is missing, corrupted or does not verify.";

const VERIFY_HELP: &str = "\
Without --read-data: every member of the set is on the server with its NAME.sha256, which says
what the set's manifest says. With it: every member is read back (nothing is written to disk),
its sha256 compared, and each .tgz inflated and its tar walked to its end; an encrypted member
is decrypted and authenticated with --identity (without one, its ciphertext's sha256 only).
Takes the run's lock. The result goes to the state record: status, metrics, status --nagios.
Exit codes: 0 every set whole; 5 a member damaged or missing (named); 4 a destination
unreachable; 6 a run or fetch holds the lock; 2 usage; 3 configuration.";

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The destination to verify: `main` or NAME (default: every destination)
    #[arg(long, value_name = "NAME")]
    pub destination: Option<String>,

    /// `latest` (the newest set with a manifest), `all`, a timestamp or a data file name
    #[arg(long, value_name = "SET", default_value = "latest")]
    pub set: String,

    /// Read every byte back and check it (sha256, archive structure, decryption)
    #[arg(long)]
    pub read_data: bool,

    /// Decrypt encrypted members with this age identity file or SSH private key (repeat
    /// for several)
    #[arg(long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,

    /// The destination to list: `main` ([Server_Settings], the default) or NAME of a
    /// [Destination NAME] section
    #[arg(long, value_name = "NAME")]
    pub destination: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// `latest`, a timestamp (20240101020010) or a data file name
    #[arg(value_name = "TIMESTAMP", default_value = "latest")]
    pub wanted: String,

    /// Where to put the files (default: the INI's backup_dir)
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,

    /// Decrypt an encrypted set (`encrypt_to`) with this age identity file or SSH private
    /// key (repeat for several)
    #[arg(long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,

    /// Accept members stored unencrypted although the set is fetched with --identity or the
    /// INI sets encrypt_to (sets from before encryption was turned on)
    #[arg(long)]
    pub allow_plain: bool,

    /// Fetch from this destination (`main` or NAME); default: the first, in the INI's order,
    /// that holds a verified copy of the set
    #[arg(long, value_name = "NAME")]
    pub destination: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct PruneDirArgs {
    /// The folder the node's sets are in (its `destination` on this server)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,

    /// How many sets to keep (the newest complete set is always kept as well)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: u32,

    /// Never remove a file written or renamed less than DAYS days ago, whatever its name
    /// says: names planted with the node's credentials cannot take a recent copy
    #[arg(long, value_name = "DAYS", default_value_t = 7, value_parser = clap::value_parser!(u32).range(0..=3650))]
    pub min_age: u32,

    /// Print what would be removed, remove nothing
    #[arg(long)]
    pub dry_run: bool,
}

const PRUNE_DIR_HELP: &str = "\
The rules of remote_limit on the node: sets by their manifests (cvp.<ts>.set.sha256), the
images file a kept set needs, CVP names only (nothing else in DIR is touched). Also kept: the
complete set whose manifest arrived last, and anything written or renamed within --min-age
days (default 7), with what it needs: whoever holds the node's password can write names here,
but cannot make prune-dir remove a recent copy. Checksum files without their file, partial
uploads and test files go once older than --min-age. The INI is not read: the same static
binary runs on any x86-64 Linux.

Example, in the backup account's crontab on the server:
  30 5 * * * /usr/local/bin/cvp-backup-copy prune-dir /srv/backups/cvp1 --keep 14

Exit codes: 0 done, 2 usage, 3 DIR cannot be opened, 5 DIR cannot be read or a file could not
be removed.";

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Print JSON (the verdict and the last run's record)
    #[arg(long)]
    pub json: bool,

    /// Older than this is a problem: 26h, 90m, 2d
    #[arg(long, value_name = "AGE", default_value = "26h", value_parser = parse_age)]
    pub max_age: std::time::Duration,

    /// Read the record from this folder, without the INI (a monitoring user may not read
    /// it); default: the INI's state_dir, or /var/lib/cvp-backup-copy
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// One line in the monitoring-plugins format (Nagios, Icinga, NRPE, Zabbix); exit 0 OK,
    /// 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    #[arg(long, conflicts_with = "json")]
    pub nagios: bool,

    /// With --nagios: a last good copy older than this is WARNING
    #[arg(long, value_name = "AGE", default_value = "26h", value_parser = parse_age)]
    pub warning: std::time::Duration,

    /// With --nagios: a last good copy older than this is CRITICAL
    #[arg(long, value_name = "AGE", default_value = "50h", value_parser = parse_age)]
    pub critical: std::time::Duration,

    /// With --nagios: a last read-back (verify --read-data) older than this, or a failed
    /// verify, is WARNING
    #[arg(long, value_name = "AGE", default_value = "8d", value_parser = parse_age)]
    pub read_back_age: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Where to write the key (default: the INI's keyFile)
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,

    /// Read the password as one line from standard input
    #[arg(long)]
    pub password_stdin: bool,

    /// Do not ask for confirmation
    #[arg(long)]
    pub yes: bool,

    /// Only create the key file if it is missing; touch nothing else
    #[arg(long)]
    pub key_only: bool,

    /// Instead: write a new age identity to FILE (0600, never over an existing file) for
    /// `encrypt_to`, and print its recipient line. Keep it off this node
    #[arg(long, value_name = "FILE", conflicts_with_all = ["key_file", "password_stdin", "key_only"])]
    pub age_identity: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct EditArgs {
    /// Set an option without questions: Section.option=value (repeatable)
    #[arg(long = "set", value_name = "SECTION.OPTION=VALUE")]
    pub set: Vec<String>,

    /// Set the password from one line of standard input
    #[arg(long)]
    pub password_stdin: bool,

    /// Edit [Destination NAME] (made if missing) instead of [Server_Settings]: its server,
    /// user, destination and password (for an S3 bucket: access key ID and secret key)
    #[arg(long, value_name = "NAME")]
    pub destination: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct RunArgs {
    /// Local data backups to keep (the INI's `limit` wins when set; default 5)
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,

    /// Skip the CVP backup; bring the remote up to date with the newest local restore set
    #[arg(long)]
    pub no_backup: bool,

    /// Print what would be backed up, copied and deleted; change nothing anywhere
    #[arg(long)]
    pub dry_run: bool,

    /// Log every step to stderr too, with debug detail
    #[arg(short, long)]
    pub verbose: bool,
}

impl Cli {
    /// The command line, with the one rule clap is not told here: the run's own options
    /// (`--limit`, `--no-backup`, `--dry-run`, `-v`) come without a subcommand or after
    /// `run`, never before another subcommand (`--ini` may go anywhere).
    pub fn parse_args() -> Result<Cli, clap::Error> {
        Cli::parse_from_args(std::env::args_os())
    }

    pub fn parse_from_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::CommandFactory;
        let cli = Cli::try_parse_from(args)?;
        if cli.command.is_some() && cli.run != RunArgs::default() {
            return Err(Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "--limit, --no-backup, --dry-run and -v belong to the run: give them without a \
                 subcommand or after `run`",
            ));
        }
        Ok(cli)
    }

    /// Whether the command only reads and prints: `check`, `list`, `status`, `--dry-run`.
    pub fn only_prints(&self) -> bool {
        match &self.command {
            Some(Command::Check | Command::List(_) | Command::Status(_)) => true,
            Some(Command::Run(args)) => args.dry_run,
            None => self.run.dry_run,
            Some(_) => false,
        }
    }

    /// The job's arguments, when the job (not another subcommand) is what was asked for.
    pub fn run_args(&self) -> Option<&RunArgs> {
        match &self.command {
            Some(Command::Run(args)) => Some(args),
            None => Some(&self.run),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_is_the_default_and_a_subcommand() {
        let bare = Cli::try_parse_from(["cvp-backup-copy", "--ini", "a.ini", "--no-backup"])
            .expect("parses");
        assert_eq!(bare.ini, PathBuf::from("a.ini"));
        let args = bare.run_args().expect("run");
        assert!(args.no_backup);
        let sub = Cli::try_parse_from(["cvp-backup-copy", "run", "--dry-run", "--limit", "3"])
            .expect("parses");
        let args = sub.run_args().expect("run");
        assert!(args.dry_run);
        assert_eq!(args.limit, Some(3));
        let keygen =
            Cli::try_parse_from(["cvp-backup-copy", "keygen", "--key-only"]).expect("keygen");
        assert!(keygen.run_args().is_none());
        let edit = Cli::try_parse_from([
            "cvp-backup-copy",
            "edit",
            "--set",
            "a.b=c",
            "--set",
            "d.e=f",
        ])
        .expect("edit");
        assert!(
            matches!(edit.command, Some(Command::Edit(EditArgs { ref set, .. })) if set.len() == 2)
        );
    }

    #[test]
    fn operator_commands_parse() {
        let fetch =
            Cli::try_parse_from(["cvp-backup-copy", "fetch", "--to", "/tmp/x"]).expect("fetch");
        assert!(matches!(
            fetch.command,
            Some(Command::Fetch(FetchArgs { ref wanted, to: Some(_), .. })) if wanted == "latest"
        ));
        let status =
            Cli::try_parse_from(["cvp-backup-copy", "status", "--max-age", "2d"]).expect("status");
        assert!(matches!(
            status.command,
            Some(Command::Status(StatusArgs { max_age, .. })) if max_age.as_secs() == 172_800
        ));
        assert!(Cli::try_parse_from(["cvp-backup-copy", "status", "--max-age", "soon"]).is_err());
        let list = Cli::try_parse_from(["cvp-backup-copy", "list", "--json"]).expect("list");
        assert!(matches!(
            list.command,
            Some(Command::List(ListArgs { json: true, .. }))
        ));
    }

    #[test]
    fn the_ini_goes_before_or_after_the_subcommand() {
        for argv in [
            &["cvp-backup-copy", "--ini", "a.ini", "check"][..],
            &["cvp-backup-copy", "check", "--ini", "a.ini"],
            &["cvp-backup-copy", "--ini=a.ini", "status", "--json"],
            &["cvp-backup-copy", "--ini", "a.ini", "run", "--dry-run"],
            &["cvp-backup-copy", "run", "--dry-run", "--ini", "a.ini"],
            &["cvp-backup-copy", "--ini", "a.ini", "--dry-run"],
        ] {
            let cli = Cli::parse_from_args(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert_eq!(cli.ini, PathBuf::from("a.ini"), "{argv:?}");
        }
        for argv in [
            &["cvp-backup-copy", "--dry-run", "check"][..],
            &["cvp-backup-copy", "--limit", "3", "list"],
            &["cvp-backup-copy", "-v", "run"],
        ] {
            let err = Cli::parse_from_args(argv).expect_err("refused");
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{argv:?}"
            );
        }
    }

    #[test]
    fn ages_take_the_units_the_help_shows() {
        let table = [
            ("26h", Some(26 * 3600)),
            ("90m", Some(90 * 60)),
            ("2d", Some(2 * 86_400)),
            ("30s", Some(30)),
            ("1h30m", Some(5400)),
            ("26", None),
            ("soon", None),
            ("", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_age(text).ok().map(|d| d.as_secs()), want, "{text:?}");
        }
        assert!(parse_age("26").unwrap_err().contains("give 26h (hours)"));
        let err = Cli::parse_from_args(["cvp-backup-copy", "status", "--max-age", "26"])
            .expect_err("refused")
            .to_string();
        assert!(err.contains("`26` has no unit: give 26h"), "{err}");
    }

    #[test]
    fn check_help_lists_only_what_check_returns() {
        let mut command = Cli::command();
        let help = command
            .find_subcommand_mut("check")
            .expect("check")
            .render_long_help()
            .to_string();
        assert!(help.contains("1  too little free space"), "{help}");
        for code in ["6  ", "7  "] {
            assert!(!help.contains(code), "{code} in check's help: {help}");
        }
    }

    #[test]
    fn help_lists_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("6  another run holds the lock"), "{help}");
    }
}
