//! cvp-backup-copy: back up CloudVision Portal and copy a verified restore set off the node.

use cvp_backup_copy::cli::KeygenArgs;
use cvp_backup_copy::commands::{check, fetch, list, prune_dir, status, verify};
use cvp_backup_copy::exit_codes::ExitCode;
use cvp_backup_copy::seal::open::Identities;
use cvp_backup_copy::{cli, edit, error, keygen, logging, privilege, run, signals, timeline};
use std::path::{Path, PathBuf};

/// Paths given on the command line, made absolute before a root command becomes the INI's
/// owner (whose working directory may not be this one).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// As root, act as the INI's owner (see `privilege`); a refused INI ends the command.
fn as_ini_owner(ini: &Path) -> Result<(), std::process::ExitCode> {
    privilege::act_as_ini_owner(ini).map_err(|err| {
        log::error!("{err}");
        std::process::ExitCode::from(err.code.code() as u8)
    })
}

/// `--identity` files read as the one who runs the command (`fetch`, `verify`), before it
/// acts as the INI's owner: the identity is theirs (kept off the node, brought for the
/// restore), not the cvp account's. A refused identity or INI ends the command.
fn identities_then_ini_owner(
    paths: &[PathBuf],
    ini: &Path,
) -> Result<Option<Identities>, std::process::ExitCode> {
    let paths: Vec<PathBuf> = paths.iter().map(|p| absolute(p)).collect();
    let identities = (!paths.is_empty())
        .then(|| Identities::load(&paths))
        .transpose()
        .map_err(|why| {
            eprintln!("cvp-backup-copy: error: {why}");
            std::process::ExitCode::from(ExitCode::Config.code() as u8)
        })?;
    as_ini_owner(ini)?;
    Ok(identities)
}

fn main() -> std::process::ExitCode {
    let cli = match cli::Cli::parse_args() {
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
    timeline::start();
    privilege::no_core_dumps();
    if cli.only_prints() {
        // A command that only reads and prints ends quietly when its reader goes away
        // (`check | head -1`), as `ls` does; the job, fetch, edit and keygen never die of it.
        // SAFETY: restoring a signal's default action has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if let Some(args) = cli.run_args() {
        logging::init(args.verbose);
        signals::install();
        let ini = absolute(&cli.ini);
        if let Err(code) = as_ini_owner(&ini) {
            return code;
        }
        let code = run::run_job(&run::RunOptions {
            ini,
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
        Some(cli::Command::Check) => {
            // Root's crontab is read while we may still be root.
            let root_crontab = check::read_root_crontab();
            let ini = absolute(&cli.ini);
            if let Err(code) = as_ini_owner(&ini) {
                return code;
            }
            Ok(check::check(&check::CheckOptions { ini, root_crontab }))
        }
        Some(cli::Command::List(args)) => {
            let ini = absolute(&cli.ini);
            if let Err(code) = as_ini_owner(&ini) {
                return code;
            }
            list::list(&list::ListOptions {
                ini,
                json: args.json,
                destination: args.destination,
            })
            .map(success)
        }
        Some(cli::Command::Fetch(args)) => {
            signals::install();
            let ini = absolute(&cli.ini);
            let to = args.to.as_deref().map(absolute);
            match identities_then_ini_owner(&args.identity, &ini) {
                Err(code) => return code,
                Ok(identities) => fetch::fetch(&fetch::FetchOptions {
                    ini,
                    wanted: args.wanted,
                    to,
                    identities,
                    allow_plain: args.allow_plain,
                    destination: args.destination,
                })
                .map(success),
            }
        }
        Some(cli::Command::Verify(args)) => {
            signals::install();
            let ini = absolute(&cli.ini);
            match identities_then_ini_owner(&args.identity, &ini) {
                Err(code) => return code,
                Ok(identities) => verify::verify(&verify::VerifyOptions {
                    ini,
                    destination: args.destination,
                    set: args.set,
                    read_data: args.read_data,
                    identities,
                }),
            }
        }
        // The verdict is printed; the exit code tells monitoring whether to worry.
        Some(cli::Command::Status(args)) => {
            let ini = absolute(&cli.ini);
            // Only the INI's state_dir is read from it, and as its owner.
            if args.state_dir.is_none() && ini.is_file() {
                if let Err(code) = as_ini_owner(&ini) {
                    return code;
                }
            }
            let options = status::StatusOptions {
                ini,
                json: args.json,
                max_age: args.max_age,
                state_dir: args.state_dir,
            };
            if args.nagios {
                // The plugin format's own exit codes, not the tool's.
                let (code, line) = status::nagios(
                    &options,
                    status::Limits {
                        warning: args.warning,
                        critical: args.critical,
                        read_back: args.read_back_age,
                    },
                );
                println!("{}", error::printable(&line));
                return std::process::ExitCode::from(code as u8);
            }
            status::status(&options)
        }
        Some(cli::Command::Keygen(KeygenArgs {
            age_identity: Some(path),
            ..
        })) => match cvp_backup_copy::seal::identity::write_new(&path) {
            Ok(recipient) => {
                println!("encrypt_to = {recipient}");
                eprintln!(
                    "wrote a new age identity to {}. Put the line above in [Server_Settings] \
                     (or add the recipient to encrypt_to). Keep the identity OFF this node, in \
                     at least two safe places: losing it loses every backup encrypted to it; \
                     `fetch --identity {}` restores with it.",
                    path.display(),
                    path.display()
                );
                Ok(ExitCode::Success)
            }
            Err(why) => Err(error::Error::new(ExitCode::Usage, why)),
        },
        Some(cli::Command::Keygen(args)) => keygen::keygen(&keygen::KeygenOptions {
            ini: cli.ini.clone(),
            key_file: args.key_file.as_deref().map(absolute),
            password_stdin: args.password_stdin,
            yes: args.yes,
            key_only: args.key_only,
        })
        .map(success),
        Some(cli::Command::Edit(args)) => edit::edit(&edit::EditOptions {
            ini: cli.ini.clone(),
            set: args.set,
            password_stdin: args.password_stdin,
            destination: args.destination,
        })
        .map(success),
        Some(cli::Command::PruneDir(args)) => prune_dir::prune_dir(&prune_dir::PruneDirOptions {
            dir: args.dir,
            keep: args.keep,
            min_age: std::time::Duration::from_secs(u64::from(args.min_age) * 86_400),
            dry_run: args.dry_run,
        }),
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
