//! The session lifecycle as a state machine: `creating → active ⇄ idle → archived`, plus
//! `error`. Pure; the service decides when to move and this decides whether it may.

use std::fmt;
use std::str::FromStr;

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionStatus {
    /// Its sandbox is being provisioned.
    Creating,
    /// Its sandbox runs; clients may connect.
    Active,
    /// Its sandbox is paused.
    Idle,
    /// Closed for good; its sandbox is gone.
    Archived,
    /// Provisioning failed.
    Error,
}

impl SessionStatus {
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

    /// Whether moving to `next` is allowed.
    pub fn can_become(self, next: SessionStatus) -> bool {
        use SessionStatus::*;
        match (self, next) {
            (a, b) if a == b => true,
            (Archived, _) => false,
            (_, Archived) => true,
            (Creating, Active | Error) => true,
            (Active, Idle | Error | Creating) => true,
            (Idle, Active | Error | Creating) => true,
            (Error, Creating) => true,
            _ => false,
        }
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of the five.
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownStatus(pub String);

impl FromStr for SessionStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "creating" => SessionStatus::Creating,
            "active" => SessionStatus::Active,
            "idle" => SessionStatus::Idle,
            "archived" => SessionStatus::Archived,
            "error" => SessionStatus::Error,
            other => return Err(UnknownStatus(other.to_owned())),
        })
    }
}

/// The kind of session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A conversation with a scratch workspace.
    Chat,
    /// Work on a repository.
    Code,
}

impl Mode {
    /// The protocol's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Chat => "chat",
            Mode::Code => "code",
        }
    }

    /// Parses `chat` or `code`.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "chat" => Some(Mode::Chat),
            "code" => Some(Mode::Code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SessionStatus::*;
    use super::*;

    #[test]
    fn an_archived_session_never_comes_back() {
        for next in [Creating, Active, Idle, Error] {
            assert!(!Archived.can_become(next), "{next}");
        }
        assert!(Archived.can_become(Archived));
    }

    #[test]
    fn provisioning_ends_in_active_or_error() {
        assert!(Creating.can_become(Active));
        assert!(Creating.can_become(Error));
        assert!(!Creating.can_become(Idle));
    }

    #[test]
    fn active_and_idle_alternate() {
        assert!(Active.can_become(Idle));
        assert!(Idle.can_become(Active));
    }

    #[test]
    fn an_errored_session_only_leaves_by_restart_or_archive() {
        assert!(Error.can_become(Creating));
        assert!(Error.can_become(Archived));
        assert!(!Error.can_become(Active));
        assert!(!Error.can_become(Idle));
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in [Creating, Active, Idle, Archived, Error] {
            assert_eq!(s.as_str().parse::<SessionStatus>(), Ok(s));
        }
        assert_eq!(
            "deleted".parse::<SessionStatus>(),
            Err(UnknownStatus("deleted".into()))
        );
    }

    #[test]
    fn only_chat_and_code_are_modes() {
        assert_eq!(Mode::parse("chat"), Some(Mode::Chat));
        assert_eq!(Mode::parse("code"), Some(Mode::Code));
        assert_eq!(Mode::parse("Chat"), None);
    }
}
