//! GitHub Actions workflow commands (`::add-mask::`, `::error::`, …), the file commands behind `$GITHUB_OUTPUT`, `$GITHUB_ENV` and `$GITHUB_STATE`, and Markdown for the step summary.
//!
//! Text from the server or from OIDC claims (a branch name is chosen by
//! whoever pushes it) reaches the runner's log only inside an escaped
//! command or after a fixed `writ:` prefix, so it can never start a
//! workflow command of its own.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};

/// Escapes a workflow command's message: `%`, `\r` and `\n`, as the runner
/// and `@actions/core` do. Without it a newline in a server's explanation
/// would end the command and let the next line run as a command.
pub fn escape_data(text: &str) -> String {
    text.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes a workflow command property value (`title=…`): the message
/// escapes plus `:` and `,`, which end a property.
pub fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

/// One workflow command line, e.g. `::error title=x::message`.
pub fn command(name: &str, properties: &[(&str, &str)], message: &str) -> String {
    let mut line = format!("::{name}");
    for (i, (key, value)) in properties.iter().enumerate() {
        line.push(if i == 0 { ' ' } else { ',' });
        let _ = write!(line, "{key}={}", escape_property(value));
    }
    let _ = write!(line, "::{}", escape_data(message));
    line
}

/// Prints `::add-mask::<secret>` on stdout so the runner replaces the value
/// with `***` in every later log line. Must run before anything that could
/// contain the secret is printed.
pub fn add_mask(secret: &str) {
    println!("{}", command("add-mask", &[], secret));
}

/// Prints an error annotation.
pub fn error(title: &str, message: &str) {
    println!("{}", command("error", &[("title", title)], message));
}

/// Prints a warning annotation.
pub fn warning(title: &str, message: &str) {
    println!("{}", command("warning", &[("title", title)], message));
}

/// Prints a debug line (shown when the run has debug logging on).
pub fn debug(message: &str) {
    println!("{}", command("debug", &[], message));
}

/// 128 random bits as 32 hex digits, from the OS random source.
pub fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("reading the OS random source: {e}"))?;
    Ok(bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// How many fresh delimiters to try before giving up. A random 128-bit
/// delimiter inside the value is practically impossible; the loop exists so
/// that even then the file is never written ambiguously.
const DELIMITER_TRIES: usize = 8;

/// One `name<<DELIM` … `DELIM` entry of a file command, with a random
/// delimiter that occurs neither in the name nor in the value.
///
/// The runner reads the value up to the first line equal to the delimiter;
/// a value containing it could end the value early and inject further
/// outputs or environment variables (the attack GitHub's heredoc syntax
/// plus a random delimiter exists to stop).
pub fn heredoc(name: &str, value: &str) -> anyhow::Result<String> {
    heredoc_with(name, value, || random_token().map(|t| format!("ghadelimiter_{t}")))
}

/// [`heredoc`] with the delimiter source as a parameter (tests).
pub fn heredoc_with(
    name: &str,
    value: &str,
    mut delimiter: impl FnMut() -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    if name.is_empty() || name.contains(['\r', '\n', '=']) || name.contains("<<") {
        bail!("{name:?} is not a valid output or variable name");
    }
    for _ in 0..DELIMITER_TRIES {
        let delim = delimiter()?;
        if delim.is_empty() || name.contains(&delim) || value.contains(&delim) {
            continue;
        }
        return Ok(format!("{name}<<{delim}\n{value}\n{delim}\n"));
    }
    bail!("could not find a delimiter that is not part of the value of {name:?}")
}

/// Appends `entries` (`name`, `value`) to the file command file at `path`
/// (`$GITHUB_OUTPUT`, `$GITHUB_ENV`, `$GITHUB_STATE`).
pub fn append_file_command(path: &Path, entries: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut text = String::new();
    for (name, value) in entries {
        text.push_str(&heredoc(name, value)?);
    }
    append(path, &text)
}

/// Appends `text` to the file at `path`, creating it if needed.
pub fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// Escapes text for a Markdown table cell: Markdown punctuation gets a
/// backslash, HTML metacharacters become entities, line breaks become
/// spaces. Claim values (branch names, environment names) are chosen by
/// whoever triggers the run and must render as plain text.
pub fn markdown_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' | '\n' => out.push(' '),
            '\\' | '`' | '*' | '_' | '[' | ']' | '!' | '|' | '~' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// Is `name` usable as an environment variable name for `export-env`?
/// Letters, digits and `_`, not starting with a digit, and none of the
/// names the runner or the toolchain reserve.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let upper = name.to_ascii_uppercase();
    first_ok
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !upper.starts_with("GITHUB_")
        && !upper.starts_with("RUNNER_")
        && !upper.starts_with("ACTIONS_")
        && !matches!(
            upper.as_str(),
            "PATH" | "NODE_OPTIONS" | "LD_PRELOAD" | "LD_LIBRARY_PATH" | "DYLD_INSERT_LIBRARIES"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_escaping_keeps_a_message_on_one_line() {
        assert_eq!(escape_data("100% done\r\n::set-env name=X::1"), "100%25 done%0D%0A::set-env name=X::1");
        assert_eq!(escape_data("a:b,c"), "a:b,c");
    }

    #[test]
    fn property_escaping_also_escapes_colon_and_comma() {
        assert_eq!(escape_property("a:b,c%\n"), "a%3Ab%2Cc%25%0A");
    }

    #[test]
    fn command_lines_escape_properties_and_message() {
        assert_eq!(
            command("error", &[("title", "writ: denied, sorry")], "line 1\nline 2"),
            "::error title=writ%3A denied%2C sorry::line 1%0Aline 2"
        );
        assert_eq!(command("error", &[("title", "a"), ("file", "b")], "m"), "::error title=a,file=b::m");
        assert_eq!(command("add-mask", &[], "secret"), "::add-mask::secret");
    }

    #[test]
    fn heredoc_uses_the_delimiter_around_a_multiline_value() {
        let entry = heredoc_with("token", "a\nb", || Ok("DELIM".to_owned())).expect("entry");
        assert_eq!(entry, "token<<DELIM\na\nb\nDELIM\n");
    }

    #[test]
    fn heredoc_never_uses_a_delimiter_found_in_the_value() {
        let mut candidates = vec!["EOF".to_owned(), "SAFE".to_owned()].into_iter();
        let entry =
            heredoc_with("x", "evil\nEOF\ninjected<<EOF", || Ok(candidates.next().expect("candidate"))).expect("entry");
        assert_eq!(entry, "x<<SAFE\nevil\nEOF\ninjected<<EOF\nSAFE\n");
    }

    #[test]
    fn heredoc_gives_up_rather_than_write_an_ambiguous_entry() {
        let error = heredoc_with("x", "EOF", || Ok("EOF".to_owned())).expect_err("always collides");
        assert!(error.to_string().contains("delimiter"), "{error}");
    }

    #[test]
    fn heredoc_refuses_names_that_would_break_the_file() {
        for name in ["", "a\nb", "a=b", "a<<b"] {
            assert!(heredoc_with(name, "v", || Ok("D".to_owned())).is_err(), "{name:?}");
        }
    }

    #[test]
    fn random_delimiters_differ_and_are_long() {
        let a = heredoc("t", "v").expect("a");
        let b = heredoc("t", "v").expect("b");
        assert_ne!(a, b);
        let delim = a.lines().last().expect("last line");
        assert!(delim.starts_with("ghadelimiter_") && delim.len() == "ghadelimiter_".len() + 32, "{delim}");
    }

    #[test]
    fn markdown_text_renders_hostile_names_as_text() {
        assert_eq!(markdown_text("![x](http://e/)|<b>"), "\\!\\[x\\](http://e/)\\|&lt;b&gt;");
        assert_eq!(markdown_text("refs/heads/main 2026-11-27T12:10:00Z"), "refs/heads/main 2026-11-27T12:10:00Z");
    }

    #[test]
    fn env_names_are_checked() {
        assert!(valid_env_name("PLATFORM_API_TOKEN"));
        assert!(valid_env_name("_x1"));
        for bad in ["", "1A", "A-B", "A B", "PATH", "GITHUB_TOKEN", "runner_temp", "NODE_OPTIONS", "X\nY"] {
            assert!(!valid_env_name(bad), "{bad:?}");
        }
    }
}
