//! What fixuid does about the runtime ids, decided from the configuration and the account
//! files alone (no I/O), so every case can be tested as a function.
//!
//! For the uid (and the same way for the gid):
//! - it already belongs to the configured user: nothing to rename, nothing to hand over;
//! - it belongs to no account: the configured user is renumbered to it, and files owned by the
//!   old ids under the configured paths are handed over;
//! - it belongs to another account (say `nobody`): that account is kept as it is, the
//!   configured user keeps its id, and files owned by the old ids are still handed over to the
//!   runtime ids, so the process can use them. This is what the original does; fixuid warns.

use std::fmt;

use crate::accounts::{
    GroupEntry, IdChange, PasswdEntry, group_by_gid, group_by_name, user_by_name, user_by_uid,
};
use crate::config::Config;

/// How one runtime id relates to the accounts in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fit {
    /// The runtime id is the configured account's own id.
    Matches,
    /// No account has the runtime id: the configured one is renumbered.
    Renumber(IdChange),
    /// Another account (named here) already has the runtime id.
    Taken(String),
}

/// Everything fixuid will do for one start of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The configured user's name.
    pub user: String,
    /// The configured group's name.
    pub group: String,
    /// The configured user's uid and the configured group's gid in the image.
    pub image_ids: (u32, u32),
    /// The ids the container runs as.
    pub runtime_ids: (u32, u32),
    /// What happens to the uid.
    pub uid: Fit,
    /// What happens to the gid.
    pub gid: Fit,
}

/// Why no plan can be made. `Display` gives the message fixuid prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// The configured user is not in `/etc/passwd`.
    UnknownUser(String),
    /// The configured group is not in `/etc/group`.
    UnknownGroup(String),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::UnknownUser(u) => write!(f, "user '{u}' does not exist in /etc/passwd"),
            PlanError::UnknownGroup(g) => write!(f, "group '{g}' does not exist in /etc/group"),
        }
    }
}

impl Plan {
    /// Decides what to do for a process running as `uid:gid`.
    pub fn new(
        config: &Config,
        passwd: &[PasswdEntry],
        groups: &[GroupEntry],
        uid: u32,
        gid: u32,
    ) -> Result<Plan, PlanError> {
        let image_uid = user_by_name(passwd, &config.user)
            .ok_or_else(|| PlanError::UnknownUser(config.user.clone()))?
            .uid;
        let image_gid = group_by_name(groups, &config.group)
            .ok_or_else(|| PlanError::UnknownGroup(config.group.clone()))?
            .gid;
        let uid_fit = match user_by_uid(passwd, uid) {
            None => Fit::Renumber(IdChange {
                from: image_uid,
                to: uid,
            }),
            Some(e) if e.name == config.user => Fit::Matches,
            Some(e) => Fit::Taken(e.name.clone()),
        };
        let gid_fit = match group_by_gid(groups, gid) {
            None => Fit::Renumber(IdChange {
                from: image_gid,
                to: gid,
            }),
            Some(e) if e.name == config.group => Fit::Matches,
            Some(e) => Fit::Taken(e.name.clone()),
        };
        Ok(Plan {
            user: config.user.clone(),
            group: config.group.clone(),
            image_ids: (image_uid, image_gid),
            runtime_ids: (uid, gid),
            uid: uid_fit,
            gid: gid_fit,
        })
    }

    /// The uid change to write into `/etc/passwd`, if any.
    pub fn uid_change(&self) -> Option<IdChange> {
        match self.uid {
            Fit::Renumber(c) => Some(c),
            _ => None,
        }
    }

    /// The gid change to write into `/etc/passwd` and `/etc/group`, if any.
    pub fn gid_change(&self) -> Option<IdChange> {
        match self.gid {
            Fit::Renumber(c) => Some(c),
            _ => None,
        }
    }

    /// Whether files owned by the image ids must be handed over to the runtime ids.
    pub fn needs_chown(&self) -> bool {
        self.uid != Fit::Matches || self.gid != Fit::Matches
    }

    /// The informational lines fixuid prints (unless `-q`).
    pub fn info(&self) -> Vec<String> {
        let (uid, gid) = self.runtime_ids;
        let mut out = Vec::new();
        match &self.uid {
            Fit::Matches => out.push(format!(
                "runtime UID '{uid}' already matches container user '{}' UID",
                self.user
            )),
            Fit::Renumber(_) => out.push(format!("updating user '{}' to UID '{uid}'", self.user)),
            Fit::Taken(_) => {}
        }
        match &self.gid {
            Fit::Matches => out.push(format!(
                "runtime GID '{gid}' already matches container group '{}' GID",
                self.group
            )),
            Fit::Renumber(_) => out.push(format!("updating group '{}' to GID '{gid}'", self.group)),
            Fit::Taken(_) => {}
        }
        out
    }

    /// The warnings fixuid prints even with `-q`: outcomes a caller would not expect.
    pub fn warnings(&self) -> Vec<String> {
        let (uid, gid) = self.runtime_ids;
        let mut out = Vec::new();
        if let Fit::Taken(other) = &self.uid {
            out.push(format!(
                "runtime UID '{uid}' belongs to existing user '{other}': '{}' keeps UID '{}', \
                 the process runs as '{other}', and files of '{}' under the configured paths \
                 are handed over to UID '{uid}'",
                self.user, self.image_ids.0, self.user
            ));
        }
        if let Fit::Taken(other) = &self.gid {
            out.push(format!(
                "runtime GID '{gid}' belongs to existing group '{other}': '{}' keeps GID '{}'",
                self.group, self.image_ids.1
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{group_entries, passwd_entries};

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        user:x:1000:1000::/home/user:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\nuser:x:1000:\n";

    fn config() -> Config {
        Config::parse("user: user\ngroup: user\npaths: [/home/user]\n").unwrap()
    }

    fn plan(uid: u32, gid: u32) -> Result<Plan, PlanError> {
        Plan::new(
            &config(),
            &passwd_entries(PASSWD),
            &group_entries(GROUP),
            uid,
            gid,
        )
    }

    #[test]
    fn the_image_ids_need_nothing() {
        let p = plan(1000, 1000).unwrap();
        assert_eq!((p.uid.clone(), p.gid.clone()), (Fit::Matches, Fit::Matches));
        assert!(!p.needs_chown());
        assert_eq!(p.uid_change(), None);
        assert!(p.warnings().is_empty());
    }

    #[test]
    fn unknown_runtime_ids_renumber_the_user_and_group() {
        let p = plan(1234, 5678).unwrap();
        assert_eq!(
            p.uid_change(),
            Some(IdChange {
                from: 1000,
                to: 1234
            })
        );
        assert_eq!(
            p.gid_change(),
            Some(IdChange {
                from: 1000,
                to: 5678
            })
        );
        assert!(p.needs_chown());
        assert_eq!(
            p.info(),
            vec![
                "updating user 'user' to UID '1234'".to_owned(),
                "updating group 'user' to GID '5678'".to_owned()
            ]
        );
    }

    #[test]
    fn only_the_gid_differs() {
        let p = plan(1000, 1234).unwrap();
        assert_eq!(p.uid, Fit::Matches);
        assert!(p.gid_change().is_some());
        assert!(p.needs_chown());
    }

    #[test]
    fn a_runtime_uid_of_another_account_keeps_that_account_and_warns() {
        let p = plan(65534, 65534).unwrap();
        assert_eq!(p.uid, Fit::Taken("nobody".into()));
        assert_eq!(p.gid, Fit::Taken("nogroup".into()));
        assert_eq!(p.uid_change(), None);
        assert_eq!(p.gid_change(), None);
        // Files of `user` still go to the runtime ids, as in the original.
        assert!(p.needs_chown());
        let w = p.warnings();
        assert_eq!(w.len(), 2);
        assert!(w[0].contains("belongs to existing user 'nobody'"), "{w:?}");
        assert!(
            w[1].contains("belongs to existing group 'nogroup'"),
            "{w:?}"
        );
    }

    #[test]
    fn gid_zero_is_just_another_existing_group() {
        let p = plan(1234, 0).unwrap();
        assert!(p.uid_change().is_some());
        assert_eq!(p.gid, Fit::Taken("root".into()));
    }

    #[test]
    fn unknown_user_or_group_is_an_error_naming_it() {
        let passwd = passwd_entries(PASSWD);
        let groups = group_entries(GROUP);
        let mut c = config();
        c.user = "ghost".into();
        assert_eq!(
            Plan::new(&c, &passwd, &groups, 1, 1)
                .unwrap_err()
                .to_string(),
            "user 'ghost' does not exist in /etc/passwd"
        );
        let mut c = config();
        c.group = "ghosts".into();
        assert_eq!(
            Plan::new(&c, &passwd, &groups, 1, 1)
                .unwrap_err()
                .to_string(),
            "group 'ghosts' does not exist in /etc/group"
        );
    }
}
