//! The system calls fixuid needs that std does not offer: process ids, supplementary groups,
//! dropping privileges, and the `*at` calls that let the walk work relative to an open
//! directory (so a path swapped for a symlink mid-walk cannot redirect a chown). This is the
//! only module with `unsafe` code; every block is a plain libc call on owned, valid arguments.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The process's real and effective ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessIds {
    /// Real uid: who started the container (`--user`).
    pub uid: u32,
    /// Effective uid: 0 when the setuid bit took effect.
    pub euid: u32,
    /// Real gid.
    pub gid: u32,
}

/// Reads the process's ids.
pub fn process_ids() -> ProcessIds {
    // SAFETY: getuid, geteuid and getgid take no arguments and cannot fail.
    unsafe {
        ProcessIds {
            uid: libc::getuid(),
            euid: libc::geteuid(),
            gid: libc::getgid(),
        }
    }
}

/// The process's supplementary groups.
pub fn supplementary_groups() -> io::Result<Vec<u32>> {
    // SAFETY: with a size of 0, getgroups only returns the count and writes nothing.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut groups = vec![0 as libc::gid_t; n as usize];
    // SAFETY: the buffer holds `n` gids, and `n` is passed as its size.
    let got = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    groups.truncate(got as usize);
    Ok(groups)
}

/// Becomes `uid:gid` with exactly `groups` as supplementary groups, for good: the real,
/// effective and saved ids all change, in the order that keeps the privilege to do the next
/// step (groups, then gid, then uid). Fails if root could be regained afterwards.
pub fn become_user(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: the pointer and length describe the `groups` slice, which outlives the call.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(annotate("setgroups"));
    }
    // SAFETY: setgid takes a plain integer.
    if unsafe { libc::setgid(gid) } != 0 {
        return Err(annotate("setgid"));
    }
    // SAFETY: setuid takes a plain integer.
    if unsafe { libc::setuid(uid) } != 0 {
        return Err(annotate("setuid"));
    }
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: the three pointers refer to live local variables.
    if unsafe { libc::getresuid(&mut r, &mut e, &mut s) } != 0 {
        return Err(annotate("getresuid"));
    }
    if (r, e, s) != (uid, uid, uid) {
        return Err(io::Error::other(format!(
            "uids are {r}/{e}/{s} after setuid({uid})"
        )));
    }
    // SAFETY: as above, for the gids.
    if unsafe { libc::getresgid(&mut r, &mut e, &mut s) } != 0 {
        return Err(annotate("getresgid"));
    }
    if (r, e, s) != (gid, gid, gid) {
        return Err(io::Error::other(format!(
            "gids are {r}/{e}/{s} after setgid({gid})"
        )));
    }
    // SAFETY: setuid takes a plain integer; it must fail here, as nothing privileged is left.
    if uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(io::Error::other("root could be regained after dropping it"));
    }
    Ok(())
}

fn annotate(call: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{call}: {e}"))
}

/// What fixuid needs from a `stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Device of the filesystem holding the file.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Whether it is a directory (a symlink to one is not).
    pub is_dir: bool,
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: the entry itself, never a symlink's target.
pub fn stat_at(dir: &File, name: &CStr) -> io::Result<Stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `dir` is an open descriptor, `name` a NUL-terminated string, and `st` points to
    // writable memory of the right size.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat succeeded, so it filled in the whole struct.
    let st = unsafe { st.assume_init() };
    Ok(Stat {
        dev: st.st_dev,
        ino: st.st_ino,
        uid: st.st_uid,
        gid: st.st_gid,
        is_dir: st.st_mode & libc::S_IFMT == libc::S_IFDIR,
    })
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`: changes the entry itself, never a
/// symlink's target.
pub fn chown_at(dir: &File, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated string.
    let rc = unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens the subdirectory `name` of `dir`, refusing a symlink.
pub fn open_dir_at(dir: &File, name: &CStr) -> io::Result<File> {
    // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor, and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}
