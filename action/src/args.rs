//! Command-line parsing: `main`, `post`, `exchange`, `revoke`. Hand-written because the grammar is a handful of `--flag value` pairs and the binary should stay small.

use std::path::PathBuf;
use std::time::Duration;

use crate::client::parse_duration;

/// What to run.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// The GitHub Action's main step (inputs from `INPUT_*`).
    Main,
    /// The GitHub Action's post step: revoke the token.
    Post,
    /// Exchange an OIDC token given explicitly (any CI system).
    Exchange(ExchangeArgs),
    /// Revoke a writ token given explicitly.
    Revoke(RevokeArgs),
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

/// Where a token comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// A file's contents.
    File(PathBuf),
    /// An environment variable's value.
    Env(String),
    /// Standard input.
    Stdin,
}

/// `writ-action exchange …`.
#[derive(Debug, PartialEq, Eq)]
pub struct ExchangeArgs {
    /// The writ server's base URL.
    pub server: String,
    /// The org to get a token for.
    pub org: String,
    /// Where the OIDC token comes from.
    pub token: TokenSource,
    /// Permissions wanted.
    pub permissions: Vec<String>,
    /// Apps to limit the token to.
    pub apps: Vec<String>,
    /// Machines to limit the token to.
    pub machines: Vec<String>,
    /// Lifetime wanted, passed to the server as written (`10m`).
    pub ttl: Option<String>,
    /// Print the whole JSON answer instead of the token.
    pub json: bool,
    /// Total time for network calls.
    pub deadline: Option<Duration>,
}

/// `writ-action revoke …`.
#[derive(Debug, PartialEq, Eq)]
pub struct RevokeArgs {
    /// The writ server's base URL.
    pub server: String,
    /// Where the writ token comes from.
    pub token: TokenSource,
    /// Total time for network calls.
    pub deadline: Option<Duration>,
}

/// Usage text.
pub const USAGE: &str = "\
writ-action: trade a CI job's OIDC token for a short-lived writ token

Usage:
  writ-action main        the GitHub Action's main step (the default under GitHub Actions);
                          inputs come from INPUT_* variables
  writ-action post        the GitHub Action's post step: revoke the token of the main step
  writ-action exchange --server URL --org ORG
                       [--oidc-token-file FILE | --oidc-token-env VAR]   (default: read stdin)
                       [--permissions a,b] [--apps x,y] [--machines m] [--ttl 10m]
                       [--json] [--deadline 60s]
                          print the writ token (or, with --json, the server's whole answer)
  writ-action revoke --server URL [--token-file FILE | --token-env VAR]   (default: read stdin)
                          revoke a writ token (RFC 7009)
  writ-action --help | --version

Lists take commas or whitespace. Network calls are retried on network errors,
5xx and 429 within the deadline (default 60s, or WRIT_ACTION_DEADLINE).
Exit status: 0 done, 1 refused or failed, 2 usage error.";

/// A usage error: the message says what to change.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn usage<T>(message: impl Into<String>) -> Result<T, UsageError> {
    Err(UsageError(message.into()))
}

/// Splits a list input: commas, spaces and newlines separate; duplicates
/// and empty entries are dropped; order is kept.
pub fn split_list(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in text.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()) {
        if !out.iter().any(|o| o == item) {
            out.push(item.to_owned());
        }
    }
    out
}

/// Parses the arguments after the program name. With none, runs `main`
/// under GitHub Actions (the launcher passes `main` explicitly anyway) and
/// prints usage elsewhere.
pub fn parse(args: &[String], under_actions: bool) -> Result<Command, UsageError> {
    let Some((first, rest)) = args.split_first() else {
        return Ok(if under_actions { Command::Main } else { Command::Help });
    };
    let no_more = |command: Command| {
        if let Some(extra) = rest.first() { usage(format!("unexpected argument {extra:?}")) } else { Ok(command) }
    };
    match first.as_str() {
        "main" => no_more(Command::Main),
        "post" => no_more(Command::Post),
        "exchange" => parse_exchange(rest).map(Command::Exchange),
        "revoke" => parse_revoke(rest).map(Command::Revoke),
        "help" | "--help" | "-h" => Ok(Command::Help),
        "version" | "--version" | "-V" => Ok(Command::Version),
        other => usage(format!("unknown command {other:?}; expected main, post, exchange or revoke")),
    }
}

/// Flags seen so far, as (name, value) pairs, refusing repeats.
struct Flags {
    pairs: Vec<(String, Option<String>)>,
}

impl Flags {
    /// Splits `--name value`, `--name=value` and switches (`switches` take no
    /// value). Every flag must be in `known` or `switches`.
    fn read(args: &[String], known: &[&str], switches: &[&str]) -> Result<Flags, UsageError> {
        let mut pairs: Vec<(String, Option<String>)> = Vec::new();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return usage(format!("unexpected argument {arg:?}"));
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (flag, None),
            };
            if pairs.iter().any(|(n, _)| n == name) {
                return usage(format!("--{name} is given twice"));
            }
            if switches.contains(&name) {
                if inline.is_some() {
                    return usage(format!("--{name} takes no value"));
                }
                pairs.push((name.to_owned(), None));
            } else if known.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => match iter.next() {
                        Some(v) if !v.starts_with("--") => v.clone(),
                        _ => return usage(format!("--{name} needs a value")),
                    },
                };
                pairs.push((name.to_owned(), Some(value)));
            } else {
                let all: Vec<String> = known.iter().chain(switches).map(|k| format!("--{k}")).collect();
                return usage(format!("unknown flag --{name}; expected one of {}", all.join(", ")));
            }
        }
        Ok(Flags { pairs })
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref())
    }

    fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(n, _)| n == name)
    }

    fn required(&self, name: &str) -> Result<String, UsageError> {
        match self.value(name).map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v.to_owned()),
            _ => usage(format!("--{name} is required")),
        }
    }

    fn token_source(&self, file: &str, env: &str) -> Result<TokenSource, UsageError> {
        match (self.value(file), self.value(env)) {
            (Some(_), Some(_)) => usage(format!("give either --{file} or --{env}, not both")),
            (Some(path), None) => Ok(TokenSource::File(PathBuf::from(path))),
            (None, Some(var)) if !var.is_empty() => Ok(TokenSource::Env(var.to_owned())),
            (None, Some(_)) => usage(format!("--{env} needs a variable name")),
            (None, None) => Ok(TokenSource::Stdin),
        }
    }

    fn deadline(&self) -> Result<Option<Duration>, UsageError> {
        self.value("deadline")
            .map(|d| {
                parse_duration(d)
                    .ok_or_else(|| UsageError(format!("--deadline {d:?} is not a duration (60s, 1500ms, 2m)")))
            })
            .transpose()
    }
}

fn parse_exchange(args: &[String]) -> Result<ExchangeArgs, UsageError> {
    let flags = Flags::read(
        args,
        &["server", "org", "oidc-token-file", "oidc-token-env", "permissions", "apps", "machines", "ttl", "deadline"],
        &["json"],
    )?;
    Ok(ExchangeArgs {
        server: flags.required("server")?,
        org: flags.required("org")?,
        token: flags.token_source("oidc-token-file", "oidc-token-env")?,
        permissions: flags.value("permissions").map(split_list).unwrap_or_default(),
        apps: flags.value("apps").map(split_list).unwrap_or_default(),
        machines: flags.value("machines").map(split_list).unwrap_or_default(),
        ttl: flags.value("ttl").map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned),
        json: flags.has("json"),
        deadline: flags.deadline()?,
    })
}

fn parse_revoke(args: &[String]) -> Result<RevokeArgs, UsageError> {
    let flags = Flags::read(args, &["server", "token-file", "token-env", "deadline"], &[])?;
    Ok(RevokeArgs {
        server: flags.required("server")?,
        token: flags.token_source("token-file", "token-env")?,
        deadline: flags.deadline()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    fn exchange(text: &str) -> Result<ExchangeArgs, UsageError> {
        match parse(&args(&format!("exchange {text}")), false)? {
            Command::Exchange(e) => Ok(e),
            other => panic!("not an exchange: {other:?}"),
        }
    }

    #[test]
    fn no_arguments_means_main_under_actions_and_help_elsewhere() {
        assert_eq!(parse(&[], true), Ok(Command::Main));
        assert_eq!(parse(&[], false), Ok(Command::Help));
        assert_eq!(parse(&args("post"), true), Ok(Command::Post));
        assert_eq!(parse(&args("--version"), false), Ok(Command::Version));
    }

    #[test]
    fn exchange_reads_every_flag_in_both_spellings() {
        let e = exchange("--server https://w --org=acme-prod --oidc-token-env CI_JOB_JWT --permissions deploy,logs:read --apps=web --ttl 10m --json --deadline 5s")
            .expect("valid");
        assert_eq!(
            e,
            ExchangeArgs {
                server: "https://w".to_owned(),
                org: "acme-prod".to_owned(),
                token: TokenSource::Env("CI_JOB_JWT".to_owned()),
                permissions: vec!["deploy".to_owned(), "logs:read".to_owned()],
                apps: vec!["web".to_owned()],
                machines: vec![],
                ttl: Some("10m".to_owned()),
                json: true,
                deadline: Some(Duration::from_secs(5)),
            }
        );
    }

    #[test]
    fn the_token_comes_from_a_file_an_env_var_or_stdin() {
        assert_eq!(
            exchange("--server s --org o --oidc-token-file /t").expect("file").token,
            TokenSource::File("/t".into())
        );
        assert_eq!(exchange("--server s --org o").expect("stdin").token, TokenSource::Stdin);
        let both = exchange("--server s --org o --oidc-token-file f --oidc-token-env V").expect_err("both");
        assert!(both.0.contains("not both"), "{both}");
    }

    #[test]
    fn mistakes_are_usage_errors_that_say_what_to_change() {
        let cases = [
            ("--org o", "--server is required"),
            ("--server s", "--org is required"),
            ("--server s --org o --org p", "given twice"),
            ("--server s --org o --permission deploy", "unknown flag --permission"),
            ("--server s --org o --ttl", "--ttl needs a value"),
            ("--server s --org o --ttl --json", "--ttl needs a value"),
            ("--server s --org o --json=yes", "takes no value"),
            ("--server s --org o stray", "unexpected argument"),
            ("--server s --org o --deadline soon", "not a duration"),
        ];
        for (text, wanted) in cases {
            let error = exchange(text).expect_err(text);
            assert!(error.0.contains(wanted), "{text}: {error}");
        }
        assert!(parse(&args("deploy"), false).is_err());
        assert!(parse(&args("main extra"), true).is_err());
    }

    #[test]
    fn revoke_takes_a_server_and_a_token_source() {
        let parsed = parse(&args("revoke --server s --token-env T"), false).expect("valid");
        assert_eq!(
            parsed,
            Command::Revoke(RevokeArgs {
                server: "s".to_owned(),
                token: TokenSource::Env("T".to_owned()),
                deadline: None
            })
        );
    }

    #[test]
    fn lists_split_on_commas_and_whitespace_without_duplicates() {
        assert_eq!(split_list(" deploy, logs:read\nmetrics:read deploy ,"), ["deploy", "logs:read", "metrics:read"]);
        assert!(split_list(" , \n").is_empty());
    }
}
