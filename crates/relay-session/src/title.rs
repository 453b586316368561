//! Session titles from the first prompt, as the pi-apps relay makes them.

use relay_model::Mode;

const MAX_TITLE_CHARS: usize = 72;

/// A title: the whitespace-collapsed first prompt without surrounding quotes, cut to 72
/// characters with an ellipsis; "Chat session" / "Code session" when there is no prompt.
pub fn session_title(first_prompt: Option<&str>, mode: Mode) -> String {
    let collapsed = first_prompt
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let quotes: &[char] = &['\'', '"', '`'];
    let trimmed = collapsed
        .trim_start_matches(|c: char| quotes.contains(&c) || c.is_whitespace())
        .trim_end_matches(|c: char| quotes.contains(&c) || c.is_whitespace());
    if trimmed.is_empty() {
        return match mode {
            Mode::Chat => "Chat session".into(),
            Mode::Code => "Code session".into(),
        };
    }
    if trimmed.chars().count() <= MAX_TITLE_CHARS {
        return trimmed.to_owned();
    }
    let cut: String = trimmed.chars().take(MAX_TITLE_CHARS).collect();
    format!("{}…", cut.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_prompt_gives_the_mode_default() {
        assert_eq!(session_title(None, Mode::Chat), "Chat session");
        assert_eq!(session_title(Some("  \n "), Mode::Code), "Code session");
    }

    #[test]
    fn whitespace_collapses_and_quotes_are_stripped() {
        assert_eq!(
            session_title(Some("  \"Fix   the\nbug\"  "), Mode::Chat),
            "Fix the bug"
        );
    }

    #[test]
    fn long_prompts_are_cut_at_72_characters_with_an_ellipsis() {
        let t = session_title(Some(&"é".repeat(100)), Mode::Chat);
        assert_eq!(t.chars().count(), 73);
        assert!(t.ends_with('…'));
    }
}
