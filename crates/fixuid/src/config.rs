//! `/etc/fixuid/config.yml`: which account to remap (`user`, `group`) and where to look for
//! files to hand over (`paths`). The file is YAML, but fixuid's configuration only ever needs a
//! few top-level keys holding strings or lists of strings, so this module reads that subset by
//! hand instead of pulling a YAML library into a setuid binary. Anything outside the subset is
//! refused with its line number rather than guessed at.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// A parsed value: the subset of YAML this reader understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// An empty value, `~` or `null`.
    Null,
    /// A plain, single-quoted or double-quoted scalar.
    Scalar(String),
    /// A block (`- item`) or flow (`[a, b]`) sequence of scalars.
    List(Vec<String>),
}

/// A syntax error, with the 1-based line it was found on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong there.
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// What fixuid needs from its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Name of the account whose uid becomes the runtime uid.
    pub user: String,
    /// Name of the group whose gid becomes the runtime gid.
    pub group: String,
    /// Absolute paths searched for files owned by the old ids. Defaults to `/` when the key is
    /// absent, as in the original.
    pub paths: Vec<PathBuf>,
}

/// Why a configuration cannot be used. `Display` gives the message fixuid prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The text is not in the YAML subset this reader understands.
    Syntax(SyntaxError),
    /// `user` or `group` is absent or empty.
    MissingKey(&'static str),
    /// `user` or `group` is not a single string.
    NotAString(&'static str),
    /// `paths` is not a list of absolute paths.
    MalformedPaths(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Syntax(e) => write!(f, "{e}"),
            ConfigError::MissingKey(k) => write!(f, "cannot find key '{k}'"),
            ConfigError::NotAString(k) => write!(f, "key '{k}' must be a single string"),
            ConfigError::MalformedPaths(why) => write!(
                f,
                "key 'paths' is malformed ({why}); it should be a list of absolute paths"
            ),
        }
    }
}

impl Config {
    /// Parses and validates a configuration file's text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let map = parse_yaml_subset(text).map_err(ConfigError::Syntax)?;
        let string = |key: &'static str| match map.get(key) {
            None | Some(Value::Null) => Err(ConfigError::MissingKey(key)),
            Some(Value::Scalar(s)) if s.is_empty() => Err(ConfigError::MissingKey(key)),
            Some(Value::Scalar(s)) => Ok(s.clone()),
            Some(Value::List(_)) => Err(ConfigError::NotAString(key)),
        };
        let user = string("user")?;
        let group = string("group")?;
        let paths = match map.get("paths") {
            // The original walks the whole filesystem when no paths are configured.
            None => vec![PathBuf::from("/")],
            Some(Value::Null) => {
                return Err(ConfigError::MalformedPaths("it has no items".into()));
            }
            Some(Value::Scalar(s)) => {
                return Err(ConfigError::MalformedPaths(format!(
                    "'{s}' is a string, not a list"
                )));
            }
            Some(Value::List(items)) => items
                .iter()
                .map(|p| {
                    if p.starts_with('/') {
                        Ok(PathBuf::from(p))
                    } else {
                        Err(ConfigError::MalformedPaths(format!(
                            "'{p}' is not an absolute path"
                        )))
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Config { user, group, paths })
    }
}

/// Reads the YAML subset: a mapping of top-level keys to scalars, flow sequences or block
/// sequences of scalars. Comments, `---`, blank lines, quoting and `null`/`~` are understood.
/// Duplicate keys, nesting, anchors, tags and block scalars are errors.
pub fn parse_yaml_subset(text: &str) -> Result<BTreeMap<String, Value>, SyntaxError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut map = BTreeMap::new();
    // The key whose block sequence is being read, and the indentation of its items.
    let mut open: Option<(String, Option<usize>)> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let err = |message: String| SyntaxError { line, message };
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let content = strip_comment(raw).map_err(err)?.trim_end();
        if content.trim().is_empty() {
            continue;
        }
        let indent = content.len() - content.trim_start_matches(' ').len();
        if content[indent..].starts_with('\t') {
            return Err(err("tabs cannot indent YAML".into()));
        }
        let body = &content[indent..];
        if indent == 0 && (body == "---" || body.starts_with("--- ")) {
            if !map.is_empty() || open.is_some() {
                return Err(err("only one document is allowed".into()));
            }
            continue;
        }
        if indent == 0 && body == "..." {
            break;
        }
        if body == "-" || body.starts_with("- ") {
            let Some((key, item_indent)) = open.as_mut() else {
                return Err(err("a list item must follow a `key:` line".into()));
            };
            match item_indent {
                None => *item_indent = Some(indent),
                Some(i) if *i != indent => {
                    return Err(err("list items must all have the same indentation".into()));
                }
                Some(_) => {}
            }
            let item = match parse_scalar(body[1..].trim()).map_err(err)? {
                Value::Scalar(s) => s,
                Value::Null => String::new(),
                Value::List(_) => return Err(err("nested lists are not supported".into())),
            };
            // The key was recorded as null; its first item makes it a list.
            let slot = map.entry(key.clone()).or_insert(Value::Null);
            if *slot == Value::Null {
                *slot = Value::List(Vec::new());
            }
            if let Value::List(items) = slot {
                items.push(item);
            }
            continue;
        }
        if indent > 0 {
            return Err(err(
                "nested mappings are not supported (indented line that is not a list item)".into(),
            ));
        }
        // A new top-level key closes the list being read.
        open = None;
        let (key, rest) = split_key(body).map_err(err)?;
        if map.contains_key(&key) {
            return Err(err(format!("key '{key}' appears twice")));
        }
        let rest = rest.trim();
        if rest.is_empty() {
            // Either a block sequence follows, or the value is null.
            map.insert(key.clone(), Value::Null);
            open = Some((key, None));
        } else {
            map.insert(key, parse_value(rest).map_err(err)?);
        }
    }
    Ok(map)
}

/// Removes a comment: `#` at the start of the line or after whitespace, outside quotes.
fn strip_comment(line: &str) -> Result<&str, String> {
    let mut quote: Option<char> = None;
    let mut prev_space = true;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (None, '#') if prev_space => return Ok(&line[..i]),
            (None, '\'' | '"') if prev_space || at_value_start(line, i) => quote = Some(c),
            (Some('\''), '\'') => {
                // '' is an escaped quote inside a single-quoted scalar.
                if chars.peek().is_some_and(|&(_, n)| n == '\'') {
                    chars.next();
                } else {
                    quote = None;
                }
            }
            (Some('"'), '\\') => {
                chars.next();
            }
            (Some('"'), '"') => quote = None,
            _ => {}
        }
        prev_space = c == ' ' || c == '\t';
    }
    if quote.is_some() {
        return Err("unterminated quoted string".into());
    }
    Ok(line)
}

/// Whether position `i` starts a value: right after `[`, `,` or `- ` (quotes may open there
/// without a space before them).
fn at_value_start(line: &str, i: usize) -> bool {
    matches!(
        line[..i].trim_end().chars().last(),
        Some('[' | ',' | ':' | '-')
    )
}

fn split_key(body: &str) -> Result<(String, &str), String> {
    if let Some(q) = body.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = body[1..]
            .find(q)
            .ok_or_else(|| "unterminated quoted key".to_owned())?
            + 1;
        let rest = body[end + 1..]
            .strip_prefix(':')
            .ok_or_else(|| "expected ':' after the key".to_owned())?;
        if !(rest.is_empty() || rest.starts_with(' ')) {
            return Err("expected a space after ':'".into());
        }
        return Ok((body[1..end].to_owned(), rest));
    }
    let colon = body
        .find(": ")
        .or_else(|| body.ends_with(':').then(|| body.len() - 1))
        .ok_or_else(|| format!("expected `key: value`, found '{body}'"))?;
    let key = &body[..colon];
    if key.is_empty() || key.contains(['{', '}', '[', ']', ',', '&', '*', '!', '|', '>', '?']) {
        return Err(format!("unsupported key '{key}'"));
    }
    Ok((key.to_owned(), &body[colon + 1..]))
}

fn parse_value(text: &str) -> Result<Value, String> {
    if let Some(inner) = text.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| "a flow list must end with ']' on the same line".to_owned())?;
        return split_flow(inner)?
            .into_iter()
            .map(|item| match parse_scalar(item.trim())? {
                Value::Scalar(s) => Ok(s),
                Value::Null => Ok(String::new()),
                Value::List(_) => Err("nested lists are not supported".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::List);
    }
    parse_scalar(text)
}

/// Splits the inside of `[...]` on commas outside quotes. `[]` has no items.
fn split_flow(inner: &str) -> Result<Vec<&str>, String> {
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut items = Vec::new();
    let mut quote: Option<char> = None;
    let mut start = 0;
    let mut chars = inner.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (None, '[' | ']' | '{' | '}') => {
                return Err("nested collections are not supported".into());
            }
            (None, ',') => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            (Some('"'), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    items.push(&inner[start..]);
    if items.last().is_some_and(|s| s.trim().is_empty()) && items.len() > 1 {
        // A trailing comma: `[a, b,]`.
        items.pop();
    }
    Ok(items)
}

fn parse_scalar(text: &str) -> Result<Value, String> {
    if text.is_empty() || matches!(text, "~" | "null" | "Null" | "NULL") {
        return Ok(Value::Null);
    }
    if let Some(inner) = text.strip_prefix('\'') {
        let inner = inner
            .strip_suffix('\'')
            .ok_or_else(|| "text after a closing quote".to_owned())?;
        if inner.replace("''", "").contains('\'') {
            return Err("text after a closing quote".into());
        }
        return Ok(Value::Scalar(inner.replace("''", "'")));
    }
    if let Some(inner) = text.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = inner.chars();
        loop {
            match chars.next() {
                None => return Err("unterminated double-quoted string".into()),
                Some('"') => break,
                Some('\\') => out.push(match chars.next() {
                    Some('\\') => '\\',
                    Some('"') => '"',
                    Some('/') => '/',
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some('r') => '\r',
                    Some('0') => '\0',
                    Some(' ') => ' ',
                    Some(c) => return Err(format!("unsupported escape '\\{c}'")),
                    None => return Err("unterminated double-quoted string".into()),
                }),
                Some(c) => out.push(c),
            }
        }
        if !chars.as_str().trim().is_empty() {
            return Err("text after a closing quote".into());
        }
        return Ok(Value::Scalar(out));
    }
    let first = text.chars().next().unwrap_or(' ');
    if matches!(
        first,
        '&' | '*' | '!' | '|' | '>' | '{' | '}' | '%' | '@' | '`' | '[' | ']' | ','
    ) {
        return Err(format!(
            "'{text}' starts with '{first}', a YAML feature fixuid does not support (quote the value)"
        ));
    }
    if text.contains(": ") || text.ends_with(':') {
        return Err(format!(
            "'{text}' looks like a nested mapping, which is not supported (quote the value)"
        ));
    }
    Ok(Value::Scalar(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(p: &[&str]) -> Vec<PathBuf> {
        p.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn the_seed_config_parses() {
        // Exactly what the seed's `printf` writes.
        let text =
            "user: user\ngroup: user\npaths:\n  - /home/user\n  - /workspace\n  - /data/agent\n";
        assert_eq!(
            Config::parse(text).unwrap(),
            Config {
                user: "user".into(),
                group: "user".into(),
                paths: paths(&["/home/user", "/workspace", "/data/agent"]),
            }
        );
    }

    #[test]
    fn paths_default_to_the_root_when_absent() {
        let c = Config::parse("user: docker\ngroup: docker\n").unwrap();
        assert_eq!(c.paths, paths(&["/"]));
    }

    #[test]
    fn comments_quotes_flow_lists_and_document_markers_are_understood() {
        let text = "---\n# remap the dev user\nuser: 'dev user' # trailing comment\n\
                    group: \"dev\\tgrp\"\npaths: [/a, '/b c', \"/d#e\",]\n...\nignored: [\n";
        let c = Config::parse(text).unwrap();
        assert_eq!(c.user, "dev user");
        assert_eq!(c.group, "dev\tgrp");
        assert_eq!(c.paths, paths(&["/a", "/b c", "/d#e"]));
    }

    #[test]
    fn block_lists_may_start_at_column_zero_and_hold_spaces_and_hashes() {
        let text = "user: u\ngroup: g\npaths:\n- /tmp/space dir\n- /x#y\n- '/it''s'\n";
        let c = Config::parse(text).unwrap();
        assert_eq!(c.paths, paths(&["/tmp/space dir", "/x#y", "/it's"]));
    }

    #[test]
    fn crlf_line_ends_and_a_bom_are_accepted() {
        let c = Config::parse("\u{feff}user: u\r\ngroup: g\r\npaths: []\r\n").unwrap();
        assert_eq!((c.user.as_str(), c.group.as_str()), ("u", "g"));
        assert!(c.paths.is_empty());
    }

    #[test]
    fn missing_or_empty_user_and_group_are_reported_by_name() {
        assert_eq!(
            Config::parse("group: g\n"),
            Err(ConfigError::MissingKey("user"))
        );
        assert_eq!(
            Config::parse("user:\ngroup: g\n"),
            Err(ConfigError::MissingKey("user"))
        );
        assert_eq!(
            Config::parse("user: u\ngroup: ''\n"),
            Err(ConfigError::MissingKey("group"))
        );
        assert_eq!(
            Config::parse("user: [a, b]\ngroup: g\n"),
            Err(ConfigError::NotAString("user"))
        );
        assert_eq!(Config::parse(""), Err(ConfigError::MissingKey("user")));
    }

    #[test]
    fn malformed_paths_are_refused() {
        for (text, why) in [
            ("user: u\ngroup: g\npaths: /home\n", "is a string"),
            ("user: u\ngroup: g\npaths:\n", "no items"),
            (
                "user: u\ngroup: g\npaths:\n  - home/user\n",
                "not an absolute path",
            ),
        ] {
            match Config::parse(text) {
                Err(ConfigError::MalformedPaths(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn unsupported_yaml_is_refused_with_its_line() {
        for (text, line, needle) in [
            ("user: u\n  nested: x\n", 2, "nested mappings"),
            ("user: u\nuser: v\n", 2, "appears twice"),
            ("- /a\n", 1, "must follow a `key:`"),
            ("user: &anchor u\n", 1, "does not support"),
            ("user: |\n", 1, "does not support"),
            ("user: 'u\n", 1, "unterminated"),
            ("user: \"u\\q\"\n", 1, "unsupported escape"),
            ("paths:\n  - /a\n    - /b\n", 3, "same indentation"),
            ("paths: [/a, [/b]]\n", 1, "nested"),
            ("paths: [/a\n", 1, "must end with ']'"),
            ("user u\n", 1, "expected `key: value`"),
            ("user:\t\n\tgroup: g\n", 2, "tabs"),
            ("paths:\n  - a: b\n", 2, "nested mapping"),
            ("user: 'a' b\n", 1, "after a closing quote"),
            ("a: 1\n---\n", 2, "one document"),
        ] {
            let e = parse_yaml_subset(text).expect_err(text);
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_ignored_like_the_original() {
        let c = Config::parse("user: u\ngroup: g\nextra: [1, 2]\nmore: x\n").unwrap();
        assert_eq!(c.user, "u");
    }

    #[test]
    fn null_spellings_are_null() {
        let m = parse_yaml_subset("a: ~\nb: null\nc:\nd: 'null'\n").unwrap();
        assert_eq!(m["a"], Value::Null);
        assert_eq!(m["b"], Value::Null);
        assert_eq!(m["c"], Value::Null);
        assert_eq!(m["d"], Value::Scalar("null".into()));
    }
}
