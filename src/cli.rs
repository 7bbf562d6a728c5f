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
    pub fn run_args(&self) -> &RunArgs {
        match &self.command {
            Some(Command::Run(args)) => args,
            None => &self.run,
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
        assert_eq!(bare.run_args().ini, PathBuf::from("a.ini"));
        assert!(bare.run_args().no_backup);
        let sub = Cli::try_parse_from(["cvp-backup-copy", "run", "--dry-run", "--limit", "3"])
            .expect("parses");
        assert!(sub.run_args().dry_run);
        assert_eq!(sub.run_args().limit, Some(3));
    }

    #[test]
    fn help_lists_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("6  another run holds the lock"), "{help}");
    }
}
