//! cvp-backup-copy: back up CloudVision Portal and copy a verified restore set off the node.

use clap::Parser;
use cvp_backup_copy::exit_codes::ExitCode;
use cvp_backup_copy::{cli, edit, error, keygen, logging, run, signals};

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
    if let Some(args) = cli.run_args() {
        logging::init(args.verbose);
        signals::install();
        let code = run::run_job(&run::RunOptions {
            ini: args.ini.clone(),
            limit: args.limit,
            no_backup: args.no_backup,
            dry_run: args.dry_run,
        });
        return std::process::ExitCode::from(code.code() as u8);
    }
    let result = match cli.command {
        Some(cli::Command::Keygen(args)) => keygen::keygen(&keygen::KeygenOptions {
            ini: args.ini,
            key_file: args.key_file,
            password_stdin: args.password_stdin,
            yes: args.yes,
            key_only: args.key_only,
        }),
        Some(cli::Command::Edit(args)) => edit::edit(&edit::EditOptions {
            ini: args.ini,
            set: args.set,
            password_stdin: args.password_stdin,
        }),
        Some(cli::Command::GenerateAssets { out }) => cli::generate_assets(&out).map_err(|err| {
            error::Error::new(
                ExitCode::Usage,
                format!("cannot write to {}: {err}", out.display()),
            )
        }),
        Some(cli::Command::Run(_)) | None => Ok(()),
    };
    let code = match result {
        Ok(()) => ExitCode::Success,
        Err(err) => {
            eprintln!("cvp-backup-copy: error: {err}");
            err.code
        }
    };
    std::process::ExitCode::from(code.code() as u8)
}
