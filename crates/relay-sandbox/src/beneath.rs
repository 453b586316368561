//! Reading inside a directory a sandbox writes (its agent directory) without ever following a
//! link it planted: each component is opened relative to the one before, refusing links
//! (`O_NOFOLLOW`), through the `/proc/self/fd` entry of the directory already opened, so no
//! path is resolved twice. The relay runs as root; a followed link would read any file.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::SystemTime;

/// Whether `name` is one plain path component.
pub(crate) fn is_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

fn open_in(dir: &File, name: &str, directory: bool) -> io::Result<File> {
    if !is_component(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a file name"),
        ));
    }
    let flags = libc::O_NOFOLLOW
        | if directory {
            libc::O_DIRECTORY
        } else {
            // A FIFO planted in place of a file must not block the relay.
            libc::O_NONBLOCK
        };
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

/// Opens the directory `root` (the relay's own path to it) and then `dirs` below it.
fn open_dirs(root: &Path, dirs: &[&str]) -> io::Result<File> {
    let mut dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(root)?;
    for d in dirs {
        dir = open_in(&dir, d, true)?;
    }
    Ok(dir)
}

/// Whether an error means "nothing the relay reads there": missing, or a link (`ELOOP`), or
/// not a directory where one was expected.
pub(crate) fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR))
}

/// The regular file at `path` (components) below `root`, at most `max` bytes (larger: an
/// error); `None` when it is missing or anything on the way is not what it should be.
pub(crate) fn read_file(root: &Path, path: &[&str], max: u64) -> io::Result<Option<Vec<u8>>> {
    let Some((name, dirs)) = path.split_last() else {
        return Ok(None);
    };
    let file = match open_dirs(root, dirs).and_then(|d| open_in(&d, name, false)) {
        Ok(f) => f,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
    let mut out = Vec::new();
    file.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {max} bytes", path.join("/")),
        ));
    }
    Ok(Some(out))
}

/// The regular files two levels below `root/dir` whose names end with `suffix`, each with its
/// modification time: `dir/<sub>/<file>`. Links are skipped.
pub(crate) fn files_two_down(
    root: &Path,
    dir: &str,
    suffix: &str,
) -> io::Result<Vec<(String, String, SystemTime)>> {
    let top = match open_dirs(root, &[dir]) {
        Ok(d) => d,
        Err(e) if is_absent(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for sub in entries(&top)? {
        let Ok(sub_dir) = open_in(&top, &sub, true) else {
            continue;
        };
        for name in entries(&sub_dir)? {
            if !name.ends_with(suffix) {
                continue;
            }
            let Ok(f) = open_in(&sub_dir, &name, false) else {
                continue;
            };
            let meta = f.metadata()?;
            if meta.is_file() {
                out.push((sub.clone(), name, meta.modified()?));
            }
        }
    }
    Ok(out)
}

/// Creates the new file `dir/name` below `root` with `bytes`, owned by `owner` when given, the
/// directory made if missing (owned likewise); refuses links anywhere and an existing file.
/// Returns nothing the caller did not give: the path is `dir/name`.
pub(crate) fn create_file(
    root: &Path,
    dir: &str,
    name: &str,
    bytes: &[u8],
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    use std::io::Write;
    let top = open_dirs(root, &[])?;
    if !is_component(dir) || !is_component(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file name",
        ));
    }
    // mkdir never follows a link at the name (EEXIST), and then the name is opened as a
    // directory without following one.
    match std::fs::create_dir(format!("/proc/self/fd/{}/{dir}", top.as_raw_fd())) {
        Ok(()) => {
            let d = open_in(&top, dir, true)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&d, Some(uid), Some(gid))?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let d = open_in(&top, dir, true)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(format!("/proc/self/fd/{}/{name}", d.as_raw_fd()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    f.write_all(bytes)?;
    f.sync_all()
}

/// The names in an opened directory.
fn entries(dir: &File) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        if let Some(name) = e?.file_name().to_str() {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_below_the_root_and_links_on_the_way_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "outside").unwrap();
        std::fs::create_dir_all(root.path().join("exports")).unwrap();
        std::fs::write(root.path().join("exports/a.html"), "<p>").unwrap();
        assert_eq!(
            read_file(root.path(), &["exports", "a.html"], 10).unwrap(),
            Some(b"<p>".to_vec())
        );
        assert!(
            read_file(root.path(), &["exports", "a.html"], 2).is_err(),
            "too large"
        );
        assert_eq!(
            read_file(root.path(), &["exports", "none"], 10).unwrap(),
            None
        );
        // A directory link and a file link: neither is followed.
        std::os::unix::fs::symlink(outside.path(), root.path().join("linked")).unwrap();
        assert_eq!(
            read_file(root.path(), &["linked", "secret"], 100).unwrap(),
            None
        );
        std::os::unix::fs::symlink(
            outside.path().join("secret"),
            root.path().join("exports/b.html"),
        )
        .unwrap();
        assert_eq!(
            read_file(root.path(), &["exports", "b.html"], 100).unwrap(),
            None
        );
        assert!(read_file(root.path(), &["..", "x"], 100).is_err());
    }

    #[test]
    fn a_new_file_is_created_in_a_new_or_real_directory_never_through_a_link() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        create_file(root.path(), "up", "a.txt", b"A", None).unwrap();
        assert_eq!(std::fs::read(root.path().join("up/a.txt")).unwrap(), b"A");
        create_file(root.path(), "up", "b.txt", b"B", None).unwrap();
        assert!(create_file(root.path(), "up", "a.txt", b"again", None).is_err());
        std::os::unix::fs::symlink(outside.path(), root.path().join("linked")).unwrap();
        assert!(create_file(root.path(), "linked", "x", b"x", None).is_err());
        std::os::unix::fs::symlink(outside.path().join("target"), root.path().join("up/c.txt"))
            .unwrap();
        assert!(create_file(root.path(), "up", "c.txt", b"x", None).is_err());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }

    #[test]
    fn files_two_down_lists_regular_files_only() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x.jsonl"), "{}").unwrap();
        std::fs::create_dir_all(root.path().join("sessions/--workspace--")).unwrap();
        std::fs::write(root.path().join("sessions/--workspace--/1_a.jsonl"), "{}").unwrap();
        std::fs::write(root.path().join("sessions/--workspace--/notes.txt"), "").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("sessions/evil")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("x.jsonl"),
            root.path().join("sessions/--workspace--/2_b.jsonl"),
        )
        .unwrap();
        let found = files_two_down(root.path(), "sessions", ".jsonl").unwrap();
        let names: Vec<_> = found.iter().map(|(d, f, _)| format!("{d}/{f}")).collect();
        assert_eq!(names, ["--workspace--/1_a.jsonl"]);
        assert!(
            files_two_down(root.path(), "missing", ".jsonl")
                .unwrap()
                .is_empty()
        );
    }
}
