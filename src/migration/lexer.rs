//! A PostgreSQL-aware statement splitter.
//!
//! It knows enough of the PostgreSQL lexical grammar to find the real statement boundaries:
//! single-quoted strings (with `''`), escape strings (`E'…\'…'`), quoted identifiers, dollar
//! quotes (`$tag$…$tag$`), line comments, nested block comments, and `BEGIN ATOMIC … END`
//! function bodies. A file that ends inside a quote or a comment is rejected, because the
//! engine appends its own history statement after the body and must never end up inside one.

use std::fmt;

/// One statement of a migration file, without its terminating semicolon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement text, trimmed, comments kept.
    pub sql: String,
    /// 1-based line of the statement's first significant character.
    pub line: usize,
    /// Upper-cased leading keywords (comments and whitespace skipped), up to six.
    pub keywords: Vec<String>,
    /// Byte range in the file, from the statement's first significant character to its `;`
    /// (included when there is one): what to blank out to drop the statement in place.
    pub span: std::ops::Range<usize>,
}

/// Why a file could not be split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Splits `sql` into statements. Empty statements (stray `;`, comment-only tails) are dropped.
pub fn split(sql: &str) -> Result<Vec<Statement>, LexError> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    let mut line = 1usize;
    // Depth of `BEGIN ATOMIC` bodies (and CASE … END inside them), where `;` does not end a statement.
    let mut atomic_depth = 0usize;
    let mut prev_word = String::new();
    let mut words_in_statement = 0usize;
    let mut first_word = String::new();

    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let open_line = line;
                let mut depth = 0usize;
                loop {
                    if i >= bytes.len() {
                        return Err(LexError {
                            line: open_line,
                            message: "unterminated /* comment".into(),
                        });
                    }
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if bytes[i] == b'\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
            }
            b'\'' => {
                // E'…' strings allow backslash escapes; the prefix was consumed as a word.
                let backslash = i > 0
                    && bytes[i - 1].eq_ignore_ascii_case(&b'e')
                    && (i < 2 || !is_ident_char(bytes[i - 2]));
                i = skip_quoted(bytes, i, b'\'', backslash, &mut line, "string literal")?;
                prev_word.clear();
            }
            b'"' => {
                i = skip_quoted(bytes, i, b'"', false, &mut line, "quoted identifier")?;
                prev_word.clear();
            }
            b'$' => {
                if let Some(tag_len) = dollar_tag(bytes, i) {
                    let tag = &bytes[i..i + tag_len];
                    let open_line = line;
                    let mut j = i + tag_len;
                    loop {
                        if j >= bytes.len() {
                            return Err(LexError {
                                line: open_line,
                                message: format!(
                                    "unterminated dollar-quoted string {}",
                                    String::from_utf8_lossy(tag)
                                ),
                            });
                        }
                        if bytes[j] == b'$' && bytes[j..].starts_with(tag) {
                            j += tag_len;
                            break;
                        }
                        if bytes[j] == b'\n' {
                            line += 1;
                        }
                        j += 1;
                    }
                    i = j;
                } else {
                    // A positional parameter ($1) or part of an identifier.
                    i += 1;
                }
                prev_word.clear();
            }
            b';' if atomic_depth == 0 => {
                push_statement(&mut statements, sql, start, i)?;
                i += 1;
                start = i;
                words_in_statement = 0;
                first_word.clear();
                prev_word.clear();
            }
            c if is_ident_start(c) => {
                let begin = i;
                while i < bytes.len() && is_ident_char(bytes[i]) {
                    i += 1;
                }
                let word = sql[begin..i].to_ascii_uppercase();
                if words_in_statement == 0 {
                    first_word = word.clone();
                }
                words_in_statement += 1;
                // Only CREATE FUNCTION/PROCEDURE bodies can be `BEGIN ATOMIC`.
                if first_word == "CREATE" {
                    let opens_body = word == "ATOMIC" && prev_word == "BEGIN";
                    if opens_body || (atomic_depth > 0 && word == "CASE") {
                        atomic_depth += 1;
                    } else if atomic_depth > 0 && word == "END" {
                        atomic_depth -= 1;
                    }
                }
                prev_word = word;
            }
            _ => {
                i += 1;
            }
        }
    }
    push_statement(&mut statements, sql, start, bytes.len())?;
    Ok(statements)
}

pub(crate) fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

pub(crate) fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Returns the length of a dollar-quote tag (`$$` or `$tag$`) starting at `i`, if one starts there.
fn dollar_tag(bytes: &[u8], i: usize) -> Option<usize> {
    // `$` inside an identifier (foo$bar) never opens a quote: the identifier branch consumed it.
    let mut j = i + 1;
    if bytes.get(j) == Some(&b'$') {
        return Some(2);
    }
    match bytes.get(j) {
        Some(&c) if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {}
        _ => return None,
    }
    while j < bytes.len()
        && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] >= 0x80)
    {
        j += 1;
    }
    (bytes.get(j) == Some(&b'$')).then_some(j + 1 - i)
}

fn skip_quoted(
    bytes: &[u8],
    open: usize,
    quote: u8,
    backslash_escapes: bool,
    line: &mut usize,
    what: &str,
) -> Result<usize, LexError> {
    let open_line = *line;
    let mut i = open + 1;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'\n' {
            *line += 1;
        }
        if backslash_escapes && c == b'\\' {
            if bytes.get(i + 1) == Some(&b'\n') {
                *line += 1;
            }
            i += 2;
            continue;
        }
        if c == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Ok(i + 1);
        }
        i += 1;
    }
    Err(LexError {
        line: open_line,
        message: format!("unterminated {what}"),
    })
}

fn push_statement(
    out: &mut Vec<Statement>,
    sql: &str,
    start: usize,
    end: usize,
) -> Result<(), LexError> {
    let text = &sql[start..end];
    let (keywords, first) = leading_keywords(text);
    let Some(first) = first else {
        return Ok(());
    };
    let leading_lines = sql[..start].matches('\n').count();
    out.push(Statement {
        sql: text.trim().to_string(),
        line: leading_lines + 1 + text[..first].matches('\n').count(),
        keywords,
        span: start + first..(end + 1).min(sql.len()),
    });
    Ok(())
}

/// The first keywords of a statement, skipping comments; `None` offset when it holds only
/// comments and whitespace.
fn leading_keywords(text: &str) -> (Vec<String>, Option<usize>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut words = Vec::new();
    let mut first = None;
    while i < bytes.len() && words.len() < 6 {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && bytes.get(i + 1) == Some(&b'-') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < bytes.len() {
                if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if is_ident_start(c) {
            first.get_or_insert(i);
            let begin = i;
            while i < bytes.len() && is_ident_char(bytes[i]) {
                i += 1;
            }
            words.push(text[begin..i].to_ascii_uppercase());
        } else {
            first.get_or_insert(i);
            break;
        }
    }
    (words, first)
}

/// The statement kinds PostgreSQL refuses to run inside a transaction block.
pub fn non_transactional_reason(statement: &Statement) -> Option<&'static str> {
    let k: Vec<&str> = statement.keywords.iter().map(String::as_str).collect();
    let has = |w: &str| k.contains(&w);
    match k.as_slice() {
        ["CREATE", "INDEX", "CONCURRENTLY", ..]
        | ["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY", ..] => Some("CREATE INDEX CONCURRENTLY"),
        ["DROP", "INDEX", "CONCURRENTLY", ..] => Some("DROP INDEX CONCURRENTLY"),
        ["REINDEX", ..] if has("CONCURRENTLY") => Some("REINDEX CONCURRENTLY"),
        ["REINDEX", "SYSTEM", ..] | ["REINDEX", "DATABASE", ..] => Some("REINDEX DATABASE/SYSTEM"),
        ["VACUUM", ..] => Some("VACUUM"),
        ["CREATE", "DATABASE", ..] => Some("CREATE DATABASE"),
        ["DROP", "DATABASE", ..] => Some("DROP DATABASE"),
        ["CREATE", "TABLESPACE", ..] => Some("CREATE TABLESPACE"),
        ["DROP", "TABLESPACE", ..] => Some("DROP TABLESPACE"),
        ["ALTER", "SYSTEM", ..] => Some("ALTER SYSTEM"),
        ["CLUSTER"] => Some("CLUSTER without a table"),
        ["ALTER", "TABLE", ..] if has("DETACH") && has("CONCURRENTLY") => {
            Some("ALTER TABLE … DETACH PARTITION … CONCURRENTLY")
        }
        _ if statement_tail_has_detach_concurrently(statement) => {
            Some("ALTER TABLE … DETACH PARTITION … CONCURRENTLY")
        }
        _ => None,
    }
}

fn statement_tail_has_detach_concurrently(statement: &Statement) -> bool {
    if statement.keywords.first().map(String::as_str) != Some("ALTER") {
        return false;
    }
    let upper = statement.sql.to_ascii_uppercase();
    upper.contains("DETACH PARTITION") && upper.trim_end().ends_with("CONCURRENTLY")
}

/// Transaction control that would break the engine's one-transaction-per-migration guarantee.
pub fn transaction_control(statement: &Statement) -> Option<&'static str> {
    match statement.keywords.first().map(String::as_str)? {
        "BEGIN" | "START" => Some("BEGIN/START TRANSACTION"),
        "COMMIT" | "END" => Some("COMMIT"),
        // ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] x stays inside the transaction.
        "ROLLBACK" | "ABORT" => {
            let mut rest = statement.keywords[1..].iter().map(String::as_str);
            match rest.next() {
                Some("WORK" | "TRANSACTION") if rest.next() == Some("TO") => None,
                Some("TO") => None,
                _ => Some("ROLLBACK"),
            }
        }
        "PREPARE" if statement.keywords.get(1).map(String::as_str) == Some("TRANSACTION") => {
            Some("PREPARE TRANSACTION")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqls(input: &str) -> Vec<String> {
        split(input).unwrap().into_iter().map(|s| s.sql).collect()
    }

    #[test]
    fn splits_plain_statements() {
        assert_eq!(sqls("select 1; select 2;\n"), ["select 1", "select 2"]);
        assert_eq!(sqls("select 1"), ["select 1"]);
        assert_eq!(sqls(";;  ; -- only a comment\n"), Vec::<String>::new());
    }

    #[test]
    fn semicolons_inside_quotes_and_comments_do_not_split() {
        let input = "insert into t values ('a;b', 'it''s; fine');\n\
                     select \"we;ird\" from x; -- trailing; comment\n\
                     /* block; /* nested; */ still; */ select 3;";
        assert_eq!(
            sqls(input),
            [
                "insert into t values ('a;b', 'it''s; fine')",
                "select \"we;ird\" from x",
                "-- trailing; comment\n/* block; /* nested; */ still; */ select 3"
            ]
        );
    }

    #[test]
    fn escape_strings_allow_backslash_quotes() {
        assert_eq!(
            sqls(r"select E'a\';b'; select 2"),
            [r"select E'a\';b'", "select 2"]
        );
        // Without E, a backslash is an ordinary character.
        assert_eq!(sqls(r"select 'a\'; select 2"), [r"select 'a\'", "select 2"]);
    }

    #[test]
    fn dollar_quotes_hide_semicolons() {
        let input = "create function f() returns int as $body$ begin; return 1; end $body$ language plpgsql;\n\
                     do $$ begin perform 1; end $$;\nselect $1;";
        let out = sqls(input);
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(out[0].ends_with("language plpgsql"));
        assert_eq!(out[2], "select $1");
    }

    #[test]
    fn dollar_inside_identifiers_is_not_a_quote() {
        assert_eq!(
            sqls("select a$b$c from t; select 2"),
            ["select a$b$c from t", "select 2"]
        );
    }

    #[test]
    fn begin_atomic_bodies_stay_whole() {
        let input = "CREATE FUNCTION f(x int) RETURNS int LANGUAGE sql BEGIN ATOMIC\n\
                     SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END;\n SELECT 2;\nEND;\nselect 3;";
        let out = sqls(input);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].ends_with("END"));
        assert_eq!(out[1], "select 3");
    }

    #[test]
    fn unterminated_constructs_are_errors() {
        assert_eq!(split("select 'abc").unwrap_err().line, 1);
        assert_eq!(split("select 1;\n/* open").unwrap_err().line, 2);
        assert!(split("select $x$ abc").unwrap_err().message.contains("$x$"));
        assert!(split("select \"abc").is_err());
    }

    #[test]
    fn reports_lines_and_keywords() {
        let out = split("-- header\n\nCREATE INDEX CONCURRENTLY i ON t (a);\n  /* c */ vacuum t;")
            .unwrap();
        assert_eq!(out[0].line, 3);
        assert_eq!(out[0].keywords[..3], ["CREATE", "INDEX", "CONCURRENTLY"]);
        assert_eq!(out[1].line, 4);
        assert_eq!(
            non_transactional_reason(&out[0]),
            Some("CREATE INDEX CONCURRENTLY")
        );
        assert_eq!(non_transactional_reason(&out[1]), Some("VACUUM"));
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        use rand::{Rng, SeedableRng};
        const PIECES: &[&str] = &[
            "'", "\"", "$", "$$", "$a$", "--", "/*", "*/", "\n", ";", "E'", "\\", "begin",
            "atomic", "end", "case", "create", "é", "日本", "x", " ", "1",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.random_range(0..24);
            let input: String = (0..len)
                .map(|_| PIECES[rng.random_range(0..PIECES.len())])
                .collect();
            if let Ok(statements) = split(&input) {
                for s in &statements {
                    let _ = non_transactional_reason(s);
                    let _ = transaction_control(s);
                }
            }
        }
    }

    #[test]
    fn classifies_statements() {
        let one = |s: &str| split(s).unwrap().remove(0);
        assert!(non_transactional_reason(&one(
            "create unique index concurrently if not exists i on t(a)"
        ))
        .is_some());
        assert!(non_transactional_reason(&one("create index i on t(a)")).is_none());
        assert!(
            non_transactional_reason(&one("alter table p detach partition c concurrently"))
                .is_some()
        );
        assert!(non_transactional_reason(&one("reindex index concurrently i")).is_some());
        assert!(transaction_control(&one("COMMIT")).is_some());
        assert!(transaction_control(&one("begin")).is_some());
        assert!(transaction_control(&one("rollback to savepoint a")).is_none());
        assert!(transaction_control(&one("rollback work to a")).is_none());
        assert!(transaction_control(&one("rollback work")).is_some());
        assert!(transaction_control(&one("savepoint a")).is_none());
        assert!(transaction_control(&one("create table t (a int)")).is_none());
    }
}

/// Fuzzing: the lexer meets every file a user can write, so no input may panic it, and what it
/// splits must cover the input in order.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    /// Fragments that drive the lexer's states: quotes, dollar tags, comments, escapes.
    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(";".to_string()),
            Just("'".to_string()),
            Just("''".to_string()),
            Just("\"".to_string()),
            Just("E'\\'".to_string()),
            Just("$$".to_string()),
            Just("$tag$".to_string()),
            Just("$1".to_string()),
            Just("--".to_string()),
            Just("\n".to_string()),
            Just("/*".to_string()),
            Just("*/".to_string()),
            Just("BEGIN ATOMIC".to_string()),
            Just("END".to_string()),
            Just("CREATE FUNCTION f() AS ".to_string()),
            Just("\\".to_string()),
            "[a-zA-Z0-9 _(),.]{0,8}",
            any::<char>().prop_map(|c| c.to_string()),
        ]
    }

    proptest! {
        #![proptest_config(crate::fuzz_config(5000))]

        #[test]
        fn split_never_panics_on_sql_like_text(parts in prop::collection::vec(fragment(), 0..40)) {
            let sql = parts.concat();
            if let Ok(statements) = super::split(&sql) {
                let mut at = 0;
                for statement in &statements {
                    let found = sql[at..].find(statement.sql.as_str());
                    prop_assert!(found.is_some(), "{:?} not in order in {:?}", statement.sql, sql);
                    at += found.unwrap();
                    let _ = super::non_transactional_reason(statement);
                    let _ = super::transaction_control(statement);
                }
            }
        }

        #[test]
        fn split_never_panics_on_any_text(sql in any::<String>()) {
            let _ = super::split(&sql);
        }
    }
}
