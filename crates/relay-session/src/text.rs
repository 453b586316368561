//! Free text the relay keeps and shows back: names (of sessions, environments, secrets), settings
//! keys, client ids, and what a session remembers of its first prompt. Labels that clients give
//! must not hide what they say: control characters, bidirectional overrides and isolates, and
//! byte-order marks are refused (a name could otherwise display as something it is not, or break
//! a log line). Text that comes from pi or from a prompt is cleaned or cut instead of refused.

use crate::SessionError;

/// Longest name of a session, an environment or a secret, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest client id, in characters.
pub const MAX_CLIENT_ID_CHARS: usize = 128;
/// How much of a session's first prompt it keeps as `firstUserMessage` (it is in every session
/// list), in characters.
pub const MAX_FIRST_MESSAGE_CHARS: usize = 2000;
/// Longest system prompt of a session, in bytes (it is in every session object).
pub const MAX_SYSTEM_PROMPT_BYTES: usize = 64 * 1024;

/// Whether `c` may not appear in a label: control characters (C0, DEL, C1), the bidirectional
/// marks, embeddings, overrides and isolates, and the byte-order mark.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// Refuses a label (`field` names it in the message) holding a character that hides what it
/// says, or longer than `max_chars`.
pub fn check_label(field: &str, value: &str, max_chars: usize) -> Result<(), SessionError> {
    if value.chars().any(hidden) {
        return Err(SessionError::Invalid(format!(
            "{field} must not contain control characters, bidirectional overrides or byte-order \
             marks"
        )));
    }
    if value.chars().count() > max_chars {
        return Err(SessionError::Invalid(format!(
            "{field} must be at most {max_chars} characters"
        )));
    }
    Ok(())
}

/// At most `max_chars` characters of `text`, cut on a character boundary.
pub fn truncated(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

/// A label made from text the relay did not get from a person (pi's session names): the hiding
/// characters removed, trimmed, cut to [`MAX_NAME_CHARS`]. `None` if nothing is left.
pub fn cleaned_name(text: &str) -> Option<String> {
    let clean: String = text.chars().filter(|c| !hidden(*c)).collect();
    let clean = truncated(clean.trim(), MAX_NAME_CHARS);
    (!clean.is_empty()).then_some(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_with_hidden_characters_are_refused() {
        for bad in [
            "a\0b",
            "tab\there",
            "new\nline",
            "del\u{7f}",
            "c1\u{85}",
            "rtl\u{202e}txt",
            "iso\u{2066}x",
            "\u{feff}bom",
            "lrm\u{200e}",
        ] {
            let e = check_label("name", bad, 200).unwrap_err().to_string();
            assert!(
                e.starts_with("name must not contain control characters"),
                "{bad:?}: {e}"
            );
        }
        for good in ["My env", "Ünïcödé ✓", "日本語", "a-b_c.d"] {
            assert!(check_label("name", good, 200).is_ok(), "{good:?}");
        }
        assert_eq!(
            check_label("clientId", &"x".repeat(129), MAX_CLIENT_ID_CHARS)
                .unwrap_err()
                .to_string(),
            "clientId must be at most 128 characters"
        );
    }

    #[test]
    fn text_is_cut_on_character_boundaries() {
        assert_eq!(truncated("héllo", 2), "hé");
        assert_eq!(truncated("abc", 5), "abc");
        assert_eq!(
            truncated(&"é".repeat(3000), MAX_FIRST_MESSAGE_CHARS)
                .chars()
                .count(),
            2000
        );
    }

    #[test]
    fn names_from_pi_are_cleaned_not_refused() {
        assert_eq!(cleaned_name("  \u{202e}Fix\u{0}ed  "), Some("Fixed".into()));
        assert_eq!(cleaned_name("\u{feff} \n"), None);
        assert_eq!(
            cleaned_name(&"n".repeat(500)).unwrap().len(),
            MAX_NAME_CHARS
        );
    }
}
