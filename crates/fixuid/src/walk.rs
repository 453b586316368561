//! Handing files over: under each configured path, every file owned by the image's uid AND gid
//! gets the runtime uid:gid. The walk stays on the path's own filesystem: an entry on another
//! device, or one that is a mount point of its own (a bind mount from the same filesystem has
//! the same device number), is neither changed nor entered. Symlinks are changed themselves and
//! never followed, and every step works relative to an open directory, so replacing a
//! directory by a symlink during the walk cannot lead it outside the tree.

use std::collections::HashSet;
use std::ffi::{CString, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::sys;

/// Directories nested deeper than this below a configured path are not entered. Each level holds
/// one open descriptor: 128 levels fit with room to spare in the open-file limit of any process
/// (1,024 by default; 256 on some hosts), and a home or workspace is rarely nested a fifth of that.
pub const MAX_DEPTH: usize = 128;

/// One hand-over: which ids to look for, which to give, and where not to go.
#[derive(Debug)]
pub struct Handover<'a> {
    /// The image's uid and gid: files owned by both are changed.
    pub from: (u32, u32),
    /// The runtime uid and gid.
    pub to: (u32, u32),
    /// Mount points of the namespace, never entered.
    pub mounts: &'a HashSet<PathBuf>,
}

/// What a walk did, for the caller's messages.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Informational lines (`chown <path>`, `skipping mounted path <path>`, …).
    pub info: Vec<String>,
    /// Entries whose owner was changed.
    pub changed: usize,
    /// Entries that could not be read or changed, with the first such error.
    pub failed: usize,
    /// The first failure, for the summary warning.
    pub first_failure: Option<String>,
}

impl Outcome {
    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.first_failure.is_none() {
            self.first_failure = Some(what.clone());
        }
        self.info.push(what);
    }
}

impl Handover<'_> {
    /// Walks `root` (a configured path) and changes the owner of what matches.
    pub fn run(&self, root: &Path) -> Outcome {
        let mut out = Outcome::default();
        let meta = match std::fs::symlink_metadata(root) {
            Ok(m) => m,
            Err(e) => {
                // A configured path that does not exist is not an error (the original skips it).
                out.info
                    .push(format!("error accessing path: {}: {e}", root.display()));
                return out;
            }
        };
        out.info
            .push(format!("recursively searching path {}", root.display()));
        if !meta.is_dir() {
            // A file or a symlink: change it alone.
            if self.owned_by_from(meta.uid(), meta.gid()) {
                match std::os::unix::fs::lchown(root, Some(self.to.0), Some(self.to.1)) {
                    Ok(()) => {
                        out.changed += 1;
                        out.info.push(format!("chown {}", root.display()));
                    }
                    Err(e) => out.fail(format!("error changing owner of {}: {e}", root.display())),
                }
            }
            return out;
        }
        let dir = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(root)
        {
            Ok(d) => d,
            Err(e) => {
                out.fail(format!("error opening {}: {e}", root.display()));
                return out;
            }
        };
        let Ok(opened) = dir.metadata() else {
            out.fail(format!("error reading {}", root.display()));
            return out;
        };
        if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
            out.fail(format!("{} changed while it was opened", root.display()));
            return out;
        }
        if self.owned_by_from(opened.uid(), opened.gid()) {
            match std::os::unix::fs::fchown(&dir, Some(self.to.0), Some(self.to.1)) {
                Ok(()) => {
                    out.changed += 1;
                    out.info.push(format!("chown {}", root.display()));
                }
                Err(e) => out.fail(format!("error changing owner of {}: {e}", root.display())),
            }
        }
        // Mount points are listed by their canonical paths; match children against those.
        let base = canonical_base(root);
        self.visit(&dir, &base, opened.dev(), 0, &mut out);
        out
    }

    fn owned_by_from(&self, uid: u32, gid: u32) -> bool {
        (uid, gid) == self.from
    }

    fn visit(&self, dir: &File, path: &Path, dev: u64, depth: usize, out: &mut Outcome) {
        let names = match list(dir, path) {
            Ok(n) => n,
            Err(e) => {
                out.fail(format!("error when visiting {}: {e}", path.display()));
                return;
            }
        };
        for name in names {
            let child = path.join(&name);
            let Ok(cname) = CString::new(name.as_bytes()) else {
                continue;
            };
            let st = match sys::stat_at(dir, &cname) {
                Ok(st) => st,
                // Removed since the listing: nothing to do.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    out.fail(format!("error when visiting {}: {e}", child.display()));
                    continue;
                }
            };
            let owned = self.owned_by_from(st.uid, st.gid);
            if st.dev != dev || self.mounts.contains(&child) {
                if owned {
                    out.info
                        .push(format!("skipping mounted path {}", child.display()));
                }
                continue;
            }
            if owned {
                match sys::chown_at(dir, &cname, self.to.0, self.to.1) {
                    Ok(()) => {
                        out.changed += 1;
                        out.info.push(format!("chown {}", child.display()));
                    }
                    Err(e) => out.fail(format!("error changing owner of {}: {e}", child.display())),
                }
            }
            if !st.is_dir {
                continue;
            }
            if depth + 1 >= MAX_DEPTH {
                out.fail(format!(
                    "not descending into {}: more than {MAX_DEPTH} levels deep",
                    child.display()
                ));
                continue;
            }
            let sub = match sys::open_dir_at(dir, &cname) {
                Ok(s) => s,
                Err(e) => {
                    out.fail(format!("error opening {}: {e}", child.display()));
                    continue;
                }
            };
            match sub.metadata() {
                Ok(m) if (m.dev(), m.ino()) == (st.dev, st.ino) => {
                    self.visit(&sub, &child, dev, depth + 1, out);
                }
                _ => out.fail(format!("{} changed while it was opened", child.display())),
            }
        }
    }
}

/// The names in an open directory. They are read through `/proc/self/fd`, which always lists
/// the directory that was opened; without `/proc`, through the path (a name read from a
/// swapped directory is then only looked up in the opened one, so it cannot escape it).
fn list(dir: &File, path: &Path) -> io::Result<Vec<OsString>> {
    use std::os::fd::AsRawFd;
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let entries = std::fs::read_dir(&by_fd).or_else(|_| std::fs::read_dir(path))?;
    let mut names = Vec::new();
    for e in entries {
        names.push(e?.file_name());
    }
    names.sort();
    Ok(names)
}

/// `root` with its parent directories resolved, its last component kept (it is not followed).
fn canonical_base(root: &Path) -> PathBuf {
    match (root.parent(), root.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .unwrap_or_else(|_| parent.to_path_buf())
            .join(name),
        _ => root.to_path_buf(),
    }
}
