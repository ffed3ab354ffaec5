//! `codelab chat`, `codelab login`, `codelab logout`: the terminal IDE (behaviour in
//! `codelab-client`; this module only maps flags and exit codes).
//!
//! Exit codes: 0 the turn finished (or the interactive chat ended), 1 an error, 2 the login
//! failed (wrong password, lockout, expired login without credentials), 130 interrupted.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use codelab_client::api::GatewayApi;
use codelab_client::auth::{AuthClient, AuthError, http_client};
use codelab_client::chat::Chat;
use codelab_client::credentials::TokenStore;
use codelab_client::input::LineReader;
use codelab_client::login::{self, LogoutOutcome};
use codelab_client::render::{Output, OutputMode};
use codelab_client::session::{
    ApprovalMode, ChatError, ChatOptions, ReconnectPolicy, SessionChoice, TurnEnd,
};
use codelab_client::tools::{Limits, ToolExecutor};

/// Exit code of a failed login.
const LOGIN_FAILED: u8 = 2;

/// Arguments of `codelab chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The server (`codelab up`'s public address by default).
    #[arg(long, env = "CODELAB_SERVER", default_value = codelab_client::DEFAULT_SERVER)]
    server: String,
    /// The folder the agent's file and command tools work in (and are confined to).
    #[arg(long, default_value = ".")]
    workspace: PathBuf,
    /// Continue this session (its history is shown, its pending approvals re-offered).
    #[arg(long, conflicts_with = "new")]
    session: Option<String>,
    /// Start a new session (the default).
    #[arg(long)]
    new: bool,
    /// Send the first message to this agent (coder, architect, debug, ask, orchestrator).
    #[arg(long)]
    agent: Option<String>,
    /// Send this message, follow its turn, and exit (0 when the turn completed).
    #[arg(short, long)]
    message: Option<String>,
    /// Approve every call that requires approval (for scripts).
    #[arg(long, conflicts_with = "reject")]
    yes: bool,
    /// Reject every call that requires approval (for scripts), with `--feedback`.
    #[arg(long)]
    reject: bool,
    /// The feedback sent with `--reject`.
    #[arg(long, requires = "reject")]
    feedback: Option<String>,
    /// Print one JSON object per line (frames received, tool results sent) instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `codelab login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The server.
    #[arg(long, env = "CODELAB_SERVER", default_value = codelab_client::DEFAULT_SERVER)]
    server: String,
    /// The username (else `CODELAB_USERNAME`, else asked for).
    #[arg(long, env = "CODELAB_USERNAME")]
    username: Option<String>,
    /// Read the password from stdin (one line), for scripts; else `CODELAB_PASSWORD`, else
    /// asked for without echo.
    #[arg(long)]
    password_stdin: bool,
}

/// Arguments of `codelab logout`.
#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The server.
    #[arg(long, env = "CODELAB_SERVER", default_value = codelab_client::DEFAULT_SERVER)]
    server: String,
}

fn fail(error: &dyn std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(code)
}

fn auth_exit(error: &AuthError) -> ExitCode {
    let code = if error.is_login_failure() {
        LOGIN_FAILED
    } else {
        1
    };
    fail(error, code)
}

fn store() -> Result<TokenStore, ExitCode> {
    TokenStore::default_location().map_err(|e| fail(&e, 1))
}

/// `codelab login`.
pub async fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let store = match store() {
        Ok(store) => store,
        Err(code) => return Ok(code),
    };
    let auth = AuthClient::new(http_client(), &args.server);
    let env_password = std::env::var("CODELAB_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    let (username, password) = if args.password_stdin {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        let password = text.lines().next().unwrap_or("").to_owned();
        let Some(username) = args.username else {
            return Ok(fail(
                &"--password-stdin needs --username (or CODELAB_USERNAME)",
                LOGIN_FAILED,
            ));
        };
        (username, password)
    } else if let (Some(username), Some(password)) = (args.username.clone(), env_password) {
        (username, password)
    } else if std::io::stdin().is_terminal() {
        match login::prompt_credentials(auth.server()) {
            Ok(credentials) => (
                args.username.unwrap_or(credentials.username),
                credentials.password,
            ),
            Err(e) => return Ok(auth_exit(&e)),
        }
    } else {
        return Ok(fail(
            &"no credentials: use --username with --password-stdin, or set CODELAB_USERNAME \
              and CODELAB_PASSWORD",
            LOGIN_FAILED,
        ));
    };
    if password.is_empty() {
        return Ok(fail(&"the password is empty", LOGIN_FAILED));
    }
    match login::login(&auth, &store, &username, &password).await {
        Ok(_) => {
            eprintln!("Logged in to {} as {username}.", auth.server());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(auth_exit(&e)),
    }
}

/// `codelab logout`.
pub async fn logout(args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let store = match store() {
        Ok(store) => store,
        Err(code) => return Ok(code),
    };
    let auth = AuthClient::new(http_client(), &args.server);
    match login::logout(&auth, &store).await {
        Ok(LogoutOutcome::Revoked) => {
            eprintln!("Logged out of {}.", auth.server());
            Ok(ExitCode::SUCCESS)
        }
        Ok(LogoutOutcome::DeletedLocally(reason)) => {
            eprintln!(
                "Deleted the saved login for {}, but the server could not revoke it: {reason}",
                auth.server()
            );
            Ok(ExitCode::FAILURE)
        }
        Ok(LogoutOutcome::NotLoggedIn) => {
            eprintln!("Not logged in to {}.", auth.server());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(auth_exit(&e)),
    }
}

fn chat_exit(error: &ChatError) -> ExitCode {
    let code = if error.is_login_failure() {
        LOGIN_FAILED
    } else {
        1
    };
    fail(error, code)
}

/// `codelab chat`.
pub async fn chat(args: ChatArgs) -> anyhow::Result<ExitCode> {
    let store = match store() {
        Ok(store) => store,
        Err(code) => return Ok(code),
    };
    let executor = match ToolExecutor::new(&args.workspace, Limits::default()) {
        Ok(executor) => executor,
        Err(e) => {
            return Ok(fail(
                &format!("cannot use the workspace {}: {e}", args.workspace.display()),
                1,
            ));
        }
    };
    let http = http_client();
    let auth = AuthClient::new(http.clone(), &args.server);
    let tokens = match login::logged_in(auth, store).await {
        Ok(tokens) => Arc::new(tokens),
        Err(e) => return Ok(auth_exit(&e)),
    };
    let api = GatewayApi::new(http, tokens);
    let approval = if args.yes {
        ApprovalMode::Approve
    } else if args.reject {
        ApprovalMode::Reject(args.feedback.clone())
    } else {
        ApprovalMode::Ask
    };
    let options = ChatOptions {
        agent: args.agent.clone(),
        approval,
        reconnect: ReconnectPolicy::default(),
    };
    let mode = if args.json {
        OutputMode::Json
    } else {
        OutputMode::Human
    };
    let session = match &args.session {
        Some(id) => SessionChoice::Resume(id.clone()),
        None => SessionChoice::New,
    };
    let resumed = matches!(session, SessionChoice::Resume(_));
    let mut chat = match Chat::open(api, executor, Output::stdio(mode), options, session).await {
        Ok(chat) => chat,
        Err(e) => return Ok(chat_exit(&e)),
    };
    let mut lines = LineReader::stdin();
    let code = match &args.message {
        Some(message) => match run_message(&mut chat, message, resumed, &mut lines).await {
            Ok(end) => {
                if mode == OutputMode::Human {
                    report_end(end);
                }
                ExitCode::from(end.exit_code())
            }
            Err(e) => chat_exit(&e),
        },
        None => match chat.interactive(&mut lines, resumed).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => chat_exit(&e),
        },
    };
    chat.close().await;
    Ok(code)
}

/// `-m`: in a resumed session, first the work it waits for (a new message would cancel its
/// open calls), then the message.
async fn run_message(
    chat: &mut Chat,
    message: &str,
    resumed: bool,
    lines: &mut LineReader,
) -> Result<TurnEnd, ChatError> {
    if resumed
        && let Some(end) = chat.finish_open_work(Some(lines)).await?
        && end == TurnEnd::Interrupted
    {
        return Ok(end);
    }
    let end = chat.run_turn(message, Some(lines)).await?;
    chat.show_turn_usage(end).await;
    Ok(end)
}

fn report_end(end: TurnEnd) {
    match end {
        TurnEnd::AwaitingApprovals => {
            eprintln!("The turn waits for approvals; continue with `codelab chat --session ID`.")
        }
        TurnEnd::Interrupted => eprintln!("Stopped waiting; the turn may still finish."),
        _ => {}
    }
}
