//! `--config FILE`: the daemons' settings in one TOML file (`/etc/hostel/hostel.toml` in
//! the package), a table per role (`[up]`, `[controller]`, `[agent]`) whose keys are
//! that role's long flags without their dashes (`--data-dir` is `data-dir`). The file's
//! settings become command-line arguments before clap parses them, so a setting means
//! exactly what its flag means; a flag given on the command line, or a setting's
//! environment variable (`HOSTEL_DATABASE`, ...), wins over the file.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;

/// The roles whose settings the file holds.
pub const ROLES: [&str; 3] = ["up", "controller", "agent"];

/// `args` (a whole command line) with the settings of the file its `--config` names
/// put in after the role's name; unchanged when it names none or is no daemon's.
pub fn expand(cli: &clap::Command, args: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(role) = args.get(1).and_then(|a| a.to_str()) else {
        return Ok(args);
    };
    if !ROLES.contains(&role) {
        return Ok(args);
    }
    let given: Vec<&str> = args[2..].iter().filter_map(|a| a.to_str()).collect();
    let Some(file) = flag_value(&given, "config") else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the settings file {file} (--config)"))?;
    let extra = settings_args(cli, role, &text, &given, |name| {
        std::env::var_os(name).is_some()
    })
    .with_context(|| format!("in {file}"))?;
    let mut out = args[..2].to_vec();
    out.extend(extra.into_iter().map(OsString::from));
    out.extend(args[2..].iter().cloned());
    Ok(out)
}

/// The value of `--NAME VALUE` or `--NAME=VALUE` among `args`.
fn flag_value<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    let long = format!("--{name}");
    let with_eq = format!("--{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == long {
            args.get(i + 1).copied()
        } else {
            a.strip_prefix(with_eq.as_str())
        }
    })
}

/// The arguments `role`'s table in the settings `text` stands for, leaving out those
/// the command line (`given`) or the environment (`env_set`) sets already.
fn settings_args(
    cli: &clap::Command,
    role: &str,
    text: &str,
    given: &[&str],
    env_set: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    let table: toml::Table = text.parse().context("not valid TOML")?;
    for (key, value) in &table {
        if !ROLES.contains(&key.as_str()) || !value.is_table() {
            bail!(
                "`{key}`: settings go in a table per role, [up], [controller] or [agent], \
                 each with that command's flags as keys (data-dir = \"/var/lib/hostel\")"
            );
        }
    }
    let Some(toml::Value::Table(settings)) = table.get(role) else {
        return Ok(Vec::new());
    };
    let cmd = cli
        .find_subcommand(role)
        .with_context(|| format!("no command `hostel {role}`"))?;
    let mut out = Vec::new();
    for (key, value) in settings {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .with_context(|| {
                let keys: Vec<&str> = cmd
                    .get_arguments()
                    .filter_map(|a| a.get_long())
                    .filter(|l| *l != "config" && *l != "help")
                    .collect();
                format!(
                    "[{role}] {key}: `hostel {role}` has no flag --{key}; its settings are {}",
                    keys.join(", ")
                )
            })?;
        let flag = format!("--{key}");
        let on_command_line = given
            .iter()
            .any(|a| *a == flag || a.starts_with(&format!("{flag}=")));
        let in_env = arg.get_env().and_then(|e| e.to_str()).is_some_and(&env_set);
        if on_command_line || in_env {
            continue;
        }
        let bad = |what: &str| anyhow::anyhow!("[{role}] {key}: {what}");
        if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
            match value {
                toml::Value::Boolean(true) => out.push(flag),
                toml::Value::Boolean(false) => {}
                _ => return Err(bad("give true or false")),
            }
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => {
                if !matches!(arg.get_action(), clap::ArgAction::Append) {
                    return Err(bad("takes one value, not a list"));
                }
                items.iter().map(scalar).collect::<Option<Vec<_>>>()
            }
            v => scalar(v).map(|s| vec![s]),
        }
        .ok_or_else(|| bad("give a string, a number or true/false"))?;
        for v in values {
            out.push(flag.clone());
            out.push(v);
        }
    }
    Ok(out)
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn cli() -> clap::Command {
        crate::Cli::command()
    }

    fn args(role: &str, text: &str, given: &[&str]) -> Result<Vec<String>> {
        settings_args(&cli(), role, text, given, |_| false)
    }

    #[test]
    fn settings_become_flags_and_the_command_line_wins() {
        let text = r#"
            [up]
            data-dir = "/srv/hostel"
            listen = "0.0.0.0:8470"
            no-default-network = true
            default-lease-days = 30
            [agent]
            tls-dir = "/etc/hostel/agent"
        "#;
        assert_eq!(
            args("up", text, &[]).unwrap(),
            [
                "--data-dir",
                "/srv/hostel",
                "--default-lease-days",
                "30",
                "--listen",
                "0.0.0.0:8470",
                "--no-default-network"
            ]
        );
        let given = ["--listen", "127.0.0.1:1", "--data-dir=/x"];
        assert_eq!(
            args("up", text, &given).unwrap(),
            ["--default-lease-days", "30", "--no-default-network"]
        );
        assert_eq!(
            args("agent", text, &[]).unwrap(),
            ["--tls-dir", "/etc/hostel/agent"]
        );
        assert!(args("controller", text, &[]).unwrap().is_empty());
        // A setting whose environment variable is set is left to it.
        let env = settings_args(&cli(), "up", "[up]\ndatabase = \"x\"", &[], |n| {
            n == "HOSTEL_DATABASE"
        })
        .unwrap();
        assert!(env.is_empty());
        // The whole command line parses, the file's settings in it.
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        let line: Vec<OsString> = ["hostel", "up", "--config"]
            .iter()
            .map(OsString::from)
            .chain([file.path().as_os_str().to_owned()])
            .collect();
        let expanded = expand(&cli(), line).unwrap();
        <crate::Cli as clap::Parser>::try_parse_from(expanded).unwrap();
    }

    #[test]
    fn wrong_settings_say_what_and_where() {
        let e = format!("{:#}", args("up", "[up]\nlisten-on = 1", &[]).unwrap_err());
        assert!(
            e.contains("has no flag --listen-on") && e.contains("data-dir"),
            "{e}"
        );
        let e = format!("{:#}", args("up", "data-dir = \"/x\"", &[]).unwrap_err());
        assert!(e.contains("a table per role"), "{e}");
        let e = format!("{:#}", args("up", "[web]\nx = 1", &[]).unwrap_err());
        assert!(e.contains("`web`"), "{e}");
        let e = format!(
            "{:#}",
            args("up", "[up]\nno-default-network = 1", &[]).unwrap_err()
        );
        assert!(e.contains("true or false"), "{e}");
        let e = format!(
            "{:#}",
            args("up", "[up]\nlisten = [\"a\"]", &[]).unwrap_err()
        );
        assert!(e.contains("one value"), "{e}");
        let e = format!("{:#}", args("up", "[up\n", &[]).unwrap_err());
        assert!(e.contains("TOML"), "{e}");
        let e = format!(
            "{:#}",
            expand(
                &cli(),
                ["hostel", "agent", "--config", "/nonexistent/h.toml"]
                    .iter()
                    .map(OsString::from)
                    .collect()
            )
            .unwrap_err()
        );
        assert!(e.contains("/nonexistent/h.toml"), "{e}");
    }

    /// The file the package installs: every setting in it, set or shown commented out,
    /// is a flag of its role, and its set ones parse.
    #[test]
    fn the_packaged_file_names_only_real_flags() {
        let text = include_str!("../../../packaging/hostel.toml");
        let mut uncommented = String::new();
        for line in text.lines() {
            let t = line.trim_start();
            let t = t
                .strip_prefix("# ")
                .filter(|r| r.contains(" = "))
                .unwrap_or(t);
            if !t.starts_with('#') {
                uncommented.push_str(t);
                uncommented.push('\n');
            }
        }
        let mut shown = 0;
        for role in ROLES {
            shown += args(role, &uncommented, &[]).unwrap().len();
            args(role, text, &[]).unwrap();
        }
        assert!(shown > 30, "{shown}");
    }
}
