//! The guard in front of psql's stdin during a SQL restore: the script streams through it, and
//! it keeps the restore one transaction that commits only a whole script.
//!
//! psql executes a statement as soon as it reads the `;` that ends it, and a meta-command as
//! soon as it reads its line: a script's own `COMMIT` would commit part of the restore before
//! the plugin could react, and `\q` or `ON_ERROR_STOP` off would let a failure look like
//! success. So the guard lexes the stream as psql does (quotes, escape strings, quoted
//! identifiers, dollar quotes, nested comments, `BEGIN ATOMIC` bodies, COPY data) and withholds
//! the first words of every statement, and every meta-command line, until it knows what they
//! are: a refused one never reaches psql, not even its `;`, so psql's buffer holds nothing that
//! could commit when its input is cut. It also sees whether the script reached pg_dump's end
//! marker: a script cut at a statement boundary is otherwise valid SQL.

use crate::migration::lexer::{is_ident_char, is_ident_start, transaction_control, Statement};

/// pg_dump's last comment line, and pg_dumpall's.
pub const END_MARKERS: [&str; 2] = [
    "-- PostgreSQL database dump complete",
    "-- PostgreSQL database cluster dump complete",
];

/// A UTF-8 byte order mark, which `psql -f` skips at the start of a file.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The input without a leading byte order mark.
pub fn strip_bom(head: &[u8]) -> &[u8] {
    head.strip_prefix(BOM).unwrap_or(head)
}

/// More withheld than this (a statement's first words behind a huge comment, a meta-command
/// line this long) is refused rather than held without bound.
const HOLD_MAX: usize = 1 << 20;
/// The longest comment line compared with the end markers.
const MARKER_MAX: usize = 64;

/// Why a script was refused: what, and on which line (as the migration lexer reports).
pub use crate::migration::lexer::LexError as Refusal;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Lex {
    /// Outside any quote or comment.
    Normal,
    /// A `-` or `/` that may open a comment, decided by the next byte; whether it began its
    /// line.
    Slash {
        first: u8,
        line_start: bool,
    },
    /// Inside an identifier or keyword (kept while short).
    Word,
    LineComment,
    /// `/*` nesting depth, and the previous byte for `*/` and `/*`.
    BlockComment {
        depth: usize,
        prev: u8,
    },
    /// `'…'` (with backslash escapes after `E`), or `"…"`; `closing` after a quote that may
    /// be doubled.
    Quoted {
        quote: u8,
        escapes: bool,
        escaped: bool,
        closing: bool,
    },
    /// After a `$` that may open a dollar quote: the tag so far.
    DollarTag(Vec<u8>),
    /// Inside `$tag$…$tag$`: the delimiter, and how much of it was just seen.
    Dollar {
        delimiter: Vec<u8>,
        matched: usize,
    },
    /// A psql meta-command line, from its backslash, withheld to its end.
    Meta,
    /// COPY … FROM STDIN data, up to a line `\.`: the start of the current line.
    CopyData {
        line: Vec<u8>,
    },
}

/// The streaming guard; see the module's documentation.
pub struct ScriptGuard {
    lex: Lex,
    line: usize,
    /// The next byte is the first of its line.
    at_line_start: bool,
    /// Withheld bytes: the undecided start of a statement, or a meta-command line.
    held: Vec<u8>,
    holding: bool,
    /// Where the withheld statement or meta-command begins.
    held_line: usize,
    /// A statement has begun since the last `;`.
    in_statement: bool,
    /// The statement's first keywords, upper-cased.
    words: Vec<String>,
    word: Vec<u8>,
    /// The byte before this one ended a word (`E'…'` is an escape string).
    after_word: bool,
    prev_word: String,
    atomic_depth: usize,
    /// This statement is `COPY … FROM STDIN`: data follows its line.
    copy_in: bool,
    /// A COPY's data starts after the current line.
    copy_next_line: bool,
    /// A top-level comment line being compared with the end markers.
    comment: Option<Vec<u8>>,
    /// The last statement seen is followed by an end marker.
    complete: bool,
}

impl Default for ScriptGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl ScriptGuard {
    pub fn new() -> Self {
        Self {
            lex: Lex::Normal,
            line: 1,
            at_line_start: true,
            held: Vec::new(),
            holding: false,
            held_line: 1,
            in_statement: false,
            words: Vec::new(),
            word: Vec::new(),
            after_word: false,
            prev_word: String::new(),
            atomic_depth: 0,
            copy_in: false,
            copy_next_line: false,
            comment: None,
            complete: false,
        }
    }

    /// Whether the script so far ends with pg_dump's (or pg_dumpall's) end marker, followed
    /// by nothing but comments and meta-commands (`\unrestrict`).
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Passes a chunk: what psql may receive now is appended to `out`; a refused statement
    /// and everything after it are not.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), Refusal> {
        for &b in chunk {
            self.byte(b, out)?;
        }
        Ok(())
    }

    /// The end of the script: decides what is still withheld (a last line without a newline).
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), Refusal> {
        match std::mem::replace(&mut self.lex, Lex::Normal) {
            Lex::Slash { first, .. } => self.significant(first, out)?,
            Lex::Word => self.end_word(),
            Lex::Meta => self.end_meta()?,
            Lex::LineComment => self.end_comment(),
            _ => {}
        }
        if self.holding {
            self.decide()?;
        }
        self.release(out);
        Ok(())
    }

    fn refuse<T>(&self, message: String) -> Result<T, Refusal> {
        Err(Refusal {
            line: self.held_line,
            message,
        })
    }

    fn hold(&mut self) {
        if !self.holding {
            self.holding = true;
            self.held_line = self.line;
        }
    }

    fn release(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.holding = false;
    }

    fn emit(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.holding {
            self.held.push(b);
        } else {
            out.push(b);
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let line_start = self.at_line_start;
        self.at_line_start = b == b'\n';
        if let Lex::CopyData { line } = &mut self.lex {
            // Rows pass as they come, whatever their quotes: only `\.` ends them.
            out.push(b);
            if b == b'\n' {
                self.line += 1;
                let end = matches!(line.as_slice(), b"\\." | b"\\.\r");
                self.lex = if end {
                    Lex::Normal
                } else {
                    Lex::CopyData { line: Vec::new() }
                };
            } else if line.len() < 3 {
                line.push(b);
            }
            return Ok(());
        }
        let result = self.lexed(b, line_start, out);
        if b == b'\n' {
            self.line += 1;
        }
        result?;
        if self.holding && self.held.len() > HOLD_MAX {
            return self.refuse(
                "more than 1 MiB before a statement's first words, or in one psql meta-command line"
                    .into(),
            );
        }
        Ok(())
    }

    fn lexed(&mut self, b: u8, line_start: bool, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let after_word = std::mem::take(&mut self.after_word);
        match &mut self.lex {
            Lex::CopyData { .. } => unreachable!("rows are passed before lexing"),
            Lex::Meta => {
                self.held.push(b);
                if b == b'\n' {
                    self.lex = Lex::Normal;
                    self.end_meta()?;
                    self.release(out);
                    self.start_copy_if_due();
                }
            }
            Lex::Normal => self.normal(b, line_start, after_word, out)?,
            Lex::Slash { first, line_start } => {
                let (first, at_start) = (*first, *line_start);
                match (first, b) {
                    (b'-', b'-') => {
                        self.comment = (at_start && !self.in_statement).then(|| b"--".to_vec());
                        self.lex = Lex::LineComment;
                        self.emit(first, out);
                        self.emit(b, out);
                    }
                    (b'/', b'*') => {
                        self.lex = Lex::BlockComment { depth: 1, prev: 0 };
                        self.emit(first, out);
                        self.emit(b, out);
                    }
                    _ => {
                        self.lex = Lex::Normal;
                        self.significant(first, out)?;
                        return self.lexed(b, false, out);
                    }
                }
            }
            Lex::Word => {
                if is_ident_char(b) {
                    if self.word.len() <= MARKER_MAX {
                        self.word.push(b);
                    }
                    self.emit(b, out);
                } else {
                    self.lex = Lex::Normal;
                    self.end_word();
                    if self.holding && !self.needs_more_words() {
                        self.decide()?;
                        self.release(out);
                    }
                    self.after_word = true;
                    return self.lexed(b, false, out);
                }
            }
            Lex::LineComment => {
                if b == b'\n' {
                    self.lex = Lex::Normal;
                    self.end_comment();
                    self.emit(b, out);
                    self.start_copy_if_due();
                } else {
                    if let Some(c) = self.comment.as_mut().filter(|c| c.len() <= MARKER_MAX) {
                        c.push(b);
                    }
                    self.emit(b, out);
                }
            }
            Lex::BlockComment { depth, prev } => {
                let (d, p) = (*depth, *prev);
                self.lex = if p == b'*' && b == b'/' {
                    if d == 1 {
                        Lex::Normal
                    } else {
                        Lex::BlockComment {
                            depth: d - 1,
                            prev: 0,
                        }
                    }
                } else if p == b'/' && b == b'*' {
                    Lex::BlockComment {
                        depth: d + 1,
                        prev: 0,
                    }
                } else {
                    Lex::BlockComment { depth: d, prev: b }
                };
                self.emit(b, out);
            }
            Lex::Quoted {
                quote,
                escapes,
                escaped,
                closing,
            } => {
                if *closing {
                    if b == *quote {
                        *closing = false;
                    } else {
                        self.lex = Lex::Normal;
                        return self.lexed(b, false, out);
                    }
                } else if *escaped {
                    *escaped = false;
                } else if *escapes && b == b'\\' {
                    *escaped = true;
                } else if b == *quote {
                    *closing = true;
                }
                self.emit(b, out);
            }
            Lex::DollarTag(tag) => {
                let opens_tag = b.is_ascii_alphabetic() || b == b'_' || b >= 0x80;
                if b == b'$' {
                    let mut delimiter = vec![b'$'];
                    delimiter.append(tag);
                    delimiter.push(b'$');
                    self.lex = Lex::Dollar {
                        delimiter,
                        matched: 0,
                    };
                    self.emit(b, out);
                } else if opens_tag || (!tag.is_empty() && b.is_ascii_digit()) {
                    tag.push(b);
                    self.emit(b, out);
                } else {
                    // `$1`, or a `$` that opens nothing.
                    self.lex = Lex::Normal;
                    return self.lexed(b, false, out);
                }
            }
            Lex::Dollar { delimiter, matched } => {
                if b == delimiter[*matched] {
                    *matched += 1;
                    if *matched == delimiter.len() {
                        self.lex = Lex::Normal;
                    }
                } else {
                    *matched = usize::from(b == b'$');
                }
                self.emit(b, out);
            }
        }
        Ok(())
    }

    fn normal(
        &mut self,
        b: u8,
        line_start: bool,
        after_word: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), Refusal> {
        match b {
            b'\\' => {
                // A meta-command (psql reads one anywhere outside quotes): an undecided
                // statement is decided with the words it has, then the line is withheld whole.
                if self.holding {
                    self.decide()?;
                    self.release(out);
                }
                self.hold();
                self.lex = Lex::Meta;
                self.held.push(b);
            }
            b'-' | b'/' => {
                self.lex = Lex::Slash {
                    first: b,
                    line_start,
                }
            }
            b if is_ident_start(b) => {
                if !self.in_statement {
                    self.start_statement();
                    self.hold();
                }
                self.lex = Lex::Word;
                self.word.clear();
                self.word.push(b);
                self.emit(b, out);
            }
            b'\'' | b'"' => {
                let escapes = b == b'\'' && after_word && self.word.eq_ignore_ascii_case(b"e");
                self.significant(b, out)?;
                self.prev_word.clear();
                self.lex = Lex::Quoted {
                    quote: b,
                    escapes,
                    escaped: false,
                    closing: false,
                };
            }
            b'$' if !after_word => {
                self.significant(b, out)?;
                self.prev_word.clear();
                self.lex = Lex::DollarTag(Vec::new());
            }
            b';' if self.atomic_depth == 0 => {
                if self.holding {
                    self.decide()?;
                }
                self.emit(b, out);
                self.release(out);
                self.in_statement = false;
                self.prev_word.clear();
                if std::mem::take(&mut self.copy_in) {
                    self.copy_next_line = true;
                }
            }
            b':' if !self.in_statement => {
                self.hold();
                return self.refuse(
                    "a statement taken from a psql variable (:name) cannot be checked before it runs"
                        .into(),
                );
            }
            b'\n' => {
                self.emit(b, out);
                self.start_copy_if_due();
            }
            b if b.is_ascii_whitespace() => self.emit(b, out),
            _ => self.significant(b, out)?,
        }
        Ok(())
    }

    /// A byte that is neither space, comment nor word: it starts a statement if none has
    /// begun, and decides a withheld one (`ROLLBACK;` or `START(` is known by then).
    fn significant(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), Refusal> {
        if !self.in_statement {
            self.start_statement();
        }
        if self.holding {
            self.decide()?;
            self.held.push(b);
            self.release(out);
        } else {
            out.push(b);
        }
        Ok(())
    }

    fn start_statement(&mut self) {
        self.in_statement = true;
        self.complete = false;
        self.words.clear();
        self.prev_word.clear();
        self.atomic_depth = 0;
        self.copy_in = false;
    }

    fn start_copy_if_due(&mut self) {
        if std::mem::take(&mut self.copy_next_line) {
            self.lex = Lex::CopyData { line: Vec::new() };
        }
    }

    /// A word ended: kept among the statement's first words, and watched for the `BEGIN
    /// ATOMIC … END` bodies whose `;` end nothing and for `COPY … FROM STDIN`.
    fn end_word(&mut self) {
        let word = String::from_utf8_lossy(&self.word).to_ascii_uppercase();
        if self.words.len() < 3 {
            self.words.push(word.clone());
        }
        let first = self.words.first().map(String::as_str);
        if first == Some("CREATE") {
            // Only CREATE FUNCTION/PROCEDURE bodies can be `BEGIN ATOMIC`.
            if (word == "ATOMIC" && self.prev_word == "BEGIN")
                || (self.atomic_depth > 0 && word == "CASE")
            {
                self.atomic_depth += 1;
            } else if self.atomic_depth > 0 && word == "END" {
                self.atomic_depth -= 1;
            }
        }
        if first == Some("COPY") && self.prev_word == "FROM" && word == "STDIN" {
            self.copy_in = true;
        }
        self.prev_word = word;
    }

    fn end_comment(&mut self) {
        if let Some(text) = self.comment.take() {
            let text = String::from_utf8_lossy(&text);
            if END_MARKERS.contains(&text.trim_end()) {
                self.complete = true;
            }
        }
    }

    /// Whether the statement's next word may still change its verdict.
    fn needs_more_words(&self) -> bool {
        let w: Vec<&str> = self.words.iter().map(String::as_str).collect();
        matches!(
            w.as_slice(),
            ["ROLLBACK" | "ABORT"] | ["PREPARE"] | ["ROLLBACK" | "ABORT", "WORK" | "TRANSACTION"]
        )
    }

    /// Judges the withheld start of a statement from its first words.
    fn decide(&mut self) -> Result<(), Refusal> {
        let statement = Statement {
            sql: String::new(),
            line: self.held_line,
            keywords: self.words.clone(),
            span: 0..0,
        };
        match transaction_control(&statement) {
            Some(what) => self.refuse(format!(
                "the script's own transaction control ({what}) would end the restore's transaction, committing part of it or leaving the rest outside it"
            )),
            None => Ok(()),
        }
    }

    /// Judges a withheld meta-command line (one or more commands, `\\`-separated).
    fn end_meta(&mut self) -> Result<(), Refusal> {
        let text = String::from_utf8_lossy(&self.held).into_owned();
        let line = text.trim_end_matches(['\n', '\r']);
        for command in line.split('\\').filter(|c| !c.trim().is_empty()) {
            let mut parts = command.split_whitespace();
            let name = parts.next().unwrap_or_default();
            let args: Vec<String> = parts.map(|a| a.trim_matches('\'').to_string()).collect();
            match name {
                "q" | "quit" => {
                    return self.refuse(
                        "\\q ends psql there: the rest of the script would be skipped, and the restore could not tell"
                            .into(),
                    )
                }
                "set" if args.first().map(String::as_str) == Some("ON_ERROR_STOP") => {
                    let value = args[1..].concat();
                    if !is_true(&value) {
                        return self.refuse(format!(
                            "\\set ON_ERROR_STOP {value} would let psql go on after a failed statement"
                        ));
                    }
                }
                "unset" if args.first().map(String::as_str) == Some("ON_ERROR_STOP") => {
                    return self.refuse(
                        "\\unset ON_ERROR_STOP would let psql go on after a failed statement"
                            .into(),
                    )
                }
                "c" | "connect" => {
                    return self.refuse(format!(
                        "\\{name} opens a new session, which would end the restore's transaction (a pg_dump --create or pg_dumpall script: dump without --create, and restore into an existing database with -d)"
                    ))
                }
                "i" | "include" | "ir" | "include_relative" | "gexec" => {
                    return self.refuse(format!(
                        "\\{name} runs SQL the restore cannot see before it runs"
                    ))
                }
                "copy" => {
                    let lower: Vec<String> = args.iter().map(|a| a.to_ascii_lowercase()).collect();
                    if lower
                        .windows(2)
                        .any(|w| w[0] == "from" && (w[1] == "stdin" || w[1] == "pstdin"))
                    {
                        self.copy_next_line = true;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// psql's true values for a boolean variable (ParseVariableBool): prefixes of `true` and
/// `yes`, `on`, `1`.
fn is_true(value: &str) -> bool {
    let v = value.to_ascii_lowercase();
    !v.is_empty() && ("true".starts_with(&v) || "yes".starts_with(&v) || v == "on" || v == "1")
}

/// Why a script was not committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// A statement or meta-command that would hide the outcome.
    Refused(Refusal),
    /// No end marker: the script was cut short (or pg_dump did not write it).
    Incomplete,
}

/// Runs a whole script through a guard without sending it anywhere: the verdict on a file
/// before any connection (a leading BOM skipped, as psql skips it).
pub fn check_whole(
    mut input: impl std::io::Read,
    allow_partial: bool,
) -> std::io::Result<Result<(), Rejected>> {
    let mut guard = ScriptGuard::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut discard = Vec::new();
    let mut first = true;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = if std::mem::take(&mut first) {
            strip_bom(&buf[..n])
        } else {
            &buf[..n]
        };
        discard.clear();
        if let Err(refusal) = guard.feed(chunk, &mut discard) {
            return Ok(Err(Rejected::Refused(refusal)));
        }
    }
    if let Err(refusal) = guard.finish(&mut discard) {
        return Ok(Err(Rejected::Refused(refusal)));
    }
    Ok(if guard.complete() || allow_partial {
        Ok(())
    } else {
        Err(Rejected::Incomplete)
    })
}

/// psql's stdin during a SQL restore: `BEGIN`, the script through a [`ScriptGuard`], and the
/// `COMMIT` only after a whole script (its end marker, unless partial scripts are allowed).
/// A rejected script ends in a read error, never an end of file, and the reason is left in
/// the shared `verdict` for the caller.
pub struct GuardedScript<R> {
    inner: R,
    guard: ScriptGuard,
    out: Vec<u8>,
    pos: usize,
    buf: Vec<u8>,
    stage: Stage,
    allow_partial: bool,
    verdict: std::sync::Arc<std::sync::Mutex<Option<Rejected>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Reading,
    Finished,
    Done,
    Rejected,
}

impl<R> GuardedScript<R> {
    /// `guard` has already seen the head of the script, which passed as `passed`; `ended`
    /// says the head was the whole script (and `guard` has finished).
    pub fn new(
        inner: R,
        guard: ScriptGuard,
        passed: Vec<u8>,
        ended: bool,
        allow_partial: bool,
    ) -> Self {
        let mut out = super::SCRIPT_BEGIN.as_bytes().to_vec();
        out.extend_from_slice(&passed);
        Self {
            inner,
            guard,
            out,
            pos: 0,
            buf: vec![0u8; 256 * 1024],
            stage: if ended {
                Stage::Finished
            } else {
                Stage::Reading
            },
            allow_partial,
            verdict: Default::default(),
        }
    }

    /// Where the reason of a rejection is left.
    pub fn verdict(&self) -> std::sync::Arc<std::sync::Mutex<Option<Rejected>>> {
        self.verdict.clone()
    }

    fn reject(&mut self, why: Rejected) {
        self.out.clear();
        self.stage = Stage::Rejected;
        if let Ok(mut v) = self.verdict.lock() {
            *v = Some(why);
        }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for GuardedScript<R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        dst: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if this.pos < this.out.len() {
                let n = dst.remaining().min(this.out.len() - this.pos);
                dst.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            this.out.clear();
            this.pos = 0;
            match this.stage {
                Stage::Done => return Poll::Ready(Ok(())),
                Stage::Rejected => {
                    return Poll::Ready(Err(std::io::Error::other(
                        "the script was refused before its end",
                    )))
                }
                Stage::Finished => {
                    if this.guard.complete() || this.allow_partial {
                        this.out.extend_from_slice(super::SCRIPT_COMMIT.as_bytes());
                        this.stage = Stage::Done;
                    } else {
                        this.reject(Rejected::Incomplete);
                    }
                }
                Stage::Reading => {
                    let mut read = tokio::io::ReadBuf::new(&mut this.buf);
                    match std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) => {}
                    }
                    let n = read.filled().len();
                    let judged = if n == 0 {
                        this.stage = Stage::Finished;
                        this.guard.finish(&mut this.out)
                    } else {
                        this.guard.feed(&this.buf[..n], &mut this.out)
                    };
                    if let Err(refusal) = judged {
                        this.reject(Rejected::Refused(refusal));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script through a guard in pieces of `piece` bytes: what psql received, the
    /// verdict, and whether it was complete.
    fn run(input: &str, piece: usize) -> (String, Result<(), Refusal>, bool) {
        let mut guard = ScriptGuard::new();
        let mut out = Vec::new();
        let mut verdict = Ok(());
        for chunk in input.as_bytes().chunks(piece) {
            verdict = guard.feed(chunk, &mut out);
            if verdict.is_err() {
                break;
            }
        }
        if verdict.is_ok() {
            verdict = guard.finish(&mut out);
        }
        (String::from_utf8(out).unwrap(), verdict, guard.complete())
    }

    const PIECES: [usize; 6] = [1, 2, 3, 7, 64, 100_000];

    /// What pg_dump 18 writes, with the traps a naive scan falls into.
    const DUMP: &str = "--\n-- PostgreSQL database dump\n--\n\n\\restrict AbC123\n\n\
SET statement_timeout = 0;\nSET lock_timeout = 0;\nSELECT pg_catalog.set_config('search_path', '', false);\n\
CREATE FUNCTION public.f() RETURNS integer\n    LANGUAGE plpgsql\n    AS $_$ begin commit; rollback; return 1; end $_$;\n\
CREATE FUNCTION public.g(x integer) RETURNS integer\n    LANGUAGE sql\n    BEGIN ATOMIC\n SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END;\n  SELECT 2;\nEND;\n\
COMMENT ON TABLE public.t IS 'it''s -- not a comment; COMMIT;';\n\
SELECT E'a\\'; COMMIT; \\q';\n\
/* a block /* nested COMMIT; */ comment */ SELECT 1;\n\
COPY public.t (id, note) FROM stdin;\n1\tO'Brien; COMMIT;\n2\t\\q\n3\t-- PostgreSQL database dump complete\n\\.\n\
SELECT $$ -- PostgreSQL database dump complete $$;\n\
ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n\
\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict AbC123\n\n";

    #[test]
    fn a_whole_dump_passes_unchanged_and_is_complete() {
        for piece in PIECES {
            let (out, verdict, complete) = run(DUMP, piece);
            assert_eq!(verdict, Ok(()), "piece {piece}");
            assert_eq!(out, DUMP, "piece {piece}");
            assert!(complete, "piece {piece}");
        }
        let cluster = "--\n-- PostgreSQL database cluster dump\n--\n\nSET x = 1;\n\n--\n-- PostgreSQL database cluster dump complete\n--\n\n";
        assert!(run(cluster, 5).2);
    }

    #[test]
    fn a_script_cut_anywhere_before_the_marker_is_incomplete() {
        let marker = DUMP
            .rfind("\n-- PostgreSQL database dump complete")
            .unwrap();
        // Cut at every line boundary before the marker: never complete, though often valid SQL.
        for (at, _) in DUMP[..marker].match_indices('\n') {
            let (out, verdict, complete) = run(&DUMP[..=at], 64);
            assert_eq!(verdict, Ok(()), "cut at {at}");
            assert_eq!(out, &DUMP[..=at]);
            assert!(!complete, "cut at {at}: {:?}", &DUMP[..=at]);
        }
        // The marker in COPY data or a dollar quote (both above) counts for nothing, and a
        // statement after the marker (a second script appended, then cut) undoes it.
        let appended = format!("{DUMP}SET x = 1;\n");
        assert!(!run(&appended, 7).2);
        let no_newline = DUMP
            .trim_end_matches('\n')
            .replace("\\unrestrict AbC123", "--");
        assert!(run(&no_newline, 3).2);
    }

    #[test]
    fn transaction_control_never_reaches_psql() {
        let before = "INSERT INTO t VALUES (1);\n";
        for (statement, what) in [
            ("COMMIT;", "COMMIT"),
            ("commit", "COMMIT"),
            ("end;", "COMMIT"),
            ("END TRANSACTION;", "COMMIT"),
            ("ROLLBACK;", "ROLLBACK"),
            ("rollback work;", "ROLLBACK"),
            ("ABORT;", "ROLLBACK"),
            ("BEGIN;", "BEGIN"),
            ("start transaction isolation level serializable;", "BEGIN"),
            ("PREPARE TRANSACTION 'x';", "PREPARE TRANSACTION"),
            ("COMMIT PREPARED 'x';", "COMMIT"),
            ("/* why */ -- not\n  Commit\n;", "COMMIT"),
            ("COMMIT\\g", "COMMIT"),
        ] {
            let script = format!("{before}{statement}\nINSERT INTO t VALUES (2);\n");
            for piece in PIECES {
                let (out, verdict, _) = run(&script, piece);
                let refusal = verdict.expect_err(statement);
                assert!(refusal.message.contains(what), "{statement}: {refusal}");
                assert!(
                    out.starts_with(before),
                    "{statement} piece {piece}: {out:?}"
                );
                // Not one byte of the statement's words, nor its `;`, went to psql.
                let rest = &out[before.len()..];
                assert!(
                    !rest.contains(';')
                        && !rest.to_ascii_uppercase().contains("COMMIT")
                        && !rest.to_ascii_uppercase().contains("END")
                        && !rest.to_ascii_uppercase().contains("ROLLBACK"),
                    "{statement} piece {piece}: {out:?}"
                );
            }
        }
        let (_, verdict, _) = run("SELECT 1;\n\nSELECT 2;\nCOMMIT;\n", 3);
        assert_eq!(verdict.unwrap_err().line, 4);
    }

    #[test]
    fn quoted_or_harmless_lookalikes_pass() {
        for script in [
            "SELECT 'COMMIT;';\n",
            "SELECT \"commit\" FROM t;\n",
            "-- COMMIT;\nSELECT 1;\n",
            "DO $$ BEGIN COMMIT; END $$;\n",
            "DO $body$ BEGIN ROLLBACK; END $body$;\n",
            "SAVEPOINT a;\nROLLBACK TO SAVEPOINT a;\nRELEASE a;\nROLLBACK WORK TO a;\n",
            "PREPARE q AS SELECT 1;\nEXECUTE q;\n",
            "SELECT $1, a$b FROM t; SELECT E'\\\\'; SELECT 'x' 'y';\n",
            "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC\n  INSERT INTO t VALUES (1);\nEND;\nSELECT 1;\n",
            "COPY t FROM STDIN;\nCOMMIT;\n\\q\n\\.\nSELECT 1;\n",
            "\\copy t from stdin\nCOMMIT;\n\\.\n",
            "\\set ON_ERROR_STOP on\n\\set ON_ERROR_STOP 1\n\\set ON_ERROR_STOP true\n\\pset pager off\n",
            "\\set VERBOSITY verbose\n\\qecho COMMIT\n",
            "SELECT 1 \\gset\n",
            "CommitTs;\nending;\n",
        ] {
            for piece in PIECES {
                let (out, verdict, _) = run(script, piece);
                assert_eq!(verdict, Ok(()), "{script:?} piece {piece}");
                assert_eq!(out, script, "piece {piece}");
            }
        }
    }

    #[test]
    fn meta_commands_that_hide_an_outcome_are_refused_before_psql_reads_them() {
        for (line, what) in [
            ("\\q", "\\q"),
            ("\\quit", "\\q"),
            ("\\set ON_ERROR_STOP off", "ON_ERROR_STOP"),
            ("\\set ON_ERROR_STOP 0", "ON_ERROR_STOP"),
            ("\\set ON_ERROR_STOP 'false'", "ON_ERROR_STOP"),
            ("\\set ON_ERROR_STOP", "ON_ERROR_STOP"),
            ("\\set ON_ERROR_STOP :x", "ON_ERROR_STOP"),
            ("\\unset ON_ERROR_STOP", "ON_ERROR_STOP"),
            ("\\pset null x \\\\ \\q", "\\q"),
            ("\\connect other", "new session"),
            ("\\c other", "new session"),
            ("\\i /tmp/x.sql", "cannot see"),
            ("SELECT 'COMMIT' \\gexec", "cannot see"),
            (":cmd;", "psql variable"),
        ] {
            let before = "SELECT 1;\n";
            let script = format!("{before}{line}\nSELECT 2;\n");
            for piece in PIECES {
                let (out, verdict, _) = run(&script, piece);
                let refusal = verdict.expect_err(line);
                assert!(refusal.message.contains(what), "{line}: {refusal}");
                assert_eq!(refusal.line, 2, "{line}");
                assert!(
                    !out.contains('\\') && !out.contains("SELECT 2"),
                    "{line}: {out:?}"
                );
            }
        }
        // A last line without its newline is judged too.
        assert!(run("SELECT 1;\n\\q", 4).1.is_err());
    }

    #[test]
    fn never_panics_and_passes_a_prefix_of_its_input() {
        use rand::{Rng, SeedableRng};
        const PIECES: &[&str] = &[
            "'",
            "\"",
            "$",
            "$$",
            "$a$",
            "--",
            "/*",
            "*/",
            "\n",
            ";",
            "E'",
            "\\",
            "\\.",
            "begin",
            "atomic",
            "end",
            "case",
            "create",
            "commit",
            "rollback",
            "to",
            "copy",
            "from",
            "stdin",
            "\\q",
            "\\set ON_ERROR_STOP ",
            "off",
            ":",
            "é",
            " ",
            "1",
            "-- PostgreSQL database dump complete",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(18);
        for _ in 0..20_000 {
            let len = rng.random_range(0..30);
            let input: String = (0..len)
                .map(|_| PIECES[rng.random_range(0..PIECES.len())])
                .collect();
            let piece = rng.random_range(1..8);
            let (out, verdict, _) = run(&input, piece);
            assert!(input.starts_with(&out), "{input:?} -> {out:?}");
            if verdict.is_ok() {
                assert_eq!(out, input);
            }
        }
    }

    async fn through_reader(script: &str, allow_partial: bool) -> (String, Option<Rejected>) {
        use tokio::io::AsyncReadExt;
        let reader = GuardedScript::new(
            script.as_bytes(),
            ScriptGuard::new(),
            Vec::new(),
            false,
            allow_partial,
        );
        let verdict = reader.verdict();
        let mut reader = reader;
        let mut sent = Vec::new();
        let read = reader.read_to_end(&mut sent).await;
        let why = verdict.lock().unwrap().clone();
        assert_eq!(
            read.is_err(),
            why.is_some(),
            "a rejection is a read error, never an end"
        );
        (String::from_utf8(sent).unwrap(), why)
    }

    #[tokio::test]
    async fn only_a_whole_script_is_followed_by_commit() {
        let (sent, why) = through_reader(DUMP, false).await;
        assert_eq!(why, None);
        assert_eq!(
            sent,
            format!(
                "{}{DUMP}{}",
                crate::transfer::SCRIPT_BEGIN,
                crate::transfer::SCRIPT_COMMIT
            )
        );
        let cut = &DUMP[..DUMP.find("ALTER TABLE ONLY").unwrap()];
        let (sent, why) = through_reader(cut, false).await;
        assert_eq!(why, Some(Rejected::Incomplete));
        assert!(
            !sent.ends_with(crate::transfer::SCRIPT_COMMIT),
            "no COMMIT after a cut script"
        );
        let (sent, why) = through_reader(cut, true).await;
        assert_eq!(why, None, "--allow-partial");
        assert!(sent.ends_with(crate::transfer::SCRIPT_COMMIT));
        let (sent, why) = through_reader("INSERT INTO t VALUES (1);\nCOMMIT;\n", true).await;
        assert!(matches!(why, Some(Rejected::Refused(_))));
        assert!(!sent.contains("COMMIT"), "{sent}");
        assert_eq!(
            check_whole(format!("\u{feff}{DUMP}").as_bytes(), false).unwrap(),
            Ok(())
        );
        assert_eq!(
            check_whole(cut.as_bytes(), false).unwrap(),
            Err(Rejected::Incomplete)
        );
        assert_eq!(check_whole(cut.as_bytes(), true).unwrap(), Ok(()));
    }

    #[test]
    fn a_bom_is_stripped() {
        assert_eq!(strip_bom(b"\xEF\xBB\xBF--\nSELECT 1;"), b"--\nSELECT 1;");
        assert_eq!(strip_bom(b"SELECT 1;"), b"SELECT 1;");
        assert_eq!(strip_bom(b"\xEF\xBB"), b"\xEF\xBB");
    }
}
