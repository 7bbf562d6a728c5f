//! cvp-backup-copy as a library: the binary (`main.rs`) is a thin shell around it, and the
//! fuzz targets link against it.

pub mod backup;
pub mod claim;
pub mod cli;
pub mod commands;
pub mod concurrent;
pub mod config;
pub mod edit;
pub mod error;
pub mod exit_codes;
pub mod ini_edit;
pub mod inventory;
pub mod keygen;
pub mod lanes;
pub mod lock;
pub mod logging;
pub mod monitor;
pub mod names;
pub mod plan;
pub mod privilege;
pub mod progress;
pub mod prompt;
pub mod remote;
pub mod restore_set;
pub mod retention;
pub mod run;
pub mod safe_fs;
pub mod seal;
pub mod secret;
pub mod sets;
pub mod signals;
pub mod space;
pub mod state;
pub mod transfer;
pub mod users;
