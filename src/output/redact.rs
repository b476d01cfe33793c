//! The one redactor of the process. Every secret the command comes to hold (a value read from
//! a Secret, a password generated or read from stdin) is registered here, with every form it
//! can take in text: clear, SQL-quoted (`'it''s'`, `E'back\\slash'`), JSON- and Rust-escaped,
//! base64 (standard and URL-safe, padded or not, and wherever it sits inside a longer base64
//! text, as `user:password` does in a basic-auth header), and percent-encoded (a DSN's
//! userinfo). Whatever leaves the process but a command's own result (progress, errors, hints,
//! `logs`, `report`'s bundle) passes through it: a log line quoting an `ALTER ROLE … PASSWORD`,
//! an error message quoting a connection string, show `[REDACTED]` instead.
//!
//! A global, because the secret is learnt deep in the domain (reading a Secret) while the
//! output that must not show it leaves in `main` (an error) or in a macro (`note!`).

use std::borrow::Cow;
use std::sync::{Mutex, PoisonError};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC};

/// What replaces a secret in text.
pub const REDACTED: &str = "[REDACTED]";

/// Secrets shorter than this are not searched for: they would shred ordinary text (a
/// password is 16 characters at least; a short value is a name, not a secret).
pub const MIN_SECRET_LEN: usize = 6;

/// Secret keys whose values name things (they are printed on purpose) and are no secret:
/// ours, and the other names CloudNativePG's `R-app` gives the user and the database.
pub const PLAIN_KEYS: [&str; 6] = ["username", "database", "host", "port", "user", "dbname"];

/// The secrets to cut out of text, each in every form it can take.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Every form of every secret, longest first (a form that contains another is cut whole).
    forms: Vec<Vec<u8>>,
    /// The secrets as given, so adding one twice costs nothing.
    known: Vec<String>,
}

impl Redactor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `secret` in all its forms; a secret shorter than [`MIN_SECRET_LEN`] is ignored.
    pub fn add(&mut self, secret: &str) {
        if secret.len() < MIN_SECRET_LEN || self.known.iter().any(|k| k == secret) {
            return;
        }
        self.known.push(secret.to_string());
        for form in forms(secret) {
            if form.len() >= MIN_SECRET_LEN && !self.forms.contains(&form) {
                self.forms.push(form);
            }
        }
        self.forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    }

    /// Whether no secret is known.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// `text` with every form of every secret replaced by [`REDACTED`].
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.cut(text.as_bytes()) {
            None => Cow::Borrowed(text),
            // Forms are whole UTF-8 strings, matched at char boundaries: the rest stays valid.
            Some(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }

    /// [`Redactor::redact`] for bytes that may not be text (a file of the report).
    pub fn redact_bytes(&self, content: &[u8]) -> Vec<u8> {
        self.cut(content).unwrap_or_else(|| content.to_vec())
    }

    /// One pass, the longest form that starts at each position first; `None` when no form
    /// occurs.
    fn cut(&self, content: &[u8]) -> Option<Vec<u8>> {
        if self.forms.is_empty() {
            return None;
        }
        let mut by_first: Vec<Vec<&[u8]>> = vec![Vec::new(); 256];
        for form in &self.forms {
            by_first[usize::from(form[0])].push(form);
        }
        let mut out: Option<Vec<u8>> = None;
        let mut i = 0;
        while i < content.len() {
            let found = by_first[usize::from(content[i])]
                .iter()
                .find(|f| content[i..].starts_with(f));
            match found {
                Some(form) => {
                    let out = out.get_or_insert_with(|| content[..i].to_vec());
                    out.extend_from_slice(REDACTED.as_bytes());
                    i += form.len();
                }
                None => {
                    if let Some(out) = out.as_mut() {
                        out.push(content[i]);
                    }
                    i += 1;
                }
            }
        }
        out
    }
}

/// Every form `secret` can take in text, each at least as long as the secret's own core.
pub fn forms(secret: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<String> = vec![secret.to_string()];
    // SQL: a standard string doubles its quotes; an E'' string (quote_literal's form when a
    // backslash is present) doubles backslashes too; libpq's key=value and E'' also take \'.
    out.push(secret.replace('\'', "''"));
    let backslashed = secret.replace('\\', "\\\\");
    out.push(backslashed.replace('\'', "''"));
    out.push(backslashed.replace('\'', "\\'"));
    // JSON (and YAML's double quotes, Go's %q), and Rust's {:?} of our own messages.
    let json = serde_json::to_string(secret).unwrap_or_default();
    out.push(json[1..json.len() - 1].to_string());
    let debug = format!("{secret:?}");
    out.push(debug[1..debug.len() - 1].to_string());
    // Percent-encoding: every byte but the unreserved ones (ours, `dsn`'s), in upper- and
    // lower-case hex; WHATWG's userinfo set (what URL libraries write); form encoding.
    const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    const USERINFO: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'`')
        .add(b'{')
        .add(b'}')
        .add(b'/')
        .add(b':')
        .add(b';')
        .add(b'=')
        .add(b'@')
        .add(b'[')
        .add(b'\\')
        .add(b']')
        .add(b'^')
        .add(b'|');
    let percent = percent_encoding::utf8_percent_encode(secret, UNRESERVED).to_string();
    out.push(lower_hex_escapes(&percent));
    out.push(percent.replace("%20", "+"));
    out.push(percent);
    out.push(percent_encoding::utf8_percent_encode(secret, USERINFO).to_string());
    // base64, whole, and the part of it that any surrounding bytes leave unchanged.
    let bytes = secret.as_bytes();
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        out.push(engine.encode(bytes));
    }
    for core in base64_cores(bytes) {
        out.push(core.replace('+', "-").replace('/', "_"));
        out.push(core);
    }
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for form in out {
        let form = form.into_bytes();
        if !form.is_empty() && !seen.contains(&form) {
            seen.push(form);
        }
    }
    seen
}

/// `%2f` for `%2F`: some encoders write lower-case hex.
fn lower_hex_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            for _ in 0..2 {
                if let Some(h) = chars.next() {
                    out.push(h.to_ascii_lowercase());
                }
            }
        }
    }
    out
}

/// The base64 characters that encode only `bytes`, at each of the three positions `bytes` can
/// start at relative to a 3-byte group: whatever comes before or after (`user:` before a
/// password in a basic-auth header, the rest of a `uri`), these characters are the same.
fn base64_cores(bytes: &[u8]) -> Vec<String> {
    (0..3)
        .filter_map(|offset| {
            let mut padded = vec![0u8; offset];
            padded.extend_from_slice(bytes);
            let encoded = STANDARD_NO_PAD.encode(&padded);
            // Character j carries input bits 6j..6j+6: keep those inside the secret's bits.
            let first = (8 * offset).div_ceil(6);
            let end = 8 * padded.len() / 6;
            (end > first).then(|| encoded[first..end].to_string())
        })
        .collect()
}

static GLOBAL: Mutex<Option<Redactor>> = Mutex::new(None);

/// Registers `secret` with the process's redactor.
pub fn register(secret: &str) {
    let mut global = GLOBAL.lock().unwrap_or_else(PoisonError::into_inner);
    global.get_or_insert_with(Redactor::new).add(secret);
}

/// Registers the secret values of a Secret's `key: value` pairs (the [`PLAIN_KEYS`] name
/// things and stay readable).
pub fn register_values<'a>(values: impl IntoIterator<Item = (&'a String, &'a String)>) {
    for (key, value) in values {
        if !PLAIN_KEYS.contains(&key.as_str()) {
            register(value);
        }
    }
}

/// A copy of the process's redactor, as it is now.
pub fn current() -> Redactor {
    let global = GLOBAL.lock().unwrap_or_else(PoisonError::into_inner);
    global.clone().unwrap_or_default()
}

/// `text` with every registered secret cut out.
pub fn redact(text: &str) -> String {
    let global = GLOBAL.lock().unwrap_or_else(PoisonError::into_inner);
    match global.as_ref() {
        Some(r) => r.redact(text).into_owned(),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PASSWORD: &str = "Quote'Back\\slash 100%@host:5432/#x";

    fn redacted(text: &str) -> String {
        let mut r = Redactor::new();
        r.add(PASSWORD);
        r.redact(text).into_owned()
    }

    #[track_caller]
    fn hides(text: &str, leak: &str) {
        let out = redacted(text);
        assert!(!out.contains(leak), "{leak:?} left in {out:?}");
        assert!(out.contains(REDACTED), "{out:?}");
    }

    #[test]
    fn clear_text_is_cut_and_the_rest_kept() {
        assert_eq!(
            redacted(&format!("before {PASSWORD} after")),
            "before [REDACTED] after"
        );
        assert_eq!(redacted("nothing here"), "nothing here");
    }

    #[test]
    fn sql_quoted_forms_are_cut() {
        let standard = PASSWORD.replace('\'', "''");
        hides(
            &format!("ALTER USER \"public\" WITH PASSWORD '{standard}'"),
            &standard,
        );
        let e_string = PASSWORD.replace('\\', "\\\\").replace('\'', "''");
        assert!(e_string.contains("Quote''Back\\\\slash"));
        hides(&format!("PASSWORD E'{e_string}'"), &e_string);
        let backslash_quote = PASSWORD.replace('\\', "\\\\").replace('\'', "\\'");
        hides(&format!("password='{backslash_quote}'"), &backslash_quote);
    }

    #[test]
    fn escaped_forms_are_cut() {
        let json = serde_json::to_string(PASSWORD).unwrap();
        hides(
            &format!("{{\"password\":{json}}}"),
            &json[1..json.len() - 1],
        );
        let debug = format!("{PASSWORD:?}");
        hides(&format!("error: {debug}"), &debug[1..debug.len() - 1]);
    }

    #[test]
    fn base64_forms_are_cut() {
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(PASSWORD);
            hides(&format!("data: {encoded}\n"), &encoded);
        }
        // A basic-auth header, and a uri in a Secret's data: the password inside longer
        // base64, at each alignment.
        for user in ["u", "us", "usr", "postgres"] {
            let header = STANDARD.encode(format!("{user}:{PASSWORD}"));
            hides(&format!("Authorization: Basic {header}"), &header);
            let uri = URL_SAFE_NO_PAD.encode(format!("postgresql://{user}:{PASSWORD}@h/db"));
            hides(&uri, &uri);
        }
    }

    #[test]
    fn percent_encoded_forms_are_cut() {
        let ours = crate::database::connection::encode(PASSWORD);
        hides(&format!("postgresql://app:{ours}@h:5432/db"), &ours);
        let lower = lower_hex_escapes(&ours);
        assert_ne!(lower, ours);
        hides(&format!("postgresql://app:{lower}@h/db"), &lower);
        let whatwg = "Quote'Back%5Cslash%20100%%40host%3A5432%2F%23x";
        hides(&format!("https://app:{whatwg}@h/"), whatwg);
    }

    #[test]
    fn short_values_and_names_are_left_alone() {
        let mut r = Redactor::new();
        r.add("abc");
        assert!(r.is_empty());
        assert_eq!(r.redact("abc def"), "abc def");
        let values: std::collections::BTreeMap<String, String> = [
            ("dbname", "learnflow-names-it"),
            ("username", "learnflow-names-it"),
            ("password", "the-secret-password-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        register_values(&values);
        let out = redact("db learnflow-names-it, password the-secret-password-1");
        assert_eq!(out, "db learnflow-names-it, password [REDACTED]");
    }

    #[test]
    fn a_secret_inside_another_is_cut_with_it() {
        let mut r = Redactor::new();
        r.add("inner-secret");
        r.add("outer-inner-secret-x");
        assert_eq!(r.redact("a outer-inner-secret-x b"), "a [REDACTED] b");
        assert_eq!(r.redact("a inner-secret b"), "a [REDACTED] b");
    }

    /// The base64 decoding of every piece of `text` between redactions, at each alignment.
    fn decodings(text: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for piece in text.split(REDACTED) {
            for alphabet in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                for run in piece.split(|c: char| !(c.is_ascii_alphanumeric() || "+/-_".contains(c)))
                {
                    for start in 0..4.min(run.len()) {
                        let run = &run[start..];
                        let whole = run.len() / 4 * 4;
                        if let Ok(bytes) = alphabet.decode(&run[..whole]) {
                            out.push(bytes);
                        }
                    }
                }
            }
        }
        out
    }

    fn password() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("'".to_string()),
            Just("\\".to_string()),
            Just("%".to_string()),
            Just("@".to_string()),
            Just(":".to_string()),
            Just("#".to_string()),
            Just(" ".to_string()),
            Just("\"".to_string()),
            Just("é".to_string()),
            Just("😀".to_string()),
            "[a-zA-Z0-9]{1,4}",
            "\\PC",
        ];
        proptest::collection::vec(piece, 8..24).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(crate::fuzz_config(256))]

        #[test]
        fn no_form_of_a_random_password_survives(
            password in password(),
            user in "[a-z]{1,9}",
            before in "[ -~]{0,12}",
        ) {
            let mut r = Redactor::new();
            r.add(&password);
            let sql = password.replace('\'', "''");
            let e_sql = password.replace('\\', "\\\\").replace('\'', "''");
            let percent = crate::database::connection::encode(&password);
            let basic = STANDARD.encode(format!("{user}:{password}"));
            let uri = STANDARD.encode(format!("{before}postgresql://{user}:{password}@h/db"));
            let json = serde_json::to_string(&password).unwrap();
            let text = format!(
                "{before} clear {password} sql '{sql}' e E'{e_sql}' uri postgresql://{user}:{percent}@h \
                 basic {basic} url {} nopad {} data {uri} json {json}",
                URL_SAFE.encode(&password),
                STANDARD_NO_PAD.encode(&password),
            );
            let out = r.redact(&text).into_owned();
            let leaks: [&str; 7] = [&password, &sql, &e_sql, &percent, &basic, &uri, &json[1..json.len() - 1]];
            for leak in leaks {
                prop_assert!(!out.contains(leak), "{leak:?} in {out:?}");
            }
            // No base64 left in the output decodes to the password, whatever the alignment.
            for decoded in decodings(&out) {
                prop_assert!(
                    !decoded.windows(password.len()).any(|w| w == password.as_bytes()),
                    "{out:?}"
                );
            }
        }
    }
}
