//! The command line (clap). `run` is the default; later subcommands slot in beside it.

use crate::config::{DEFAULT_INI, INI_ENV};
use crate::exit_codes::EXIT_CODES_HELP;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "cvp-backup-copy",
    version,
    about = "Back up CloudVision Portal and copy a complete, verified restore set to a backup server",
    after_help = EXIT_CODES_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
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
    #[command(after_help = EXIT_CODES_HELP)]
    Check(IniArgs),

    /// The backup sets, newest first, and where each file is (local, remote, both)
    List(ListArgs),

    /// Download a restore set from the backup server, verified, and print the restore command
    #[command(after_help = FETCH_HELP)]
    Fetch(FetchArgs),

    /// How the last run went; exits non-zero when it failed or is too old (for monitoring)
    #[command(after_help = EXIT_CODES_HELP)]
    Status(StatusArgs),

    /// Write the man page and bash completion into DIR (used to build the RPM)
    #[command(hide = true)]
    GenerateAssets {
        #[arg(value_name = "DIR")]
        out: PathBuf,
    },
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
without echo, or as one line from standard input with --password-stdin.";

const EDIT_HELP: &str = "\
On a terminal: shows the settings (password masked) and asks for each; the password changes
only after the current one is typed. From a script:
  cvp-backup-copy edit --set Server_Settings.server=backup.example.net --set Backup_Settings.limit=7
  printf '%s\\n' \"$PASSWORD\" | cvp-backup-copy edit --password-stdin
An invalid value changes nothing and exits 3.";

const FETCH_HELP: &str = "\
Downloads the data file, the EOS images file it needs and its log into DIR (default: the INI's
backup_dir) as temporary files, checks each against its NAME.sha256 on the server, and only
then gives it its name. Prints the `cvpi restore cvp ...` command to run. Exit codes as for a
run; 5: a file is missing, corrupted or does not verify.";

#[derive(Debug, Clone, Args)]
pub struct IniArgs {
    /// The configuration file
    #[arg(long, value_name = "FILE", env = INI_ENV, default_value = DEFAULT_INI)]
    pub ini: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// The configuration file
    #[arg(long, value_name = "FILE", env = INI_ENV, default_value = DEFAULT_INI)]
    pub ini: PathBuf,

    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// The configuration file
    #[arg(long, value_name = "FILE", env = INI_ENV, default_value = DEFAULT_INI)]
    pub ini: PathBuf,

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
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The configuration file
    #[arg(long, value_name = "FILE", env = INI_ENV, default_value = DEFAULT_INI)]
    pub ini: PathBuf,

    /// Print JSON (the verdict and the last run's record)
    #[arg(long)]
    pub json: bool,

    /// Older than this is a problem: 26h, 90m, 2d
    #[arg(long, value_name = "AGE", default_value = "26h", value_parser = humantime::parse_duration)]
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
    #[arg(long, value_name = "AGE", default_value = "26h", value_parser = humantime::parse_duration)]
    pub warning: std::time::Duration,

    /// With --nagios: a last good copy older than this is CRITICAL
    #[arg(long, value_name = "AGE", default_value = "50h", value_parser = humantime::parse_duration)]
    pub critical: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// The configuration file
    #[arg(long, value_name = "FILE", env = INI_ENV, default_value = DEFAULT_INI)]
    pub ini: PathBuf,

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
    /// The configuration file
    #[arg(long, value_name = "FILE", env = INI_ENV, default_value = DEFAULT_INI)]
    pub ini: PathBuf,

    /// Set an option without questions: Section.option=value (repeatable)
    #[arg(long = "set", value_name = "SECTION.OPTION=VALUE")]
    pub set: Vec<String>,

    /// Set the password from one line of standard input
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The configuration file
    #[arg(long, value_name = "FILE", env = INI_ENV, default_value = DEFAULT_INI)]
    pub ini: PathBuf,

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
        let args = bare.run_args().expect("run");
        assert_eq!(args.ini, PathBuf::from("a.ini"));
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
    fn help_lists_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("6  another run holds the lock"), "{help}");
    }
}
