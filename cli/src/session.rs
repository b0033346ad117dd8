//! Which server, which credentials and which tenant a command uses, and the generated
//! client built from them. Flags win over environment variables, which win over the
//! context. An access token about to expire is renewed with the refresh token before a
//! call, and once more if the server refuses it anyway (a clock ahead of ours).

use std::time::Duration;

use nexus_client::types::ErrorBody;
use nexus_client::{Client, ClientAuthExt, Error};
use reqwest::header::{HeaderMap, HeaderValue};

use crate::Fail;
use crate::args::Global;
use crate::config::{ConfigFile, Session, Store};

/// How long before its expiry an access token is renewed.
const RENEW_MARGIN: Duration = Duration::from_secs(10);

pub enum Auth {
    /// `NEXUS_API_KEY`: one tenant, no file.
    ApiKey(String),
    /// A context's login.
    User { user: String },
    /// Nothing (register, login, health).
    Anonymous,
}

pub struct Api {
    pub server: String,
    pub tenant: Option<String>,
    pub auth: Auth,
    pub client: Client,
    /// The context whose session this is, when there is one.
    pub context: Option<String>,
    store: Option<Store>,
    /// The access token the client was built with.
    token: Option<String>,
}

/// The server's URL without a trailing slash.
pub fn normalise_server(server: &str) -> String {
    let server = server.trim().trim_end_matches('/');
    if server.contains("://") { server.to_owned() } else { format!("http://{server}") }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.trim().is_empty())
}

/// The context a command reads: `--context`, `NEXUS_CONTEXT`, then the current one.
pub fn context_name(global: &Global, config: &ConfigFile) -> Option<String> {
    global.context.clone().or_else(|| env("NEXUS_CONTEXT")).or_else(|| config.current_context.clone())
}

pub fn http_client(headers: HeaderMap) -> Result<reqwest::Client, Fail> {
    reqwest::Client::builder()
        .default_headers(headers)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("nexus-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| Fail::new(format!("cannot set up the HTTP client: {err}")))
}

fn header(value: &str, what: &str) -> Result<HeaderValue, Fail> {
    HeaderValue::from_str(value).map_err(|_| Fail::new(format!("{what} holds characters a header cannot carry")))
}

impl Api {
    /// An unauthenticated client for `server` (login, register).
    pub fn anonymous(server: &str) -> Result<Self, Fail> {
        let server = normalise_server(server);
        Ok(Self {
            client: Client::new_with_client(&server, http_client(HeaderMap::new())?),
            server,
            tenant: None,
            auth: Auth::Anonymous,
            context: None,
            store: None,
            token: None,
        })
    }

    /// The credentials a command acts with. `need_user`: tenant and key routes, which API
    /// keys may not call.
    pub fn resolve(global: &Global, need_user: bool) -> Result<Self, Fail> {
        let store = Store::open()?;
        let config = store.load()?;
        let context_name = context_name(global, &config);
        let context = match &context_name {
            Some(name) => match config.context(name) {
                Some(context) => Some(context.clone()),
                None if global.context.is_some() || env("NEXUS_CONTEXT").is_some() => {
                    return Err(Fail::new(format!("no context named {name:?}: nexus context list shows them")));
                }
                None => None,
            },
            None => None,
        };
        let server = global
            .server
            .clone()
            .or_else(|| env("NEXUS_SERVER"))
            .or_else(|| context.as_ref().map(|context| context.server.clone()))
            .map(|server| normalise_server(&server));
        let tenant = global.tenant.clone().or_else(|| env("NEXUS_TENANT"));
        let api_key = env("NEXUS_API_KEY");

        if let Some(key) = api_key.filter(|_| !need_user) {
            let Some(server) = server else {
                return Err(Fail::new("no server to talk to: pass --server URL or set NEXUS_SERVER"));
            };
            let mut headers = HeaderMap::new();
            headers.insert("x-api-key", header(&key, "NEXUS_API_KEY")?);
            if let Some(tenant) = &tenant {
                headers.insert("x-tenant-id", header(tenant, "the tenant")?);
            }
            return Ok(Self {
                client: Client::new_with_client(&server, http_client(headers)?),
                server,
                tenant,
                auth: Auth::ApiKey(key),
                context: None,
                store: None,
                token: None,
            });
        }

        let Some(server) = server else {
            return Err(Fail::new("not logged in: run nexus login --server URL (or set NEXUS_SERVER and NEXUS_API_KEY)"));
        };
        // The login of the context naming this server (the server may come from a flag).
        let login = context.as_ref().filter(|context| normalise_server(&context.server) == server).and_then(|context| context.user.clone());
        let Some(user) = login.filter(|user| config.session(&server, user).is_some()) else {
            return Err(Fail::new(format!("not logged in to {server}: run nexus login --server {server}")));
        };
        let tenant = tenant.or_else(|| context.as_ref().and_then(|context| context.tenant.clone()));
        let session = config.session(&server, &user).cloned().expect("checked above");
        let mut api = Self {
            client: Client::new(&server),
            server,
            tenant,
            auth: Auth::User { user },
            context: context.map(|context| context.name),
            store: Some(store),
            token: None,
        };
        api.rebuild(&session)?;
        Ok(api)
    }

    fn rebuild(&mut self, session: &Session) -> Result<(), Fail> {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", header(&format!("Bearer {}", session.access_token), "the access token")?);
        if let Some(tenant) = &self.tenant {
            headers.insert("x-tenant-id", header(tenant, "the tenant")?);
        }
        self.client = Client::new_with_client(&self.server, http_client(headers)?);
        self.token = Some(session.access_token.clone());
        Ok(())
    }

    pub fn is_user(&self) -> bool {
        matches!(self.auth, Auth::User { .. })
    }

    /// Renews the access token when it expires within [`RENEW_MARGIN`], or when `force`.
    /// Under the folder's lock, and with the file read again under it: when another
    /// process renewed it meanwhile, its tokens are used rather than renewed again.
    pub async fn renew(&mut self, force: bool) -> Result<(), Fail> {
        let (Auth::User { user }, Some(store)) = (&self.auth, &self.store) else { return Ok(()) };
        let user = user.clone();
        let _lock = store.lock()?;
        let mut config = store.load()?;
        let Some(session) = config.session(&self.server, &user).cloned() else {
            return Err(Fail::new(format!("not logged in to {}: run nexus login --server {}", self.server, self.server)));
        };
        let fresh = session.access_expires_at - chrono::Utc::now() > chrono::Duration::from_std(RENEW_MARGIN).unwrap_or_default();
        let renewed_elsewhere = self.token.as_deref() != Some(session.access_token.as_str());
        if fresh && (!force || renewed_elsewhere) {
            return self.rebuild(&session);
        }
        let anonymous = Client::new_with_client(&self.server, http_client(HeaderMap::new())?);
        let answer = anonymous.auth_refresh().body(nexus_client::types::RefreshRequest { refresh_token: session.refresh_token.clone() }).send().await;
        match answer {
            Ok(pair) => {
                let pair = pair.into_inner();
                let renewed = Session {
                    server: self.server.clone(),
                    user: user.clone(),
                    access_expires_at: expiry(pair.expires_in),
                    access_token: pair.access_token,
                    refresh_token: pair.refresh_token,
                };
                config.upsert_session(renewed.clone());
                store.save(&config)?;
                self.rebuild(&renewed)
            }
            Err(Error::ErrorResponse(answer)) if answer.status().as_u16() == 401 => {
                config.remove_session(&self.server, &user);
                store.save(&config)?;
                Err(Fail::new(format!("your session on {} has ended ({}): run nexus login --server {}", self.server, answer.into_inner().error, self.server)))
            }
            Err(err) => Err(self.fail(err)),
        }
    }

    /// Whether a failed call is worth one renewal and a retry: a user's token refused.
    pub fn retry_after_renewal(&self, err: &Error<ErrorBody>) -> bool {
        self.is_user() && matches!(err, Error::ErrorResponse(answer) if answer.status().as_u16() == 401)
    }

    /// A failed call, told as what to do about it.
    pub fn fail(&self, err: Error<ErrorBody>) -> Fail {
        match err {
            Error::ErrorResponse(answer) => {
                let status = answer.status();
                let body = answer.into_inner();
                self.answer_fail(status.as_u16(), body)
            }
            Error::CommunicationError(err) => self.transport_fail(&err),
            Error::InvalidRequest(message) => Fail::new(format!("invalid request: {message}")),
            Error::UnexpectedResponse(response) => {
                Fail::new(format!("the server at {} answered {} unexpectedly: is --server a Nexus server?", self.server, response.status()))
            }
            other => Fail::new(format!("the server at {} answered something unreadable ({other}): is --server a Nexus server of this version?", self.server)),
        }
    }

    pub fn answer_fail(&self, status: u16, body: ErrorBody) -> Fail {
        let mut message = match (status, &self.auth) {
            (401, Auth::ApiKey(_)) => format!("the API key was refused ({}): check NEXUS_API_KEY", body.error),
            (401, Auth::User { .. }) => format!("{}: run nexus login --server {}", body.error, self.server),
            (403, Auth::ApiKey(_)) if body.error.contains("API key") => {
                format!("{}: tenants and keys need a user's login (nexus login), not NEXUS_API_KEY", body.error)
            }
            (400, Auth::User { .. }) if self.tenant.is_none() && body.error.contains("X-Tenant-ID") => {
                format!("{}: choose a tenant with --tenant, NEXUS_TENANT or nexus context set-tenant", body.error)
            }
            _ => body.error.clone(),
        };
        if !body.errors.is_empty() {
            // The message names the first problem; the list names them all.
            if let Some((summary, _)) = message.split_once(": ") {
                message = summary.to_owned() + ":";
            }
        }
        for problem in &body.errors {
            message.push_str(&format!("\n  {}: {}", problem.field, problem.message));
        }
        Fail::new(message).status(status)
    }

    pub fn transport_fail(&self, err: &reqwest::Error) -> Fail {
        transport_fail(&self.server, err)
    }
}

pub fn transport_fail(server: &str, err: &reqwest::Error) -> Fail {
    let cause = std::error::Error::source(err).map_or_else(|| err.to_string(), root_cause);
    if err.is_connect() {
        Fail::new(format!("cannot reach the server at {server} ({cause}): is it running? check --server or NEXUS_SERVER"))
    } else if err.is_timeout() {
        Fail::new(format!("the server at {server} did not answer in time ({cause})"))
    } else {
        Fail::new(format!("the connection to {server} failed ({cause})"))
    }
}

fn root_cause(err: &dyn std::error::Error) -> String {
    let mut err = err;
    while let Some(source) = err.source() {
        err = source;
    }
    err.to_string()
}

pub fn expiry(expires_in: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::seconds(expires_in.max(0))
}

/// Calls the generated client with the command's credentials: the access token renewed
/// first when it is about to expire, and once more, then the call retried, if the server
/// refuses it anyway.
#[macro_export]
macro_rules! call {
    ($api:expr, |$client:ident| $body:expr) => {{
        $api.renew(false).await?;
        let first = {
            let $client = &$api.client;
            $body.await
        };
        match first {
            Ok(answer) => Ok(answer),
            Err(err) if $api.retry_after_renewal(&err) => {
                $api.renew(true).await?;
                let $client = &$api.client;
                $body.await.map_err(|err| $api.fail(err))
            }
            Err(err) => Err($api.fail(err)),
        }
    }};
}
