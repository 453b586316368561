//! Test-only prompt messages that make the fake misbehave on purpose: floods, huge lines, non-JSON output, stderr
//! chatter, crashes and slow runs. Real pi has nothing like them; they exist so the relay's tests and benchmarks can
//! exercise those paths without a real model.
//!
//! | message      | output after the prompt's response                                                         |
//! |--------------|--------------------------------------------------------------------------------------------|
//! | `flood N`    | `agent_start`, N `message_update` text deltas of `"x"`, `agent_end`, `agent_settled`       |
//! | `big N`      | `agent_start`, one `tool_execution_update` with N bytes of `a`, `agent_end`, `agent_settled` |
//! | `noise`      | the non-JSON line `npm WARN something`, `agent_settled`                                    |
//! | `stderr TEXT`| TEXT on stderr, `agent_settled`                                                            |
//! | `exit N`     | nothing: the fake exits with code N (no response either, like a crash)                     |
//! | `sleep MS`   | `agent_start`, then after MS ms `agent_end`, `agent_settled`; `abort` ends it early        |
//! | `pace N US`  | `agent_start`, N `flood`-shaped `message_update`s one every US µs, each flushed on its own and |
//! |              | stamped with `"sentAtNs"` (CLOCK_REALTIME ns since the epoch), `agent_end`, `agent_settled`  |
//!
//! Anything else, including these words with a malformed argument, is an ordinary prompt.

/// A test-only prompt, parsed from a `prompt` command's `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hook {
    Flood(u64),
    Big(usize),
    Noise,
    Stderr(String),
    Exit(i32),
    Sleep(u64),
    /// `pace N MICROS`: N events, one every MICROS µs (the latency benchmark's source).
    Pace {
        count: u64,
        interval_us: u64,
    },
}

impl Hook {
    pub(crate) fn parse(message: &str) -> Option<Hook> {
        if message == "noise" {
            return Some(Hook::Noise);
        }
        let (word, arg) = message.split_once(' ')?;
        match word {
            "flood" => arg.parse().ok().map(Hook::Flood),
            "big" => arg.parse().ok().map(Hook::Big),
            "stderr" => Some(Hook::Stderr(arg.to_owned())),
            "exit" => arg.parse().ok().map(Hook::Exit),
            "sleep" => arg.parse().ok().map(Hook::Sleep),
            "pace" => {
                let (count, interval) = arg.split_once(' ')?;
                Some(Hook::Pace {
                    count: count.parse().ok()?,
                    interval_us: interval.parse().ok()?,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Hook;

    #[test]
    fn hook_words_need_a_well_formed_argument() {
        assert_eq!(Hook::parse("flood 10"), Some(Hook::Flood(10)));
        assert_eq!(Hook::parse("big 70000"), Some(Hook::Big(70_000)));
        assert_eq!(Hook::parse("noise"), Some(Hook::Noise));
        assert_eq!(
            Hook::parse("stderr two words"),
            Some(Hook::Stderr("two words".into()))
        );
        assert_eq!(Hook::parse("exit -3"), Some(Hook::Exit(-3)));
        assert_eq!(Hook::parse("sleep 250"), Some(Hook::Sleep(250)));
        assert_eq!(
            Hook::parse("pace 2000 500"),
            Some(Hook::Pace {
                count: 2000,
                interval_us: 500
            })
        );
        assert_eq!(Hook::parse("pace 2000"), None);
        assert_eq!(Hook::parse("pace 2000 fast"), None);
        assert_eq!(Hook::parse("flood lots"), None);
        assert_eq!(Hook::parse("sleep"), None);
        assert_eq!(Hook::parse("Run echo hi please"), None);
    }
}
