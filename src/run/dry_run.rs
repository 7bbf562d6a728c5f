//! `--dry-run`: the night's decisions, taken read-only.

use super::*;

/// The same decisions as a run, taken read-only: no backup, no lock, no host key recorded,
/// no directory created, nothing uploaded or deleted, no record.
pub(super) fn dry_run(config: &Config, options: &RunOptions, limit: u32) -> Result<Plan> {
    let now = Stamp::now();
    let mut plan = Plan {
        backup: (!options.no_backup)
            .then(|| backup::describe(&config.backup.command, &config.backup.user)),
        destination: destination_label(config),
        ..Plan::default()
    };
    let mut history = state::peek_history(&config.backup.state_dir);
    fill_last_verified(&mut history, &config.backup.state_dir, config);
    let mut excluded = history.failed();
    let mut local = list_local(config)?;
    if let Some(before) = &history.backup_started {
        // What a run that died during its backup left: a real run sets it aside first.
        let (leftovers, _) = appeared_during(before, history.backup_window.as_ref(), &local);
        for name in leftovers {
            plan.notes.push(format!(
                "{name} appeared during a backup the job did not see finish: a real run sets it \
                 aside as failed"
            ));
            excluded.push(name);
        }
    }
    local.retain(|f| !excluded.contains(&f.name));
    let running = match concurrent::running(&config.backup.command, &config.backup.user, None) {
        Ok(running) if running.is_empty() => None,
        Ok(running) => Some(concurrent::describe(&running)),
        Err(why) => Some(format!("cannot tell whether one is: {why}")),
    };
    if let Some(running) = running {
        plan.notes.push(format!(
            "a CVP backup is running now ({running}): a real run refuses to start beside it \
             (exit 6)"
        ));
    }
    if let (false, Some(free)) = (
        options.no_backup,
        space::free_bytes(&config.backup.backup_dir),
    ) {
        let last_set = newest_set_bytes(&local, &history, now);
        let room = space::assess(config.backup.min_free_space, free, last_set);
        if !room.enough() {
            plan.notes.push(format!(
                "not enough free space in {} ({}): a real run does not start the backup (exit \
                 1) and copies the previous set",
                config.backup.backup_dir.display(),
                room.describe()
            ));
        }
    }
    let names: Vec<BackupName> = local.iter().map(|f| f.name).collect();
    let mut known = history.known();
    let selection = restore_set::select(
        &names,
        Tonight::Skipped,
        history.last_good().as_ref(),
        &known,
        now,
    );
    known.extend(selection.set.clone());
    let protect = selection.protect.clone();
    plan.local_retention = Some(retention::apply_policy(
        &names,
        Policy {
            keep_data: limit as usize,
            also_keep: last_verified_everywhere(config, &history),
        },
        &protect,
        &known,
        now,
    ));
    for name in names.iter().filter(|n| sets::is_future(n.stamp, now)) {
        plan.notes.push(format!(
            "{name} is stamped in the future: it never counts as the newest set"
        ));
    }
    for server in config.destinations() {
        let part = plan_destination(config, server, &history, &local, &selection, &known, now)
            .unwrap_or_else(|err| {
                log::error!("{err}");
                Plan {
                    destination: server.label(),
                    notes: vec![format!("cannot plan this destination: {err}")],
                    code: err.code,
                    ..Plan::default()
                }
            });
        if server.name == config::MAIN {
            plan.destination = part.destination;
            plan.copies = part.copies;
            plan.remote_retention = part.remote_retention;
            plan.notes.extend(part.notes);
            plan.code = plan.code.most_severe(part.code);
        } else {
            plan.code = plan.code.most_severe(part.code);
            plan.others.push((server.name.clone(), part));
        }
    }
    Ok(plan)
}

/// One destination's part of the dry run: what it would be sent, and what pruned there.
pub(super) fn plan_destination(
    config: &Config,
    server: &ServerConfig,
    history: &History,
    local: &[LocalFile],
    selection: &Selection,
    known: &[RestoreSet],
    now: Stamp,
) -> Result<Plan> {
    let mut plan = Plan {
        destination: server.label(),
        ..Plan::default()
    };
    let mut remote = destination::connect(server, &config.path, false)?;
    let remote: &mut dyn Remote = &mut *remote;
    let listing = match remote.list()? {
        Some(listing) => listing,
        None => {
            plan.notes
                .push("the destination does not exist: a real run creates it".into());
            Vec::new()
        }
    };
    match claim::read(remote)? {
        Some(owner) if owner != config.backup.node_name => {
            return Err(claim::refusal(
                &remote.describe(),
                &owner,
                &config.backup.node_name,
            ));
        }
        Some(_) => {}
        None => plan
            .notes
            .push("the destination is not claimed yet: a real run claims it for this node".into()),
    }
    let sealed = history.sealed_at(&server.name);
    let mut after_copy = listing.clone();
    for name in selection.files() {
        let Some(file) = local.iter().find(|f| f.name == name) else {
            continue;
        };
        let encryption = server
            .encrypt_to
            .as_deref()
            .map(|r| (r.fingerprint.as_str(), &sealed[..]));
        let decision = plan::decide(&destination::gather_facts(
            remote, &listing, file, encryption,
        )?);
        if let CopyDecision::Upload { file: target, .. } = &decision {
            if !after_copy.iter().any(|e| e.name == target.file_name()) {
                after_copy.push(RemoteEntry {
                    name: target.file_name(),
                    size: file.size,
                });
            }
        }
        plan.copies.push(decision);
    }
    if server.remote_limit > 0 {
        plan.remote_retention = Some(copy_night::remote_retention(
            &after_copy,
            (server.remote_limit, &[]),
            &selection.protect,
            known,
            now,
        ));
    }
    Ok(plan)
}
