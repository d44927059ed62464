//! Command-line errors: clap's messages and exit status 2, except that a
//! bad value that came from an environment variable (`LBMESH_…`,
//! `WEBHOOK_…`) rather than a flag is reported under the variable's name.

use clap::CommandFactory;
use clap::error::{ContextKind, ContextValue, ErrorKind};

use super::Cli;

/// Reports a parse error (or prints help or the version) and exits.
pub fn exit_with(e: clap::Error) -> ! {
    match from_environment(&e, std::env::args().skip(1).collect(), |v| {
        std::env::var(v).ok()
    }) {
        Some(text) => {
            eprint!("{text}");
            std::process::exit(e.exit_code())
        }
        None => e.exit(),
    }
}

/// The message naming the variable when `e` is about a value that came from
/// the environment; None when it is about something else or a flag.
fn from_environment(
    e: &clap::Error,
    argv: Vec<String>,
    env: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let Some(ContextValue::String(value)) = e.get(ContextKind::InvalidValue) else {
        return None;
    };
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    let flag = format!("--{long}");
    if argv
        .iter()
        .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
    {
        return None;
    }
    // The variable behind that flag (in any subcommand) that holds this value.
    let root = Cli::command();
    let mut stack = vec![&root];
    while let Some(c) = stack.pop() {
        for a in c.get_arguments() {
            if a.get_long() != Some(long) {
                continue;
            }
            let Some(var) = a.get_env().and_then(|v| v.to_str()) else {
                continue;
            };
            if env(var).as_deref().map(str::trim) == Some(value.trim()) {
                return Some(e.render().to_string().replace(&format!("'{arg}'"), var));
            }
        }
        stack.extend(c.get_subcommands());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn message(argv: &[&str], env: &[(&str, &str)]) -> Option<String> {
        let e = Cli::try_parse_from(argv).unwrap_err();
        let argv = argv[1..].iter().map(|s| s.to_string()).collect();
        from_environment(&e, argv, |v| {
            env.iter()
                .find(|(k, _)| *k == v)
                .map(|(_, x)| x.to_string())
        })
    }

    #[test]
    fn a_bad_flag_is_named_as_the_flag_and_a_bad_variable_as_the_variable() {
        // Clap reads the variables itself; these tests hand it the value
        // as a flag and ask whether the environment or argv held it.
        let e = Cli::try_parse_from(["lbmesh", "serve", "--api-listen", "nowhere"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let argv = vec!["serve".to_string()];
        let text = from_environment(&e, argv, |v| {
            (v == "LBMESH_API_LISTEN").then(|| "nowhere".into())
        })
        .unwrap();
        assert!(text.contains("LBMESH_API_LISTEN"), "{text}");
        assert!(!text.contains("--api-listen"), "{text}");
        // Given as a flag: clap's own message.
        assert_eq!(
            message(
                &["lbmesh", "serve", "--api-listen", "nowhere"],
                &[("LBMESH_API_LISTEN", "nowhere")]
            ),
            None
        );
        // Help is not an error.
        assert_eq!(message(&["lbmesh", "--help"], &[]), None);
    }
}
