//! The mount points of the process's mount namespace, from `/proc/self/mountinfo`. fixuid
//! never walks into another mount: a different device number gives most of them away, but a
//! bind mount of a directory from the same host filesystem has the same device number as its
//! neighbours, so the mount table is consulted as well (the original fixuid relies on it).

use std::collections::HashSet;
use std::path::PathBuf;

/// Parses the text of `/proc/self/mountinfo` into the set of mount points. Field 5 of each line
/// is the mount point, with space, tab, newline and backslash written as octal escapes.
pub fn mount_points(mountinfo: &str) -> HashSet<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .collect()
}

/// Undoes the kernel's `\ooo` escaping of mount paths.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_come_from_field_five_unescaped() {
        let text = "\
1034 990 0:83 / / rw,relatime master:356 - overlay overlay rw,lowerdir=/x\n\
1035 1034 0:86 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n\
1040 1034 254:1 /tmp/pi/ws /workspace rw,relatime - ext4 /dev/vda1 rw\n\
1041 1040 254:1 /tmp/pi/in\\040dir /workspace/in\\040dir rw,relatime - ext4 /dev/vda1 rw\n\
1042 1034 254:1 /x /odd\\134name\\011tab rw - ext4 /dev/vda1 rw\n";
        let m = mount_points(text);
        for p in [
            "/",
            "/proc",
            "/workspace",
            "/workspace/in dir",
            "/odd\\name\ttab",
        ] {
            assert!(m.contains(&PathBuf::from(p)), "{p} missing from {m:?}");
        }
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn a_backslash_that_is_not_an_escape_is_kept() {
        assert_eq!(unescape("/a\\b"), "/a\\b");
        assert_eq!(unescape("/a\\04"), "/a\\04");
        assert_eq!(unescape("/a\\040"), "/a ");
    }

    #[test]
    fn short_or_empty_lines_are_ignored() {
        assert!(mount_points("\n1 2 3\n").is_empty());
    }
}
