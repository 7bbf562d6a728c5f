//! Every file this tool creates or writes goes through here, because the folders it works in
//! (`state_dir`, `backup_dir`, the key folder, a `fetch --to` folder) may be writable by
//! another account than the one running it. After Postfix's `safe_open()` and OpenSSH's
//! `safe_path()`, in our own words:
//!
//! - A folder is opened once, walking its real path from `/` one component at a time with
//!   `O_NOFOLLOW`; every later operation is relative to that handle, so swapping a folder
//!   for a symlink half-way changes nothing.
//! - A file is created only under a fresh name (`O_CREAT | O_EXCL | O_NOFOLLOW`) and moved
//!   into place with `renameat`, which replaces a planted symlink rather than following it.
//! - An existing file is opened with `O_NOFOLLOW | O_NONBLOCK` and used only when it is a
//!   regular file with one link (not a FIFO, a device, or a hard link to something else).
//! - What root creates in a folder another user owns is given to that user, so that a
//!   command run as root never leaves a file that blocks the owner's cron job.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The mode a replaced file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The existing file's mode (and owner, when root writes it), or this one for a new file.
    KeepOr(u32),
    /// Always this mode.
    Force(u32),
}

/// An open folder; names passed to its methods are single path components.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    uid: u32,
    gid: u32,
}

fn c_name(name: &str) -> io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{name}` is not a plain file name"),
        ));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn c_os(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn fstat(fd: libc::c_int) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data; fstat fills it for a valid descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

fn open_component(parent: libc::c_int, name: &CString) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the returned descriptor is owned below.
    let fd = check(unsafe { libc::openat(parent, name.as_ptr(), DIR_FLAGS) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Eight random bytes as hex, for temporary names nobody can guess in advance.
fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // O_EXCL still protects us; the name is only less surprising.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        return format!("{:x}{:x}", std::process::id(), nanos);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Dir {
    /// Open an existing folder by its real path, refusing a symlink met on the way.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let real = std::fs::canonicalize(path)?;
        Dir::walk(&real, None)
    }

    /// The folder `name` in this one, made (with `mode`) if missing, opened without
    /// following a symlink: a symlink planted there is refused, never followed.
    pub fn subdir(&self, name: &str, mode: u32) -> io::Result<Dir> {
        let c = c_name(name)?;
        let (fd, _) = make_and_open(&self.fd, &c, mode)?;
        let st = fstat(fd.as_raw_fd())?;
        Ok(Dir {
            fd,
            path: self.path.join(name),
            uid: st.st_uid,
            gid: st.st_gid,
        })
    }

    /// Open a folder, creating what is missing of it (each new level with `mode`).
    pub fn open_or_create(path: &Path, mode: u32) -> io::Result<Dir> {
        Dir::open_or_create_noting(path, mode).map(|(dir, _)| dir)
    }

    /// `open_or_create`, and the levels it made (for taking them back: `Created`).
    pub fn open_or_create_noting(path: &Path, mode: u32) -> io::Result<(Dir, Created)> {
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()?.join(path)
        };
        // The longest part that exists is resolved; the rest is created below it.
        let mut existing = absolute.as_path();
        let mut missing = Vec::new();
        loop {
            match std::fs::canonicalize(existing) {
                Ok(real) => {
                    let mut full = real;
                    for name in missing.iter().rev() {
                        full.push(name);
                    }
                    let mut created = Created::default();
                    let dir = Dir::walk(&full, Some((mode, &mut created)))?;
                    return Ok((dir, created));
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    let (Some(parent), Some(name)) = (existing.parent(), existing.file_name())
                    else {
                        return Err(err);
                    };
                    missing.push(name.to_os_string());
                    existing = parent;
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn walk(real: &Path, mut create: Option<(u32, &mut Created)>) -> io::Result<Dir> {
        let root = CString::new("/").map_err(io::Error::other)?;
        // SAFETY: as in open_component.
        let fd = check(unsafe { libc::open(root.as_ptr(), DIR_FLAGS) })?;
        let mut current = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut so_far = PathBuf::from("/");
        for component in real.components() {
            let name = match component {
                Component::RootDir => continue,
                Component::Normal(name) => {
                    so_far.push(name);
                    c_os(name)?
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{} is not a plain path", real.display()),
                    ))
                }
            };
            current = match open_component(current.as_raw_fd(), &name) {
                Ok(fd) => fd,
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) && create.is_some() => {
                    let Some((mode, created)) = create.as_mut() else {
                        return Err(err);
                    };
                    let (opened, made) = make_and_open(&current, &name, *mode)?;
                    if made {
                        let st = fstat(opened.as_raw_fd())?;
                        created.levels.push(CreatedLevel {
                            parent: current.try_clone()?,
                            name: name.clone(),
                            identity: (st.st_dev, st.st_ino),
                            path: so_far.clone(),
                        });
                    }
                    opened
                }
                Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{}: a symlink appeared in the path while it was opened; refusing it",
                            real.display()
                        ),
                    ))
                }
                Err(err) => return Err(err),
            };
        }
        let st = fstat(current.as_raw_fd())?;
        Ok(Dir {
            fd: current,
            path: real.to_path_buf(),
            uid: st.st_uid,
            gid: st.st_gid,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The folder itself as a file, for `flock`: a lock on it needs no lock file that
    /// someone else could own, replace or plant.
    pub fn lock_handle(&self) -> io::Result<File> {
        Ok(File::from(self.fd.try_clone()?))
    }

    /// Root's new files in another user's folder go to that user.
    fn give_to_folder_owner(&self, file: &File) -> io::Result<()> {
        if euid() == 0 && self.uid != 0 {
            std::os::unix::fs::fchown(file, Some(self.uid), Some(self.gid))?;
        }
        Ok(())
    }

    /// A new file under `name`; fails if anything (a file, a symlink) is already there.
    pub fn create_new(&self, name: &str, mode: u32) -> io::Result<File> {
        let c = c_name(name)?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `c` is NUL-terminated; the descriptor is owned by the File.
        let fd = check(unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, mode) })?;
        let file = unsafe { File::from_raw_fd(fd) };
        // The umask may have taken bits away; set exactly what was asked for.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        self.give_to_folder_owner(&file)?;
        Ok(file)
    }

    /// A new file under a fresh name `.{base}.{random}.tmp`, and that name.
    pub fn create_temp(&self, base: &str, mode: u32) -> io::Result<(String, File)> {
        loop {
            let name = format!(".{base}.{}.tmp", random_suffix());
            match self.create_new(&name, mode) {
                Ok(file) => return Ok((name, file)),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// Whether this process can make a file here: a temporary one, made and removed.
    pub fn probe_writable(&self) -> io::Result<()> {
        let (probe, _) = self.create_temp("check", 0o600)?;
        self.remove(&probe)
    }

    /// An existing regular file, opened without following a symlink; None when absent.
    pub fn open_existing(&self, name: &str, write: bool) -> io::Result<Option<File>> {
        let c = c_name(name)?;
        let access = if write {
            libc::O_WRONLY
        } else {
            libc::O_RDONLY
        };
        let flags = access | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        // SAFETY: as above.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                Some(libc::ELOOP) => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} is a symlink: refusing to follow it",
                        self.join(name).display()
                    ),
                )),
                _ => Err(err),
            };
        }
        let file = unsafe { File::from_raw_fd(fd) };
        let st = fstat(file.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink != 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a plain file of its own (a device, FIFO or hard link?): refusing it",
                    self.join(name).display()
                ),
            ));
        }
        // Back to blocking reads and writes.
        // SAFETY: F_SETFL on our own descriptor.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, 0) };
        Ok(Some(file))
    }

    /// A small file's contents (at most `max` bytes), or None when it does not exist.
    pub fn read(&self, name: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(file) = self.open_existing(name, false)? else {
            return Ok(None);
        };
        let mut contents = Vec::new();
        file.take(max).read_to_end(&mut contents)?;
        Ok(Some(contents))
    }

    /// The owner and mode of `name` itself (a symlink is not followed); None when absent.
    pub fn stat(&self, name: &str) -> io::Result<Option<libc::stat>> {
        let c = c_name(name)?;
        // SAFETY: plain data filled by fstatat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return if err.raw_os_error() == Some(libc::ENOENT) {
                Ok(None)
            } else {
                Err(err)
            };
        }
        Ok(Some(st))
    }

    /// Replace `name` with `contents`: a fresh temporary file, fsync, mode (and owner) set,
    /// `renameat`, fsync of the folder. A crash leaves the old file or the new one.
    pub fn replace(&self, name: &str, contents: &[u8], mode: Mode) -> io::Result<()> {
        let tmp = self.stage(name, contents, mode)?;
        let moved = self.rename(&tmp, name).and_then(|()| self.sync());
        if moved.is_err() {
            let _ = self.remove(&tmp);
        }
        moved
    }

    /// The first half of `replace`: the new contents under a fresh temporary name (returned),
    /// synced, with the mode (and, for root, the owner) the final file is to have. Renaming
    /// it over `name` later is the commit; removing it, the rollback.
    pub fn stage(&self, name: &str, contents: &[u8], mode: Mode) -> io::Result<String> {
        let existing = self
            .stat(name)?
            .filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
        let mode = match (mode, &existing) {
            (Mode::Force(mode), _) => mode,
            (Mode::KeepOr(_), Some(st)) => st.st_mode & 0o7777,
            (Mode::KeepOr(mode), None) => mode,
        };
        let (tmp, mut file) = self.create_temp(name, 0o600)?;
        let written = (|| {
            if let (true, Some(st)) = (euid() == 0, &existing) {
                std::os::unix::fs::fchown(&file, Some(st.st_uid), Some(st.st_gid))?;
            }
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            file.write_all(contents)?;
            file.sync_all()
        })();
        match written {
            Ok(()) => Ok(tmp),
            Err(err) => {
                let _ = self.remove(&tmp);
                Err(err)
            }
        }
    }

    /// `renameat` within this folder: `to` is replaced, never followed.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (c_name(from)?, c_name(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: both names NUL-terminated, relative to our descriptor.
        check(unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) }).map(drop)
    }

    /// Remove a file (a symlink itself, never its target); Ok when already gone.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let c = c_name(name)?;
        // SAFETY: as above.
        let rc = unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOENT) {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Give the folder itself to `uid`:`gid` with `mode` (through its handle).
    pub fn give_to(&self, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
        // SAFETY: fchown and fchmod of our own descriptor.
        check(unsafe { libc::fchown(self.fd.as_raw_fd(), uid, gid) })?;
        check(unsafe { libc::fchmod(self.fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
    }

    /// The names in the folder (read through our handle, not its path).
    pub fn names(&self) -> io::Result<Vec<String>> {
        let entries = std::fs::read_dir(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))?;
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect())
    }

    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: fsync of our own descriptor.
        check(unsafe { libc::fsync(self.fd.as_raw_fd()) }).map(drop)
    }
}

/// Make the folder `name` in `parent` (with `mode`) if it is not there, and open it without
/// following a symlink. Whether this call made it. A folder root makes in another account's
/// folder is that account's.
fn make_and_open(parent: &OwnedFd, name: &CString, mode: u32) -> io::Result<(OwnedFd, bool)> {
    // SAFETY: `name` is NUL-terminated; mkdirat does not follow symlinks.
    let made = unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), mode as _) } == 0;
    if !made && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
        return Err(io::Error::last_os_error());
    }
    let opened = open_component(parent.as_raw_fd(), name)?;
    let parent_st = fstat(parent.as_raw_fd())?;
    if made && euid() == 0 && parent_st.st_uid != 0 {
        // SAFETY: fchown of the descriptor we just opened.
        check(unsafe { libc::fchown(opened.as_raw_fd(), parent_st.st_uid, parent_st.st_gid) })?;
    }
    Ok((opened, made))
}

/// The folders an `open_or_create_noting` made, outermost first: each by the handle of its
/// parent and its identity, so taking them back never follows a path someone changed since.
#[derive(Debug, Default)]
pub struct Created {
    levels: Vec<CreatedLevel>,
}

#[derive(Debug)]
struct CreatedLevel {
    parent: OwnedFd,
    name: CString,
    /// (device, inode) when it was made.
    identity: (libc::dev_t, libc::ino_t),
    /// Its path when it was made, for messages.
    path: PathBuf,
}

impl Created {
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// Whether the folder at `path` (as opened) is one of those made.
    pub fn made(&self, path: &Path) -> bool {
        self.levels.iter().any(|level| level.path == path)
    }

    /// Remove the folders made, innermost first, while each is still the one made (same
    /// device and inode, not a symlink) and empty; the outermost removed, if any.
    pub fn remove_empty(&self) -> Option<PathBuf> {
        let mut removed = None;
        for level in self.levels.iter().rev() {
            // SAFETY: stat is plain data; fstatat on our parent handle without following.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let fd = level.parent.as_raw_fd();
            let looked = unsafe {
                libc::fstatat(fd, level.name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW)
            };
            let same = looked == 0
                && st.st_mode & libc::S_IFMT == libc::S_IFDIR
                && (st.st_dev, st.st_ino) == level.identity;
            // SAFETY: unlinkat of a name relative to our parent handle; AT_REMOVEDIR only
            // removes an empty folder.
            if !same || unsafe { libc::unlinkat(fd, level.name.as_ptr(), libc::AT_REMOVEDIR) } != 0
            {
                break;
            }
            removed = Some(level.path.clone());
        }
        removed
    }
}

/// An existing plain file opened for reading, without following a symlink at its name
/// (see `Dir::open_existing`); NotFound when absent.
pub fn open_file(path: &Path) -> io::Result<File> {
    let (dir, name) = split(path)?;
    Dir::open(&dir)?
        .open_existing(&name, false)?
        .ok_or_else(|| io::ErrorKind::NotFound.into())
}

/// A path's folder and file name.
pub fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} does not name a file", path.display()),
            )
        })?
        .to_string();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn a_planted_symlink_is_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"original").expect("victim");
        let work = dir.path().join("work");
        std::fs::create_dir(&work).expect("work");
        std::os::unix::fs::symlink(&victim, work.join("planted")).expect("symlink");
        let handle = Dir::open(&work).expect("open");
        assert!(handle.create_new("planted", 0o600).is_err());
        assert!(handle.open_existing("planted", true).is_err());
        assert!(handle.read("planted", 100).is_err());
        handle
            .replace("planted", b"new", Mode::KeepOr(0o640))
            .expect("replace replaces the link itself");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"original");
        assert_eq!(std::fs::read(work.join("planted")).expect("file"), b"new");
        assert!(!std::fs::symlink_metadata(work.join("planted"))
            .expect("meta")
            .file_type()
            .is_symlink());
        handle.remove("planted").expect("remove");
        assert!(victim.exists());
    }

    #[test]
    fn a_subfolder_is_made_once_and_a_planted_symlink_there_is_refused() {
        let base = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("elsewhere");
        let dir = Dir::open(base.path()).expect("open");
        let logs = dir.subdir("logs", 0o750).expect("made");
        logs.create_new("a", 0o600).expect("file");
        assert!(base.path().join("logs/a").exists());
        assert!(dir.subdir("logs", 0o750).is_ok(), "opened again");
        std::fs::remove_dir_all(base.path().join("logs")).expect("rm");
        std::os::unix::fs::symlink(elsewhere.path(), base.path().join("logs")).expect("plant");
        assert!(dir.subdir("logs", 0o750).is_err(), "a symlink is refused");
        assert!(dir.subdir("../x", 0o750).is_err(), "a plain name only");
    }

    #[test]
    fn made_folders_are_taken_back_only_while_they_are_the_ones_made() {
        let base = tempfile::tempdir().expect("tempdir");
        let (leaf, created) =
            Dir::open_or_create_noting(&base.path().join("a/b/c"), 0o750).expect("made");
        assert!(!created.is_empty());
        leaf.create_new("kept-by-someone", 0o600).expect("file");
        // Not empty: nothing goes.
        assert_eq!(created.remove_empty(), None);
        assert!(base.path().join("a/b/c").exists());
        leaf.remove("kept-by-someone").expect("rm");
        assert_eq!(created.remove_empty(), Some(base.path().join("a")));
        assert!(!base.path().join("a").exists());
        // Nothing made: nothing to take back.
        let (_, none) = Dir::open_or_create_noting(base.path(), 0o750).expect("open");
        assert!(none.is_empty());

        // A made folder swapped for a symlink to another empty one: neither goes.
        let elsewhere = tempfile::tempdir().expect("elsewhere");
        std::fs::create_dir(elsewhere.path().join("c")).expect("decoy");
        let (_, created) =
            Dir::open_or_create_noting(&base.path().join("x/y"), 0o750).expect("made");
        std::fs::remove_dir(base.path().join("x/y")).expect("rm");
        std::fs::remove_dir(base.path().join("x")).expect("rm");
        std::os::unix::fs::symlink(elsewhere.path(), base.path().join("x")).expect("plant");
        std::fs::create_dir(elsewhere.path().join("y")).expect("decoy y");
        assert_eq!(created.remove_empty(), None);
        assert!(elsewhere.path().join("y").exists(), "the decoy stays");
    }

    #[test]
    fn hard_links_and_fifos_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), b"x").expect("a");
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).expect("link");
        let fifo = CString::new(dir.path().join("fifo").as_os_str().as_bytes()).expect("c");
        // SAFETY: NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let handle = Dir::open(dir.path()).expect("open");
        assert!(handle.open_existing("b", true).is_err(), "hard link");
        assert!(
            handle.open_existing("fifo", false).is_err(),
            "fifo, without blocking"
        );
        assert!(handle
            .open_existing("missing", false)
            .expect("ok")
            .is_none());
    }

    #[test]
    fn a_symlinked_folder_is_resolved_first_and_names_stay_plain() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("real")).expect("real");
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).expect("link");
        let handle = Dir::open(&dir.path().join("link")).expect("open");
        assert!(handle.path().ends_with("real"));
        assert!(handle.create_new("../escape", 0o600).is_err());
        assert!(handle.create_new("..", 0o600).is_err());
        let made = Dir::open_or_create(&dir.path().join("real/a/b"), 0o750).expect("mkdir -p");
        assert_eq!(
            std::fs::metadata(made.path()).expect("meta").mode() & 0o777,
            0o750
        );
    }

    #[test]
    fn replace_keeps_or_forces_the_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let handle = Dir::open(dir.path()).expect("open");
        handle
            .replace("f", b"one", Mode::KeepOr(0o600))
            .expect("new");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("f")), 0o600);
        std::fs::set_permissions(dir.path().join("f"), PermissionsExt::from_mode(0o640))
            .expect("chmod");
        handle
            .replace("f", b"two", Mode::KeepOr(0o600))
            .expect("keep");
        assert_eq!(mode(&dir.path().join("f")), 0o640);
        handle
            .replace("f", b"three", Mode::Force(0o644))
            .expect("force");
        assert_eq!(mode(&dir.path().join("f")), 0o644);
        assert_eq!(std::fs::read(dir.path().join("f")).expect("read"), b"three");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    }
}
