//! `api-keys`: the operator's command-line tool for the `api-keys` crate (feature `cli`).
//!
//! Master keys come from the environment or a file, never from an argument (other users of
//! the machine can read arguments in the process list). See `api-keys --help` and README's
//! "Operating" section.
//!
//! Exit codes: 0 success; 1 `rewrap` or `sweep` finished but some records failed; 2 usage
//! (bad or missing arguments); 3 configuration or store error (master key missing or malformed, store
//! unreachable, store support not built in), or the output could not be written (when
//! nothing else failed); 4 no such key; 5 a record failed its integrity check (tampered, or
//! sealed under a master key the keyring lacks).
#![forbid(unsafe_code)]

/// `println!` that a reader gone away (a closed pipe: `api-keys keys list ... | head -1`) does
/// not turn into a panic: the output ends there and the command's own exit code stands. Any
/// other failure to write is recorded ([`output_failed`]): the command runs to its end, and
/// its own failure (with its message) or else exit 3 is reported then.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*)
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            $crate::output_failed(&e);
        }
    }};
}

mod config;
mod keys;
mod output;
mod rewrap;
mod sweep;

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::{Args, Parser, Subcommand};

use api_keys::{
    AnyStore, AuditAction, AuditEvent, AuditSink, Error, KeyManager, Keyring, TracingAudit,
};

/// Operate the API keys of an `api-keys` store: rotate the master key, find keys about to
/// expire, revoke keys.
///
/// Master keys are read from the environment (API_KEYS_MASTER_KEY, API_KEYS_MASTER_KEY_VERSION,
/// API_KEYS_PREVIOUS_KEYS) or from --master-key-file, never from an argument.
///
/// Exit codes: 0 ok; 1 rewrap or sweep left failed records; 2 usage; 3 configuration or store
/// error; 4 no such key; 5 a record failed its integrity check.
#[derive(Parser, Debug)]
#[command(name = "api-keys", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command that touches the store shares.
#[derive(Args, Debug, Clone)]
pub(crate) struct Global {
    /// The SQLite file of the key store.
    #[arg(long, global = true, value_name = "PATH")]
    sqlite: Option<std::path::PathBuf>,
    /// The PostgreSQL URL of the key store; without --sqlite or --postgres, DATABASE_URL. A
    /// URL with a password is refused here (the process list shows arguments): use
    /// DATABASE_URL for it.
    #[arg(long, global = true, value_name = "URL")]
    postgres: Option<String>,
    /// A file with the master keys, one `VERSION:HEX` per line: the first is the current key,
    /// the others previous keys; `#` starts a comment. Instead of the environment.
    #[arg(long, global = true, value_name = "PATH")]
    master_key_file: Option<std::path::PathBuf>,
    /// The token prefix of the keys to operate on.
    #[arg(long, global = true, default_value = "sak", env = "API_KEYS_PREFIX")]
    prefix: String,
    /// Who is operating, as recorded on revocations and in the audit log (default: $USER).
    #[arg(long, global = true, env = "API_KEYS_OPERATOR")]
    operator: Option<String>,
    /// Machine-readable JSON on standard output instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Log the crate's audit events (info level) to standard error.
    #[arg(long, short, global = true)]
    verbose: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Master keys.
    #[command(subcommand)]
    MasterKey(MasterKeyCommand),
    /// Re-seal every record under the current master key (after adding a new one).
    Rewrap,
    /// Look at and revoke keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Run the automations once over every organization: expiry warnings (and `Expired`
    /// events) exactly once per key, unused-key warnings and revocations, retention purges.
    /// Safe to run on every node at once. Each notice this run claims is printed (a line per
    /// notice, or the `notices` array with --json): it is announced nowhere else.
    Sweep(SweepArgs),
}

/// The sweep's policy (the host's `Policy` decides in a server; here, the flags).
#[derive(Args, Debug)]
pub(crate) struct SweepArgs {
    /// Lead times of expiry warnings, comma-separated (e.g. 30d,7d,1d); `none` for none.
    #[arg(long, default_value = "30d,7d,1d", value_parser = config::parse_leads)]
    pub(crate) warn_before: config::Leads,
    /// Revoke keys unused (or, never used, created) longer than this, after their warning.
    #[arg(long, value_parser = config::parse_duration)]
    pub(crate) revoke_unused_after: Option<api_keys::time::Duration>,
    /// Delete revoked and expired keys this long after they stopped working.
    #[arg(long, value_parser = config::parse_duration)]
    pub(crate) purge_after: Option<api_keys::time::Duration>,
}

#[derive(Subcommand, Debug)]
enum MasterKeyCommand {
    /// Print a new random 16-byte master key as hex (from the operating system's generator),
    /// for your secret manager.
    New,
}

/// A failure with its exit code and a message that says what to do.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

pub(crate) const EXIT_FAILED_RECORDS: u8 = 1;
pub(crate) const EXIT_USAGE: u8 = 2;
pub(crate) const EXIT_CONFIG: u8 = 3;
pub(crate) const EXIT_NOT_FOUND: u8 = 4;
pub(crate) const EXIT_INTEGRITY: u8 = 5;

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(EXIT_USAGE, message)
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(EXIT_CONFIG, message)
    }

    /// A library error, with what to do about it.
    pub(crate) fn from_error(e: Error, what: &str) -> Self {
        match e {
            Error::NotFound => Self::new(EXIT_NOT_FOUND, format!("{what}: no such key")),
            Error::Integrity => Self::new(
                EXIT_INTEGRITY,
                format!(
                    "{what}: the stored record failed its integrity check — it was tampered \
                     with, or it is sealed under a master key this keyring lacks ({})",
                    config::add_previous_key()
                ),
            ),
            Error::Store(e) => Self::config(format!(
                "{what}: the key store failed: {}; check that it is reachable and retry",
                chain(&e)
            )),
            other => Self::new(EXIT_CONFIG, format!("{what}: {other}")),
        }
    }
}

/// An error and its sources, `a: b: c`.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    if cli.global.verbose {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::INFO)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::WARN)
            .init();
    }
    let result = run(cli);
    if let Some(e) = OUTPUT_FAILED.get() {
        eprintln!(
            "api-keys: cannot write the output: {e}; the command ran to its end, but its \
             answer was not written"
        );
    }
    match result {
        // The command's own failure stands: its code and message say more than exit 3.
        Ok(0) if OUTPUT_FAILED.get().is_some() => ExitCode::from(EXIT_CONFIG),
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            // A message may quote the host's input or a store's error text.
            eprintln!("api-keys: {}", output::text(&f.message));
            ExitCode::from(f.code)
        }
    }
}

/// A command line clap refuses. An argument clap does not expect, or an option's value it
/// cannot read, is not repeated (clap would quote it): it may be a whole token typed where
/// none belongs, and standard error may be logged. An unknown option is still named, and so is
/// the option whose value was refused.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        let option = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(arg)) => output::text(arg),
            _ => "an option".into(),
        };
        // The option's own parser says why without quoting the value (`parse_duration`).
        let why = std::error::Error::source(&e)
            .map(|s| format!(": {}", output::text(&s.to_string())))
            .unwrap_or_default();
        eprintln!(
            "api-keys: the value given for {option} is not valid{why} (the value is not \
             repeated here: it may be a token); see `api-keys --help`"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    if e.kind() == ErrorKind::TooManyValues {
        // `--json=VALUE`: clap would quote the value.
        let option = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(arg)) => output::text(arg).into_owned(),
            _ => "an option".into(),
        };
        eprintln!(
            "api-keys: {option} was given a value it does not take (the value is not repeated \
             here: it may be a token); see `api-keys --help`"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    if !matches!(
        e.kind(),
        ErrorKind::UnknownArgument | ErrorKind::InvalidSubcommand
    ) {
        e.exit();
    }
    match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) if arg.starts_with('-') && !arg.contains('=') => {
            eprintln!(
                "api-keys: unknown option {}; see `api-keys --help`",
                output::text(arg)
            );
        }
        _ => eprintln!(
            "api-keys: unexpected argument (not repeated here: it may be a token; tokens are \
             read from standard input by `keys revoke-leaked`, never taken as arguments); see \
             `api-keys --help`"
        ),
    }
    ExitCode::from(EXIT_USAGE)
}

fn run(cli: Cli) -> Result<u8, Failure> {
    if let Command::MasterKey(MasterKeyCommand::New) = cli.command {
        return config::new_master_key(cli.global.json).map(|()| 0);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::config(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let keyring = config::keyring(cli.global.master_key_file.as_deref())?;
        let store = config::store(&cli.global).await?;
        match cli.command {
            Command::MasterKey(_) => unreachable!("handled above"),
            Command::Rewrap => rewrap::run(store, keyring, &cli.global).await,
            Command::Keys(cmd) => {
                keys::run(&manager(store, keyring, &cli.global)?, &cli.global, cmd).await
            }
            Command::Sweep(args) => sweep::sweep(store, keyring, &cli.global, args).await,
        }
    })
}

/// The first failure of standard output other than a closed pipe (a full disk, an I/O error).
static OUTPUT_FAILED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Standard output failed for another reason than a closed pipe: recorded, not a panic and
/// not an exit here (that would stop a batch half-way and hide the command's own failure,
/// e.g. exit 5 for lines not revoked); `main` reports it when the command is done.
pub(crate) fn output_failed(e: &std::io::Error) {
    let _ = OUTPUT_FAILED.set(e.to_string());
}

/// A builder of the operator's manager over `store` with `keyring`.
pub(crate) fn builder(
    store: AnyStore,
    keyring: Keyring,
    global: &Global,
) -> api_keys::KeyManagerBuilder<AnyStore> {
    KeyManager::builder(store, keyring)
        .prefix(global.prefix.clone())
        .audit(CountingAudit)
        // An operator's tool reads fresh: no verification cache.
        .cache_capacity(0)
}

/// Records left out of a listing (or skipped by any command) because they failed their
/// integrity check, as the manager's audit sink saw them.
static INTEGRITY_FAILURES: AtomicUsize = AtomicUsize::new(0);

/// The default audit sink (`tracing`), counting integrity failures on the way: the listings
/// leave such records out, and the exit code must say so.
struct CountingAudit;

impl AuditSink for CountingAudit {
    fn record(&self, event: &AuditEvent) -> Result<(), api_keys::BoxError> {
        if matches!(event.action, AuditAction::IntegrityFailure) {
            INTEGRITY_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
        TracingAudit.record(event)
    }
}

/// How many records failed their integrity check so far in this run.
pub(crate) fn integrity_failures() -> usize {
    INTEGRITY_FAILURES.load(Ordering::Relaxed)
}

/// The manager over `store` with `keyring`.
pub(crate) fn manager(
    store: AnyStore,
    keyring: Keyring,
    global: &Global,
) -> Result<KeyManager<AnyStore>, Failure> {
    builder(store, keyring, global)
        .build()
        .map_err(build_failure)
}

pub(crate) fn build_failure(e: Error) -> Failure {
    match e {
        Error::Policy(msg) => Failure::usage(msg),
        other => Failure::config(other.to_string()),
    }
}
