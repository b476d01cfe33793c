//! `.env` values that python-dotenv, node's dotenv and docker compose's `env_file` all read back
//! as they were, and, for the rare value no form carries through all three, the form most of
//! them read exactly, with which ones those are.
//!
//! The three readers, as they behave (python-dotenv 1.2 and dotenv 18 were checked against
//! their sources and in tests/e2e; compose's rules are its documented ones):
//! - python-dotenv: `'…'` decodes `\\` and `\'`, and a backslash always pairs with the next
//!   character (a trailing one swallows the closing quote); `"…"` decodes `\\ \' \" \a \b \f
//!   \n \r \t \v`; unquoted, ` #…` is a comment and the end is trimmed. `${NAME}` (and
//!   `${NAME:-default}`) is then interpolated in every value, however quoted, with no escape.
//! - node's dotenv: `'…'`, `"…"` and `` `…` `` keep their text as it is (an inner quote needs a
//!   backslash before it, which stays), except `\n` and `\r` in `"…"`; unquoted, `#` anywhere
//!   starts a comment and the value is trimmed.
//! - docker compose (docs.docker.com, "Set environment variables", env file syntax): `'…'` is
//!   literal, without interpolation; `"…"` expands `$VAR`/`${VAR}` and the escapes `\n \r \t
//!   \\ \"`; unquoted values expand `$VAR`/`${VAR}`, ` #` starts an inline comment, and blanks
//!   around the value are dropped.
//!
//! Each reader is modelled below conservatively: a model says "exact" only where the rules
//! above make it so; anything doubtful counts as not exact.

/// A reader of `.env` files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    PythonDotenv,
    NodeDotenv,
    ComposeEnvFile,
}

pub const READERS: [Reader; 3] = [
    Reader::PythonDotenv,
    Reader::NodeDotenv,
    Reader::ComposeEnvFile,
];

impl std::fmt::Display for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reader::PythonDotenv => "python-dotenv",
            Reader::NodeDotenv => "node's dotenv",
            Reader::ComposeEnvFile => "docker compose's env_file",
        })
    }
}

/// A value as written after `NAME=`, and the readers that read it back exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub text: String,
    pub exact_for: Vec<Reader>,
}

/// The first form every reader reads back as `value`: single quotes, bare, double quotes;
/// else double quotes with `\\` and `\"`, or whichever of the forms most readers read exactly.
/// None when no form is safe: all three readers take quoted values over several lines, so a
/// form one of them might read as unclosed (a value ending in a backslash, which reads as an
/// escaped closing quote, and starting with a quote or a blank, which makes a bare value
/// quoted) could swallow the lines after it; such a value is refused, not written.
pub fn write(value: &str) -> Option<Written> {
    let unsafe_end = value.ends_with('\\');
    let unsafe_bare = value.is_empty()
        || value.starts_with(['\'', '"', '`'])
        || value.starts_with(blank)
        || value
            .trim_start_matches(blank)
            .starts_with(['\'', '"', '`']);
    let mut candidates = Vec::new();
    if !value.contains('\'') && !unsafe_end {
        candidates.push(format!("'{value}'"));
    }
    if !unsafe_bare {
        candidates.push(value.to_string());
    }
    if !value.contains('"') && !unsafe_end {
        candidates.push(format!("\"{value}\""));
    }
    if !unsafe_end {
        candidates.push(format!(
            "\"{}\"",
            value.replace('\\', "\\\\").replace('"', "\\\"")
        ));
    }
    let mut best: Option<Written> = None;
    for text in candidates {
        let exact_for: Vec<Reader> = READERS
            .into_iter()
            .filter(|r| read(*r, &text).as_deref() == Some(value))
            .collect();
        if exact_for.len() == READERS.len() {
            return Some(Written { text, exact_for });
        }
        if best
            .as_ref()
            .is_none_or(|b| exact_for.len() > b.exact_for.len())
        {
            best = Some(Written { text, exact_for });
        }
    }
    best
}

/// What `reader` makes of `text` written after `NAME=` on a line of its own; None where it is
/// not certain (an interpolation, an escape it may read otherwise, a form it may not parse).
pub fn read(reader: Reader, text: &str) -> Option<String> {
    match reader {
        Reader::PythonDotenv => python(text),
        Reader::NodeDotenv => node(text),
        Reader::ComposeEnvFile => compose(text),
    }
}

/// Blanks any of the readers may trim: wider than each one's own definition, on purpose.
fn blank(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{feff}' | '\u{180e}' | '\u{200b}')
}

/// `q…q` with no other `q` inside: the inside.
fn quoted_plain(text: &str, q: char) -> Option<&str> {
    let inner = text.strip_prefix(q)?.strip_suffix(q)?;
    (!inner.contains(q)).then_some(inner)
}

fn python(text: &str) -> Option<String> {
    let value = if let Some(rest) = text.strip_prefix('\'') {
        python_quoted(rest, '\'', |c| matches!(c, '\\' | '\''))?
    } else if let Some(rest) = text.strip_prefix('"') {
        python_quoted(rest, '"', |c| matches!(c, '\\' | '\'' | '"'))?
    } else {
        // Unquoted: `\s+#…` is a comment, the end is trimmed; a `#` anywhere is doubtful.
        if text.contains('#') || text.starts_with(blank) || text.ends_with(blank) {
            return None;
        }
        text.to_string()
    };
    // `${…}` is interpolated whatever the quotes.
    if value.find("${").is_some_and(|at| value[at..].contains('}')) {
        return None;
    }
    Some(value)
}

/// The rest of a python-dotenv quoted value after its opening quote: a backslash pairs with
/// the next character; the pairs `decoded` accepts lose their backslash, escapes that decode to
/// something else (`\n`, `\t`, …) count as doubtful, others stay as written.
fn python_quoted(rest: &str, quote: char, decoded: impl Fn(char) -> bool) -> Option<String> {
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let next = chars.next()?;
            if decoded(next) {
                out.push(next);
            } else if quote == '"' && "abfnrtv".contains(next) {
                return None;
            } else {
                out.push('\\');
                out.push(next);
            }
        } else if c == quote {
            return chars.as_str().is_empty().then_some(out);
        } else {
            out.push(c);
        }
    }
    None
}

fn node(text: &str) -> Option<String> {
    for q in ['\'', '"', '`'] {
        if text.starts_with(q) {
            let inner = quoted_plain(text, q)?;
            // `\n` and `\r` become line ends in double quotes; a value keeping them is doubtful.
            if q == '"' && (inner.contains("\\n") || inner.contains("\\r")) {
                return None;
            }
            return Some(inner.to_string());
        }
    }
    if text.contains('#') || text.starts_with(blank) || text.ends_with(blank) || text.is_empty() {
        return None;
    }
    Some(text.to_string())
}

fn compose(text: &str) -> Option<String> {
    if let Some(inner) = quoted_plain(text, '\'') {
        return Some(inner.to_string());
    }
    if text.starts_with('\'') {
        return None;
    }
    if text.contains('$') {
        return None;
    }
    if let Some(rest) = text.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    n @ ('\\' | '"') => out.push(n),
                    _ => return None,
                },
                '"' => return chars.as_str().is_empty().then_some(out),
                c => out.push(c),
            }
        }
        return None;
    }
    if text.contains('#')
        || text.starts_with(blank)
        || text.ends_with(blank)
        || text.starts_with('`')
    {
        return None;
    }
    Some(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_awkward_values_get_a_form_all_three_read() {
        for (value, text) in [
            ("s3cret", "'s3cret'"),
            ("p@ss:w/rd & more% #1 $HOME", "'p@ss:w/rd & more% #1 $HOME'"),
            ("a\\b", "'a\\b'"),
            ("it's", "it's"),
            ("it's #1", "\"it's #1\""),
            ("ünïcødé 'q' #✓", "\"ünïcødé 'q' #✓\""),
            ("a'b\"c", "a'b\"c"),
        ] {
            let w = write(value).unwrap();
            assert_eq!(w.text, text, "{value}");
            assert_eq!(w.exact_for, READERS, "{value}");
        }
    }

    #[test]
    fn values_no_form_carries_name_the_readers_that_read_them() {
        // Both quotes and a `#`: only escapes carry it, and node's dotenv keeps backslashes.
        let w = write("a'b\"c #d").unwrap();
        assert_eq!(w.text, "\"a'b\\\"c #d\"");
        assert_eq!(w.exact_for, [Reader::PythonDotenv, Reader::ComposeEnvFile]);
        // python-dotenv interpolates `${…}` in every form: the others read single quotes.
        let w = write("x${HOME}y").unwrap();
        assert_eq!(w.text, "'x${HOME}y'");
        assert_eq!(w.exact_for, [Reader::NodeDotenv, Reader::ComposeEnvFile]);
        // Two backslashes: python-dotenv halves them in single quotes.
        let w = write("a\\\\b 'c'").unwrap();
        assert!(w.exact_for.contains(&Reader::NodeDotenv), "{w:?}");
        // A trailing backslash reads as an escaped closing quote: bare, or nothing.
        assert_eq!(write("ab\\").unwrap().text, "ab\\");
        assert_eq!(write("'ab\\"), None);
        assert_eq!(write(" ab #\\"), None);
    }

    #[test]
    fn models_follow_the_documented_rules() {
        // python-dotenv: escapes in quotes, a backslash pairs with what follows.
        assert_eq!(python("'a\\'b'").as_deref(), Some("a'b"));
        assert_eq!(python("'a\\\\b'").as_deref(), Some("a\\b"));
        assert_eq!(python("'a\\'"), None);
        assert_eq!(python("\"a\\nb\""), None);
        assert_eq!(python("a #c"), None);
        // node: quotes kept as they are inside, `#` cuts a bare value.
        assert_eq!(node("'a\\b'").as_deref(), Some("a\\b"));
        assert_eq!(node("\"a\\\"b\""), None);
        assert_eq!(node("a#b"), None);
        // compose: single quotes literal, `$` expands elsewhere, ` #` is a comment.
        assert_eq!(compose("'$X #y'").as_deref(), Some("$X #y"));
        assert_eq!(compose("\"$X\""), None);
        assert_eq!(compose("a$X"), None);
        assert_eq!(compose("\"a\\\"b\\\\\"").as_deref(), Some("a\"b\\"));
        assert_eq!(compose("a #b"), None);
        assert_eq!(compose(" a"), None);
    }
}

/// Random passwords (no control characters, as install validates them): the form chosen is
/// read back by every reader it claims, and by all three unless the value needs what one of
/// them cannot carry.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    pub fn password() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("'".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("#".to_string()),
            Just(" ".to_string()),
            Just("$".to_string()),
            Just("${A}".to_string()),
            Just("`".to_string()),
            Just("=".to_string()),
            Just("\\n".to_string()),
            Just("é✓".to_string()),
            "[a-zA-Z0-9@:/?%&]{1,4}",
            any::<char>()
                .prop_filter("no control characters", |c| !c.is_control())
                .prop_map(|c| c.to_string()),
        ];
        prop::collection::vec(piece, 1..10).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(crate::fuzz_config(5000))]

        #[test]
        fn every_claimed_reader_reads_it_back(value in password()) {
            let Some(w) = write(&value) else {
                // Only a value ending in a backslash and not writable bare.
                prop_assert!(value.ends_with('\\'), "{:?}", value);
                return Ok(());
            };
            for reader in &w.exact_for {
                let back = read(*reader, &w.text);
                prop_assert_eq!(back.as_deref(), Some(value.as_str()));
            }
            // Plain values (no quote, no doubled or trailing backslash, no `${`) never need
            // a compromise.
            let hard = value.contains('\'')
                || value.contains("${")
                || value.contains("\\\\")
                || value.ends_with('\\');
            if !hard {
                prop_assert_eq!(w.exact_for.len(), READERS.len(), "{:?} as {}", value, w.text);
            }
        }
    }
}
