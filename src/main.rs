//! cvp-backup-copy: back up CloudVision Portal and copy a verified restore set off the node.

mod backup;
mod cli;
mod config;
mod error;
mod exit_codes;
mod lock;
mod logging;
mod names;
mod plan;
mod remote;
mod restore_set;
mod retention;
mod run;
mod secret;
mod state;
mod transfer;
mod users;

use clap::Parser;
use exit_codes::ExitCode;

fn main() -> std::process::ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            let code = if err.use_stderr() {
                ExitCode::Usage
            } else {
                ExitCode::Success
            };
            return std::process::ExitCode::from(code.code() as u8);
        }
    };
    let args = cli.run_args().clone();
    logging::init(args.verbose);
    let code = run::run_job(&run::RunOptions {
        ini: args.ini,
        limit: args.limit,
        no_backup: args.no_backup,
        dry_run: args.dry_run,
    });
    std::process::ExitCode::from(code.code() as u8)
}
