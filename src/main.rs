//! cvp-backup-copy: back up CloudVision Portal and copy a verified restore set off the node.

use clap::Parser;
use cvp_backup_copy::commands::{check, fetch, list, status};
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
    // The operator's commands print to the terminal; warnings go to stderr (and syslog).
    logging::init(false);
    let success = |()| ExitCode::Success;
    let result = match cli.command {
        Some(cli::Command::Check(args)) => Ok(check::check(&check::CheckOptions { ini: args.ini })),
        Some(cli::Command::List(args)) => list::list(&list::ListOptions {
            ini: args.ini,
            json: args.json,
        })
        .map(success),
        Some(cli::Command::Fetch(args)) => {
            signals::install();
            fetch::fetch(&fetch::FetchOptions {
                ini: args.ini,
                wanted: args.wanted,
                to: args.to,
            })
            .map(success)
        }
        // The verdict is printed; the exit code tells monitoring whether to worry.
        Some(cli::Command::Status(args)) => status::status(&status::StatusOptions {
            ini: args.ini,
            json: args.json,
            max_age: args.max_age,
            state_dir: args.state_dir,
        }),
        Some(cli::Command::Keygen(args)) => keygen::keygen(&keygen::KeygenOptions {
            ini: args.ini,
            key_file: args.key_file,
            password_stdin: args.password_stdin,
            yes: args.yes,
            key_only: args.key_only,
        })
        .map(success),
        Some(cli::Command::Edit(args)) => edit::edit(&edit::EditOptions {
            ini: args.ini,
            set: args.set,
            password_stdin: args.password_stdin,
        })
        .map(success),
        Some(cli::Command::GenerateAssets { out }) => {
            cli::generate_assets(&out).map(success).map_err(|err| {
                error::Error::new(
                    ExitCode::Usage,
                    format!("cannot write to {}: {err}", out.display()),
                )
            })
        }
        Some(cli::Command::Run(_)) | None => Ok(ExitCode::Success),
    };
    let code = match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("cvp-backup-copy: error: {err}");
            err.code
        }
    };
    std::process::ExitCode::from(code.code() as u8)
}
