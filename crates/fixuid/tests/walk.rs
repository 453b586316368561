//! The hand-over walk on real files in a temporary directory (needs root, to create files
//! owned by other ids). Which ids change, what is left alone, symlinks, simulated mount points
//! and depth. Mounts of another device are covered in real containers
//! (`needs_docker_fixuid.rs`), since making one here would need `mount` on the host.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, lchown, symlink};
use std::path::{Path, PathBuf};

use fixuid::walk::{Handover, MAX_DEPTH};

const FROM: (u32, u32) = (1000, 1000);
const TO: (u32, u32) = (1234, 5678);

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

fn own(p: &Path, ids: (u32, u32)) {
    lchown(p, Some(ids.0), Some(ids.1))
        .unwrap_or_else(|e| panic!("lchown {} (these tests need root): {e}", p.display()));
}

fn file(p: &Path, ids: (u32, u32)) {
    std::fs::write(p, "x").unwrap();
    own(p, ids);
}

#[test]
fn files_owned_by_both_old_ids_change_and_nothing_else_does() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("home");
    std::fs::create_dir(&root).unwrap();
    own(&root, FROM);
    file(&root.join("both"), FROM);
    file(&root.join("uid-only"), (1000, 0));
    file(&root.join("gid-only"), (1001, 1000));
    file(&root.join("root"), (0, 0));
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    own(&root.join("dir"), FROM);
    own(&root.join("dir/sub"), (0, 0)); // a foreign directory is still entered
    file(&root.join("dir/sub/deep"), FROM);
    file(&root.join("with space"), FROM);

    let mounts = HashSet::new();
    let out = Handover {
        from: FROM,
        to: TO,
        mounts: &mounts,
    }
    .run(&root);

    assert_eq!(owner(&root), TO);
    assert_eq!(owner(&root.join("both")), TO);
    assert_eq!(owner(&root.join("uid-only")), (1000, 0));
    assert_eq!(owner(&root.join("gid-only")), (1001, 1000));
    assert_eq!(owner(&root.join("root")), (0, 0));
    assert_eq!(owner(&root.join("dir")), TO);
    assert_eq!(owner(&root.join("dir/sub")), (0, 0));
    assert_eq!(owner(&root.join("dir/sub/deep")), TO);
    assert_eq!(owner(&root.join("with space")), TO);
    assert_eq!(out.changed, 5, "{:?}", out.info);
    assert_eq!(out.failed, 0, "{:?}", out.info);
    assert!(
        out.info
            .contains(&format!("chown {}", root.join("dir/sub/deep").display())),
        "{:?}",
        out.info
    );
}

#[test]
fn symlinks_are_changed_themselves_and_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ws");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    file(&outside.join("target"), FROM);
    own(&outside, FROM);
    std::fs::create_dir(&root).unwrap();
    symlink(outside.join("target"), root.join("file-link")).unwrap();
    symlink(&outside, root.join("dir-link")).unwrap();
    own(&root.join("file-link"), FROM);
    own(&root.join("dir-link"), FROM);

    let mounts = HashSet::new();
    Handover {
        from: FROM,
        to: TO,
        mounts: &mounts,
    }
    .run(&root);

    assert_eq!(owner(&root.join("file-link")), TO);
    assert_eq!(owner(&root.join("dir-link")), TO);
    // What they point to is untouched.
    assert_eq!(owner(&outside.join("target")), FROM);
    assert_eq!(owner(&outside), FROM);

    // A configured path that is itself a symlink is changed, not followed.
    let out = Handover {
        from: TO,
        to: FROM,
        mounts: &mounts,
    }
    .run(&root.join("dir-link"));
    assert_eq!(owner(&root.join("dir-link")), FROM);
    assert_eq!(out.changed, 1);
}

#[test]
fn mount_points_are_neither_changed_nor_entered() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ws");
    std::fs::create_dir_all(root.join("mnt/inner")).unwrap();
    for p in ["", "mnt", "mnt/inner"] {
        own(&root.join(p), FROM);
    }
    file(&root.join("mnt/inner/f"), FROM);
    file(&root.join("top"), FROM);
    // The mount table lists canonical paths.
    let canonical = std::fs::canonicalize(&root).unwrap();
    let mounts: HashSet<PathBuf> = [canonical.join("mnt")].into();

    let out = Handover {
        from: FROM,
        to: TO,
        mounts: &mounts,
    }
    .run(&root);

    assert_eq!(owner(&root), TO);
    assert_eq!(owner(&root.join("top")), TO);
    assert_eq!(owner(&root.join("mnt")), FROM);
    assert_eq!(owner(&root.join("mnt/inner")), FROM);
    assert_eq!(owner(&root.join("mnt/inner/f")), FROM);
    assert!(
        out.info
            .iter()
            .any(|l| l.starts_with("skipping mounted path") && l.ends_with("/mnt")),
        "{:?}",
        out.info
    );
}

#[test]
fn a_missing_path_is_reported_and_a_file_path_is_changed_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let mounts = HashSet::new();
    let h = Handover {
        from: FROM,
        to: TO,
        mounts: &mounts,
    };
    let out = h.run(&tmp.path().join("nope"));
    assert_eq!((out.changed, out.failed), (0, 0));
    assert!(
        out.info[0].starts_with("error accessing path:"),
        "{:?}",
        out.info
    );

    let f = tmp.path().join("single");
    file(&f, FROM);
    assert_eq!(h.run(&f).changed, 1);
    assert_eq!(owner(&f), TO);
}

#[test]
fn very_deep_trees_stop_at_the_depth_limit_with_a_failure_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("deep");
    // About 1 KiB of path: well within PATH_MAX.
    let deepest: PathBuf = std::iter::once(root.clone())
        .chain(std::iter::repeat_n(PathBuf::from("d"), MAX_DEPTH + 5))
        .collect();
    std::fs::create_dir_all(&deepest).unwrap();
    let mounts = HashSet::new();
    let out = Handover {
        from: (4242, 4242),
        to: TO,
        mounts: &mounts,
    }
    .run(&root);
    assert_eq!(out.failed, 1, "{:?}", out.first_failure);
    assert!(
        out.first_failure
            .as_deref()
            .is_some_and(|f| f.contains("levels deep")),
        "{:?}",
        out.first_failure
    );
}
