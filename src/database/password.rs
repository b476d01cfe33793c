//! Passwords: generated, read from stdin, or asked on the terminal, each checked by the rules
//! every password follows, and each registered with the redactor before anything can print it.

use std::io::Read;

use rand::Rng;

use crate::error::Error;

/// Length of generated passwords.
pub const PASSWORD_LENGTH: usize = 32;
/// The password on stdin (one line; the line break is dropped), for `kubectl pg COMMAND
/// --password-stdin`, checked by the rules every password follows.
pub fn read_password_for(command: &str) -> Result<String, Error> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|source| Error::Io {
            context: "cannot read the password from stdin".into(),
            source,
        })?;
    check_password(text.trim_end_matches(['\n', '\r']), command)
}

/// Asks for a password on the terminal without echoing it, twice, for `--password-stdin` when
/// stdin is a terminal.
pub fn prompt_password(what: &str, command: &str) -> Result<String, Error> {
    let ask = |prompt: String| {
        rpassword::prompt_password(prompt).map_err(|source| Error::Io {
            context: "cannot read the password from the terminal".into(),
            source,
        })
    };
    let first = ask(format!("Password for {what}: "))?;
    let password = check_password(&first, command)?;
    if ask("Again: ".into())? != password {
        return Err(Error::invalid(
            "the two passwords differ: nothing was changed",
        ));
    }
    Ok(password)
}

/// A password must survive every format `dsn` prints and psql's `\password`: 16 characters at
/// least and no control characters (a newline inside would be a second line of input).
fn check_password(password: &str, command: &str) -> Result<String, Error> {
    if let Some(c) = password.chars().find(|c| c.is_control()) {
        return Err(Error::InvalidInput {
            message: format!(
                "the password from stdin contains the control character {:?}: use printable characters only",
                c
            ),
            hint: Some(format!("pipe exactly one line: printf '%s\\n' \"$PASSWORD\" | kubectl pg {command} --password-stdin")),
        });
    }
    if password.chars().count() < 16 {
        return Err(Error::InvalidInput {
            message: format!(
                "the password from stdin has {} characters: 16 at least",
                password.chars().count()
            ),
            hint: None,
        });
    }
    crate::output::redact::register(password);
    Ok(password.to_string())
}

/// 32 characters from the OS-seeded CSPRNG, letters and digits (safe in URIs and shells).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let password: String = (0..PASSWORD_LENGTH)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    crate::output::redact::register(&password);
    password
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_and_printable() {
        assert!(check_password("a-long-enough-password", "install").is_ok());
        assert!(check_password("short", "install").is_err());
        for bad in [
            "a-long-enough\npassword",
            "a-long-enough\rpassword",
            "a-long-enough\0password",
        ] {
            let err = check_password(bad, "install").unwrap_err().to_string();
            assert!(err.contains("control character"), "{err}");
        }
    }
}
