//! The command line shared by the provider binaries (the adapter and the
//! upstream test server): `serve` (default), `config check`, `migrate`,
//! `keys list`, `keys rotate`, `users add|list|disable|enable|reset-password`,
//! `mapping preview`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::accounts::NewAccount;
use crate::clock::{Clock, SystemClock};
use crate::config::{self, Config, LoginPolicy};
use crate::keys::{describe_keys, KeyManager, Policy};
use crate::startup::{accounts_from_config, connect_store, Application};
use crate::store::Store;

#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// TOML configuration file (environment overrides still apply).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (default).
    Serve,
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Signing keys (RFC 7517 §5).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Local accounts in the store. Passwords are read from standard input
    /// (one line), never from the command line, where `ps` would show them.
    Users {
        #[command(subcommand)]
        action: UsersAction,
    },
    /// The claim mapping (`[[claims.rules]]`).
    Mapping {
        #[command(subcommand)]
        action: MappingAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum MappingAction {
    /// Print the ID-token, access-token and UserInfo claims the adapter
    /// would issue for the given upstream claims, the rule behind each,
    /// the sizes and any rule error. No login, no server, no database.
    Preview {
        /// The upstream (connector) id the user logs in with.
        #[arg(long)]
        upstream: String,
        /// The client id the tokens are for.
        #[arg(long)]
        client: String,
        /// A JSON file with the upstream's claims (ID token and userinfo), `sub` included.
        #[arg(long)]
        claims: PathBuf,
        /// Granted scopes, space-separated (default: the client's allowed_scopes).
        #[arg(long)]
        scope: Option<String>,
    },
}

fn mapping(config: &Config, action: MappingAction) -> anyhow::Result<()> {
    let MappingAction::Preview {
        upstream,
        client,
        claims,
        scope,
    } = action;
    let text = std::fs::read_to_string(&claims)
        .map_err(|e| Exit::usage(format!("{}: {e}", claims.display())))?;
    let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| Exit::usage(format!("{}: not a JSON object: {e}", claims.display())))?;
    let request = crate::mapping::preview::Request {
        upstream: &upstream,
        client: &client,
        claims,
        scopes: scope.map(|s| s.split_whitespace().map(String::from).collect()),
    };
    let report = crate::mapping::preview::report(config, &request).map_err(Exit::usage)?;
    print!("{}", report.text);
    if report.rule_errors > 0 || report.over_budget {
        return Err(Exit {
            code: Exit::FINDINGS,
            message: "the mapping has rule errors or a token over its budget (see above)".into(),
        }
        .into());
    }
    Ok(())
}

/// An error with its own exit code (`adapter mapping preview`: README
/// "Claim mapping"); every other error exits with 1.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    /// The preview ran and found rule errors or a token over its budget.
    pub const FINDINGS: u8 = 1;
    /// The preview could not run: the command line, the claims file or
    /// the configuration is wrong (clap's own usage errors exit with 2 too).
    pub const USAGE: u8 = 2;

    fn usage(message: impl Into<String>) -> Exit {
        Exit {
            code: Exit::USAGE,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

#[derive(Debug, Subcommand)]
pub enum UsersAction {
    /// Create an account; its password is read from standard input.
    Add {
        username: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// An account that logs in by e-mail codes only: no password is read.
        #[arg(long)]
        no_password: bool,
    },
    /// Print each account: username, e-mail, state, second factor.
    List,
    /// Stop an account from logging in.
    Disable { username: String },
    /// Let a disabled account log in again.
    Enable { username: String },
    /// Set a new password, read from standard input.
    ResetPassword { username: String },
    /// Set how one user logs in: `password`, `password_totp`,
    /// `email_code`, `passkey`, `password_passkey`, or `default` (the
    /// deployment's `accounts.policy`).
    SetPolicy { username: String, policy: String },
    /// Print the passkeys of an account: id, label, counter, flags.
    Passkeys { username: String },
    /// Unblock a passkey marked as possibly cloned (after checking the
    /// authenticator with its owner).
    ClearPasskeyMark { username: String, id: String },
    /// Remove a passkey of an account.
    RemovePasskey { username: String, id: String },
}

/// One line of standard input, without its line ending.
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        anyhow::bail!("no password on standard input");
    }
    Ok(password)
}

async fn users(config: &Config, action: UsersAction) -> anyhow::Result<()> {
    let store: Arc<dyn Store> = Arc::new(connect_store(&config.database.url, 1).await?);
    let hasher =
        crate::password::Hasher::new(1, 4).map_err(|e| anyhow::anyhow!("password hashing: {e}"))?;
    let accounts = accounts_from_config(config, store, Arc::new(SystemClock), Arc::new(hasher))?;
    match action {
        UsersAction::Add {
            username,
            email,
            name,
            no_password,
        } => {
            let password = if no_password {
                None
            } else {
                Some(read_password()?)
            };
            let account = accounts
                .create(NewAccount {
                    username: &username,
                    email: email.as_deref(),
                    password: password.as_deref(),
                    name: name.as_deref(),
                })
                .await?;
            println!("added {}", account.username());
        }
        UsersAction::List => {
            for a in accounts.list().await? {
                let policy = a.data.policy.map_or("default", LoginPolicy::as_str);
                println!(
                    "{}\t{}\t{}\t{}\t{policy}",
                    a.username(),
                    a.row.email.as_deref().unwrap_or("-"),
                    if a.data.disabled {
                        "disabled"
                    } else {
                        "active"
                    },
                    if a.data.totp.is_some() { "totp" } else { "-" },
                );
            }
        }
        UsersAction::Disable { username } => {
            accounts.set_disabled(&username, true).await?;
            println!("disabled {username}");
        }
        UsersAction::Enable { username } => {
            accounts.set_disabled(&username, false).await?;
            println!("enabled {username}");
        }
        UsersAction::SetPolicy { username, policy } => {
            let parsed = match policy.as_str() {
                "default" => None,
                other => Some(LoginPolicy::parse(other).ok_or_else(|| {
                    anyhow::anyhow!(
                        "policy must be password, password_totp, email_code, passkey, \
                         password_passkey or default"
                    )
                })?),
            };
            accounts.set_policy(&username, parsed).await?;
            println!("policy of {username}: {policy}");
        }
        UsersAction::Passkeys { username } => {
            let account = accounts
                .find(&username)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no such account: {username}"))?;
            for p in &account.data.passkeys {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    p.id,
                    p.label,
                    p.counter,
                    if p.backup_eligible {
                        "synced"
                    } else {
                        "device-bound"
                    },
                    if p.possibly_cloned {
                        "possibly-cloned"
                    } else {
                        "ok"
                    },
                );
            }
        }
        UsersAction::ClearPasskeyMark { username, id } => {
            if !accounts.clear_passkey_mark(&username, &id).await? {
                anyhow::bail!("{username} has no passkey {id}");
            }
            println!("passkey {id} of {username} unblocked");
        }
        UsersAction::RemovePasskey { username, id } => {
            if !accounts.remove_passkey(&username, &id).await? {
                anyhow::bail!("{username} has no passkey {id}");
            }
            println!("passkey {id} of {username} removed");
        }
        UsersAction::ResetPassword { username } => {
            accounts
                .reset_password(&username, &read_password()?)
                .await?;
            println!("password of {username} reset");
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Print each signing key's kid, algorithm, generation, schedule and
    /// state (next, active, retiring); never any private material.
    List,
    /// Publish the next key of each algorithm in use now; it signs once
    /// cached key sets hold it, and the key it replaces retires once the
    /// tokens it signed have expired.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate, then print the effective configuration with secrets
    /// (and a password in `database.url`) redacted.
    Check,
}

/// Turns the outcome of [`run`] into the process exit code: an error is
/// printed as one line (`Error: cause: cause…`, never a backtrace) and
/// exits with 1, or with the code of an [`Exit`].
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    // The server's last log lines before its exit status or error.
    crate::telemetry::flush();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            match e.downcast_ref::<Exit>() {
                Some(exit) => std::process::ExitCode::from(exit.code),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}

/// Entry point of a provider binary with its own defaults and env prefix.
pub async fn run(defaults: Config, env_prefix: &str) -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A preview of a broken configuration is a usage error (exit 2).
    let preview = matches!(cli.command, Some(Command::Mapping { .. }));
    let config_error = |e: String| -> anyhow::Error {
        let message = format!("configuration: {e}");
        if preview {
            Exit::usage(message).into()
        } else {
            anyhow::Error::msg(message)
        }
    };
    let config = config::load_from(defaults, cli.config.as_deref(), env_prefix)
        .map_err(|e| config_error(e.to_string()))?;
    // The same checks as `serve`, before anything is printed or opened.
    config.validate().map_err(|e| config_error(e.to_string()))?;
    let command = cli.command.unwrap_or(Command::Serve);
    // Only the server logs to standard output; a command's output is its result.
    crate::telemetry::init_to(
        config.server.log_format.as_str(),
        !matches!(command, Command::Serve),
    );
    match command {
        Command::Serve => {
            let app = Application::build(config).await?;
            app.run_until_stopped().await?;
        }
        Command::Config {
            action: ConfigAction::Check,
        } => {
            println!("{}", serde_json::to_string_pretty(&config.redacted())?);
        }
        Command::Migrate => {
            connect_store(&config.database.url, 1).await?;
            println!("schema is up to date");
        }
        Command::Keys { action } => {
            let store: Arc<dyn Store> = Arc::new(connect_store(&config.database.url, 1).await?);
            let now = SystemClock.now();
            if let KeysAction::Rotate = action {
                let keys = KeyManager::open(
                    store.clone(),
                    Policy::from_config(&config)?,
                    &config.keys,
                    &config.database.url,
                    Arc::new(SystemClock),
                )
                .await?;
                let published = keys.rotate(now).await?;
                if published.is_empty() {
                    println!("a next key is already waiting to activate; nothing published");
                } else {
                    println!("published: {}", published.join(", "));
                }
            }
            print!("{}", describe_keys(&store.list_keys().await?, now));
        }
        Command::Users { action } => users(&config, action).await?,
        Command::Mapping { action } => mapping(&config, action)?,
    }
    Ok(())
}
