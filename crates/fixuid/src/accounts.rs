//! `/etc/passwd` and `/etc/group` as text: look-ups by name or id, and the rewrites fixuid
//! makes. Everything here is a pure function of the file contents, so it is tested without
//! touching a real account database. Lines that are not entries (comments, blank lines, lines
//! with too few fields) are kept as they are and never match a look-up.

/// One `/etc/passwd` entry (only the fields fixuid reads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// Numeric uid.
    pub uid: u32,
    /// Numeric primary gid.
    pub gid: u32,
    /// Home directory (may be empty).
    pub home: String,
}

/// One `/etc/group` entry (only the fields fixuid reads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Numeric gid.
    pub gid: u32,
    /// Names listed as supplementary members.
    pub members: Vec<String>,
}

/// Parses the entries of an `/etc/passwd` text. Lines with fewer than 4 fields or a
/// non-numeric uid/gid are skipped.
pub fn passwd_entries(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || line.starts_with('#') {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).copied().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

/// Parses the entries of an `/etc/group` text. Lines with fewer than 3 fields or a
/// non-numeric gid are skipped.
pub fn group_entries(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 || line.starts_with('#') {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_owned(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The first passwd entry named `name` (the one the C library would return).
pub fn user_by_name<'a>(entries: &'a [PasswdEntry], name: &str) -> Option<&'a PasswdEntry> {
    entries.iter().find(|e| e.name == name)
}

/// The first passwd entry with uid `uid`.
pub fn user_by_uid(entries: &[PasswdEntry], uid: u32) -> Option<&PasswdEntry> {
    entries.iter().find(|e| e.uid == uid)
}

/// The first group entry named `name`.
pub fn group_by_name<'a>(entries: &'a [GroupEntry], name: &str) -> Option<&'a GroupEntry> {
    entries.iter().find(|e| e.name == name)
}

/// The first group entry with gid `gid`.
pub fn group_by_gid(entries: &[GroupEntry], gid: u32) -> Option<&GroupEntry> {
    entries.iter().find(|e| e.gid == gid)
}

/// The gids of the groups that list `user` as a supplementary member.
pub fn member_gids(entries: &[GroupEntry], user: &str) -> Vec<u32> {
    entries
        .iter()
        .filter(|g| g.members.iter().any(|m| m == user))
        .map(|g| g.gid)
        .collect()
}

/// A change of one id: `from` becomes `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdChange {
    /// The id in the image.
    pub from: u32,
    /// The runtime id.
    pub to: u32,
}

/// Rewrites `/etc/passwd`: `user`'s uid `uid.from` becomes `uid.to`, and every entry whose
/// primary gid is `gid.from` gets `gid.to` (the group itself is renumbered, so its members
/// follow it). Every other byte of the text is kept, including comments and line ends.
pub fn rewrite_passwd(
    text: &str,
    user: &str,
    uid: Option<IdChange>,
    gid: Option<IdChange>,
) -> String {
    map_lines(text, |fields| {
        if fields.len() < 4 {
            return;
        }
        if let Some(c) = uid
            && fields[0] == user
            && fields[2].parse() == Ok(c.from)
        {
            fields[2] = c.to.to_string();
        }
        if let Some(c) = gid
            && fields[3].parse() == Ok(c.from)
        {
            fields[3] = c.to.to_string();
        }
    })
}

/// Rewrites `/etc/group`: `group`'s gid `gid.from` becomes `gid.to`. Every other byte of the
/// text is kept.
pub fn rewrite_group(text: &str, group: &str, gid: IdChange) -> String {
    map_lines(text, |fields| {
        if fields.len() >= 3 && fields[0] == group && fields[2].parse() == Ok(gid.from) {
            fields[2] = gid.to.to_string();
        }
    })
}

/// Applies `edit` to the colon-separated fields of every non-comment line, keeping line ends.
fn map_lines(text: &str, mut edit: impl FnMut(&mut Vec<String>)) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        if body.starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut fields: Vec<String> = body.split(':').map(str::to_owned).collect();
        edit(&mut fields);
        out.push_str(&fields.join(":"));
        out.push_str(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The image's files as `useradd`/`groupadd` leave them on Debian.
    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        user:x:1000:1000::/home/user:/bin/bash\n";
    const GROUP: &str =
        "root:x:0:\ndaemon:x:1:\nusers:x:100:user\nnogroup:x:65534:\nuser:x:1000:\n";

    #[test]
    fn lookups_find_the_first_entry_and_skip_junk() {
        let text = "# comment\n\nbroken\nroot:x:0:0:root:/root:/bin/sh\nx:x:notanumber:0::/:/bin/sh\nroot:x:7:7::/other:/bin/sh\n";
        let e = passwd_entries(text);
        assert_eq!(e.len(), 2);
        assert_eq!(user_by_name(&e, "root").unwrap().uid, 0);
        assert_eq!(user_by_uid(&e, 7).unwrap().home, "/other");
        assert!(user_by_uid(&e, 1).is_none());
        let g = group_entries(GROUP);
        assert_eq!(group_by_name(&g, "user").unwrap().gid, 1000);
        assert_eq!(group_by_gid(&g, 65534).unwrap().name, "nogroup");
        assert_eq!(member_gids(&g, "user"), vec![100]);
        assert!(member_gids(&g, "nobody").is_empty());
    }

    #[test]
    fn passwd_rewrite_changes_the_user_uid_and_every_primary_gid_of_the_old_group() {
        let out = rewrite_passwd(
            PASSWD,
            "user",
            Some(IdChange {
                from: 1000,
                to: 1234,
            }),
            Some(IdChange {
                from: 1000,
                to: 5678,
            }),
        );
        assert_eq!(
            out,
            PASSWD.replace(
                "user:x:1000:1000::/home/user",
                "user:x:1234:5678::/home/user"
            )
        );
    }

    #[test]
    fn passwd_rewrite_touches_only_the_named_user_with_the_old_uid() {
        let text = "other:x:1000:1000::/home/other:/bin/sh\nuser:x:999:1000::/home/user:/bin/sh\n";
        let change = IdChange {
            from: 1000,
            to: 1234,
        };
        // `other` has the old uid but is not the configured user; `user` has another uid.
        assert_eq!(rewrite_passwd(text, "user", Some(change), None), text);
        // The gid change, though, follows the group to every account whose primary group it is.
        assert_eq!(
            rewrite_passwd(text, "user", None, Some(change)),
            "other:x:1000:1234::/home/other:/bin/sh\nuser:x:999:1234::/home/user:/bin/sh\n"
        );
    }

    #[test]
    fn passwd_rewrite_keeps_comments_blank_lines_short_lines_and_a_missing_final_newline() {
        let text = "# header\n\nshort:x\nuser:x:1000:1000::/home/user:/bin/bash";
        let out = rewrite_passwd(text, "user", Some(IdChange { from: 1000, to: 42 }), None);
        assert_eq!(
            out,
            "# header\n\nshort:x\nuser:x:42:1000::/home/user:/bin/bash"
        );
    }

    #[test]
    fn passwd_rewrite_without_changes_is_the_identity() {
        assert_eq!(rewrite_passwd(PASSWD, "user", None, None), PASSWD);
    }

    #[test]
    fn group_rewrite_renumbers_only_the_named_group_at_its_old_gid() {
        let change = IdChange {
            from: 1000,
            to: 1234,
        };
        assert_eq!(
            rewrite_group(GROUP, "user", change),
            GROUP.replace("user:x:1000:", "user:x:1234:")
        );
        // Another group with the same gid, or the right group at another gid, is left alone.
        let text = "alias:x:1000:\nuser:x:1001:a,b\n";
        assert_eq!(rewrite_group(text, "user", change), text);
        // Members are kept.
        assert_eq!(
            rewrite_group("user:x:1000:a,b\n", "user", change),
            "user:x:1234:a,b\n"
        );
    }

    #[test]
    fn leading_zeros_and_spaces_do_not_confuse_the_id_match() {
        // A numeric field is compared as a number, so "01000" is uid 1000 (what libc sees).
        let out = rewrite_passwd(
            "user:x:01000:1000::/h:/bin/sh\n",
            "user",
            Some(IdChange { from: 1000, to: 7 }),
            None,
        );
        assert_eq!(out, "user:x:7:1000::/h:/bin/sh\n");
        // A field that is not a number never matches.
        let text = "user:x: 1000:1000::/h:/bin/sh\n";
        assert_eq!(
            rewrite_passwd(text, "user", Some(IdChange { from: 1000, to: 7 }), None),
            text
        );
    }
}
