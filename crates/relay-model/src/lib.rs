//! The relay's shared vocabulary, typed once for every layer: a session's [`SessionStatus`] with
//! the lifecycle's rules (`creating → active ⇄ idle → archived`, plus `error`), and its
//! [`Mode`]. The store keeps them in their columns, the session domain moves sessions through the
//! lifecycle by these rules, and the API shows their protocol names. Pure: no I/O.

use std::fmt;
use std::str::FromStr;

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionStatus {
    /// Its sandbox is being provisioned.
    Creating,
    /// Its sandbox runs; clients may connect.
    Active,
    /// Its sandbox is suspended after inactivity; activate resumes it.
    Idle,
    /// Closed for good; its sandbox is gone.
    Archived,
    /// Provisioning failed; only a restart or archive moves it on.
    Error,
}

impl SessionStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [SessionStatus; 5] = [
        SessionStatus::Creating,
        SessionStatus::Active,
        SessionStatus::Idle,
        SessionStatus::Archived,
        SessionStatus::Error,
    ];

    /// The protocol's (and the database's) name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Creating => "creating",
            SessionStatus::Active => "active",
            SessionStatus::Idle => "idle",
            SessionStatus::Archived => "archived",
            SessionStatus::Error => "error",
        }
    }

    /// Whether the lifecycle allows moving from this status to `next`.
    pub fn can_become(self, next: SessionStatus) -> bool {
        use SessionStatus::*;
        match (self, next) {
            (Archived, _) => false,
            (_, Archived) => true,
            // Provisioning ends in a running sandbox or a failure.
            (Creating, Active | Error) => true,
            // Suspended after inactivity, resumed by activate; a restart provisions anew.
            (Active, Idle | Creating | Error) => true,
            (Idle, Active | Creating | Error) => true,
            // Only a restart (or archive) leaves a failure.
            (Error, Creating) => true,
            _ => false,
        }
    }

    /// The transition to `next`, or why the lifecycle refuses it.
    pub fn to(self, next: SessionStatus) -> Result<Transition, IllegalTransition> {
        if self.can_become(next) {
            Ok(Transition {
                from: self,
                to: next,
            })
        } else {
            Err(IllegalTransition {
                from: self,
                to: next,
            })
        }
    }

    /// Whether a session in this status may own a sandbox and start one (it is not archived).
    pub fn is_live(self) -> bool {
        self != SessionStatus::Archived
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SessionStatus {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionStatus::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue {
                kind: "session status",
                value: s.to_owned(),
            })
    }
}

/// A move the lifecycle allows: the only way to change a session's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    from: SessionStatus,
    to: SessionStatus,
}

impl Transition {
    /// The status the session must be in.
    pub fn from(self) -> SessionStatus {
        self.from
    }

    /// The status it moves to.
    pub fn to(self) -> SessionStatus {
        self.to
    }
}

/// A move the lifecycle refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a session cannot go from {from} to {to}")]
pub struct IllegalTransition {
    /// Where the session is.
    pub from: SessionStatus,
    /// Where it was asked to go.
    pub to: SessionStatus,
}

/// The kind of session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// A conversation with a scratch workspace.
    Chat,
    /// Work on a repository.
    Code,
}

impl Mode {
    /// Both modes.
    pub const ALL: [Mode; 2] = [Mode::Chat, Mode::Code];

    /// The protocol's (and the database's) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Chat => "chat",
            Mode::Code => "code",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue {
                kind: "session mode",
                value: s.to_owned(),
            })
    }
}

/// Where an extension configuration applies: every session, the sessions of one mode, or one
/// session. Later scopes win when a package is configured in several.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExtensionScope {
    /// Every session.
    Global,
    /// Chat sessions.
    Chat,
    /// Code sessions.
    Code,
    /// One session.
    Session,
}

impl ExtensionScope {
    /// Every scope, in the order they are applied.
    pub const ALL: [ExtensionScope; 4] = [
        ExtensionScope::Global,
        ExtensionScope::Chat,
        ExtensionScope::Code,
        ExtensionScope::Session,
    ];

    /// The protocol's (and the database's) name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtensionScope::Global => "global",
            ExtensionScope::Chat => "chat",
            ExtensionScope::Code => "code",
            ExtensionScope::Session => "session",
        }
    }

    /// The scope of the sessions of `mode`.
    pub fn of_mode(mode: Mode) -> ExtensionScope {
        match mode {
            Mode::Chat => ExtensionScope::Chat,
            Mode::Code => ExtensionScope::Code,
        }
    }

    /// How late the scope is applied: global, then the mode's, then the session's.
    pub fn priority(self) -> u8 {
        match self {
            ExtensionScope::Global => 0,
            ExtensionScope::Chat | ExtensionScope::Code => 1,
            ExtensionScope::Session => 2,
        }
    }
}

impl fmt::Display for ExtensionScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExtensionScope {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ExtensionScope::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue {
                kind: "extension scope",
                value: s.to_owned(),
            })
    }
}

/// A name that is none of a type's values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownValue {
    /// What was being read (`session status`, `session mode`).
    pub kind: &'static str,
    /// What was found.
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::SessionStatus::*;
    use super::*;

    #[test]
    fn an_archived_session_never_comes_back() {
        for next in SessionStatus::ALL {
            assert!(!Archived.can_become(next), "{next}");
        }
    }

    #[test]
    fn every_live_session_can_be_archived() {
        for from in [Creating, Active, Idle, Error] {
            assert!(from.can_become(Archived), "{from}");
        }
    }

    #[test]
    fn provisioning_ends_in_active_or_error() {
        assert!(Creating.can_become(Active));
        assert!(Creating.can_become(Error));
        assert!(!Creating.can_become(Idle));
        assert!(!Creating.can_become(Creating));
    }

    #[test]
    fn active_and_idle_alternate_and_both_restart() {
        assert!(Active.can_become(Idle));
        assert!(Idle.can_become(Active));
        assert!(Active.can_become(Creating));
        assert!(Idle.can_become(Creating));
        assert!(!Active.can_become(Active));
        assert!(!Idle.can_become(Idle));
    }

    #[test]
    fn an_errored_session_only_leaves_by_restart_or_archive() {
        assert!(Error.can_become(Creating));
        assert!(Error.can_become(Archived));
        for next in [Active, Idle, Error] {
            assert!(!Error.can_become(next), "{next}");
        }
    }

    #[test]
    fn the_whole_table_has_exactly_the_documented_moves() {
        let allowed: Vec<(SessionStatus, SessionStatus)> = SessionStatus::ALL
            .into_iter()
            .flat_map(|a| SessionStatus::ALL.into_iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.can_become(*b))
            .collect();
        assert_eq!(
            allowed,
            [
                (Creating, Active),
                (Creating, Archived),
                (Creating, Error),
                (Active, Creating),
                (Active, Idle),
                (Active, Archived),
                (Active, Error),
                (Idle, Creating),
                (Idle, Active),
                (Idle, Archived),
                (Idle, Error),
                (Error, Creating),
                (Error, Archived),
            ]
        );
    }

    #[test]
    fn refused_moves_say_which() {
        let e = Error.to(Active).unwrap_err();
        assert_eq!(e.to_string(), "a session cannot go from error to active");
        let t = Idle.to(Active).unwrap();
        assert_eq!((t.from(), t.to()), (Idle, Active));
    }

    #[test]
    fn statuses_and_modes_round_trip_through_their_names() {
        for s in SessionStatus::ALL {
            assert_eq!(s.as_str().parse::<SessionStatus>(), Ok(s));
        }
        for m in Mode::ALL {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(m));
        }
        let e = "deleted".parse::<SessionStatus>().unwrap_err();
        assert_eq!(e.to_string(), "unknown session status \"deleted\"");
        assert!("Chat".parse::<Mode>().is_err());
    }

    #[test]
    fn extension_scopes_round_trip_and_apply_global_then_mode_then_session() {
        for scope in ExtensionScope::ALL {
            assert_eq!(scope.as_str().parse::<ExtensionScope>(), Ok(scope));
        }
        assert!("Global".parse::<ExtensionScope>().is_err());
        assert_eq!(ExtensionScope::of_mode(Mode::Code), ExtensionScope::Code);
        assert!(ExtensionScope::Global.priority() < ExtensionScope::Chat.priority());
        assert!(ExtensionScope::Code.priority() < ExtensionScope::Session.priority());
    }
}
