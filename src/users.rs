//! The few facts about local users we need: who we run as, and whom to run `cvpi` as.
//! musl reads /etc/passwd directly, which is where CVP keeps its local `cvp` user.

use std::ffi::{CStr, CString};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
}

pub fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

pub fn by_name(name: &str) -> Option<User> {
    let c_name = CString::new(name).ok()?;
    lookup(|pwd, buf, len, result| {
        // SAFETY: every pointer is valid for the call; `buf` has `len` bytes.
        unsafe { libc::getpwnam_r(c_name.as_ptr(), pwd, buf, len, result) }
    })
}

pub fn by_uid(uid: u32) -> Option<User> {
    lookup(|pwd, buf, len, result| {
        // SAFETY: as above.
        unsafe { libc::getpwuid_r(uid, pwd, buf, len, result) }
    })
}

/// The user's primary and supplementary groups, as a login gives them.
pub fn group_ids(user: &User) -> Vec<u32> {
    let Ok(name) = CString::new(user.name.as_str()) else {
        return vec![user.gid];
    };
    let mut count: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; count as usize];
        let before = count;
        // SAFETY: `groups` has room for `count` entries; getgrouplist writes at most that many
        // and sets `count` to the number it needs.
        let rc =
            unsafe { libc::getgrouplist(name.as_ptr(), user.gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        if count <= before {
            // Nothing more to learn: fall back to the primary group.
            return vec![user.gid];
        }
    }
}

/// What a permission check asks for: the bits of `rwx` (4 read, 2 write, 1 execute).
pub const READ: u32 = 4;
pub const EXECUTE: u32 = 1;

/// Whether `user` gets `bit` on a file with this owner, group and mode, as the kernel
/// decides it (root: everything, except execute needs some execute bit).
pub fn permits(meta: &std::fs::Metadata, user: &User, bit: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode();
    if user.uid == 0 {
        return bit != EXECUTE || mode & 0o111 != 0;
    }
    let shift = if meta.uid() == user.uid {
        6
    } else if group_ids(user).contains(&meta.gid()) {
        3
    } else {
        0
    };
    (mode >> shift) & bit != 0
}

fn lookup(
    call: impl Fn(*mut libc::passwd, *mut libc::c_char, usize, *mut *mut libc::passwd) -> i32,
) -> Option<User> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain old data; zeroed is a valid value to be overwritten.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = call(&mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
    if rc != 0 || result.is_null() {
        return None;
    }
    let text = |ptr: *const libc::c_char| {
        if ptr.is_null() {
            String::new()
        } else {
            // SAFETY: getpw*_r filled these with NUL-terminated strings inside `buf`.
            unsafe { CStr::from_ptr(ptr) }
                .to_string_lossy()
                .into_owned()
        }
    };
    Some(User {
        name: text(pwd.pw_name),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home: PathBuf::from(text(pwd.pw_dir)),
        shell: PathBuf::from(text(pwd.pw_shell)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_uid_zero() {
        let root = by_name("root").expect("every Linux has root");
        assert_eq!(root.uid, 0);
        assert_eq!(by_uid(0).map(|u| u.name), Some("root".to_string()));
        assert_eq!(by_name("no-such-user-cvpbc"), None);
        assert_eq!(by_name("nul\0byte"), None);
        assert!(group_ids(&root).contains(&0));
    }
}
