//! Every verb: what it asks the server (through the generated client) and what it prints.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nexus_client::types::{self, ErrorBody, Me};
use nexus_client::{ClientAgentsExt, ClientAuthExt, ClientInfo, ClientKeysExt, ClientMeExt, ClientTenantsExt};
use serde_json::Value;

use crate::args::{
    ApplyArgs, Cli, ContextVerb, DeleteArgs, DescribeArgs, EventsArgs, GetArgs, Global, KeyScope, KeysVerb, LoginArgs, LogsArgs, Output, OutputArgs,
    RegisterArgs, RollbackArgs, RunArgs, TenantsVerb, Verb, VersionsArgs, WaitArgs,
};
use crate::config::{Context, Session, Store, default_context_name};
use crate::manifests::{self, Manifest};
use crate::output::{self, Colour, Spinner, Table, age, paint, phase_colour, print_json, print_yaml};
use crate::session::{Api, context_name, expiry, normalise_server};
use crate::{Fail, call, prompt};

pub async fn run(cli: Cli, server: Option<clap::Command>) -> Result<ExitCode, Fail> {
    let global = cli.global;
    match cli.verb {
        Verb::Login(args) => login(&global, &args, None).await,
        Verb::Register(args) => register(&global, &args).await,
        Verb::Logout => logout(&global).await,
        Verb::Whoami(output) => whoami(&global, &output).await,
        Verb::Context(verb) => context(&global, verb),
        Verb::Tenants(verb) => tenants(&global, verb).await,
        Verb::Keys(verb) => keys(&global, verb).await,
        Verb::Apply(args) => apply(&global, &args).await,
        Verb::Get(args) => get(&global, &args).await,
        Verb::Describe(args) => describe(&global, &args).await,
        Verb::Delete(args) => delete(&global, &args).await,
        Verb::Logs(args) => logs(&global, &args).await,
        Verb::Events(args) => events(&global, &args).await,
        Verb::Run(args) => run_agent(&global, &args).await,
        Verb::Versions(args) => versions(&global, &args).await,
        Verb::Rollback(args) => rollback(&global, &args).await,
        Verb::Wait(args) => wait(&global, &args).await,
        Verb::Completion { shell } => {
            let mut command = crate::command(server);
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "nexus", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script).map_err(|err| Fail::new(format!("cannot write the script: {err}")))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.trim().is_empty())
}

// --- sign-in and contexts ---------------------------------------------------------

/// The server `login` and `register` talk to: the flag, the variable, or the context's.
fn login_server(global: &Global) -> Result<String, Fail> {
    if let Some(server) = global.server.clone().or_else(|| env("NEXUS_SERVER")) {
        return Ok(normalise_server(&server));
    }
    let store = Store::open()?;
    let config = store.load()?;
    context_name(global, &config)
        .and_then(|name| config.context(&name).map(|context| context.server.clone()))
        .ok_or_else(|| Fail::new("which server? pass --server URL (or set NEXUS_SERVER)"))
}

fn credentials(args: &LoginArgs) -> Result<(String, String), Fail> {
    let email = match &args.email {
        Some(email) => email.clone(),
        None if args.password_stdin => return Err(Fail::new("with --password-stdin, pass the email with --email")),
        None if prompt::stdin_is_terminal() => prompt::ask("Email: ")?,
        None => return Err(Fail::new("no terminal to ask the email on: pass --email (and --password-stdin)")),
    };
    let password = if args.password_stdin { prompt::first_line_of_stdin()? } else { prompt::ask_password("Password: ")? };
    if email.trim().is_empty() || password.is_empty() {
        return Err(Fail::new("an email and a password are needed"));
    }
    Ok((email.trim().to_owned(), password))
}

/// Keeps a new session and makes its context the current one.
fn keep_session(global: &Global, server: &str, email: &str, pair: (String, String, i64)) -> Result<String, Fail> {
    let store = Store::open()?;
    let _lock = store.lock()?;
    let mut config = store.load()?;
    let name = global.context.clone().or_else(|| env("NEXUS_CONTEXT")).unwrap_or_else(|| default_context_name(server));
    let tenant =
        config.context(&name).filter(|context| context.server == server && context.user.as_deref() == Some(email)).and_then(|context| context.tenant.clone());
    config.upsert_context(Context { name: name.clone(), server: server.to_owned(), user: Some(email.to_owned()), tenant });
    config.upsert_session(Session {
        server: server.to_owned(),
        user: email.to_owned(),
        access_token: pair.0,
        refresh_token: pair.1,
        access_expires_at: expiry(pair.2),
    });
    config.current_context = Some(name.clone());
    store.save(&config)?;
    Ok(name)
}

async fn login(global: &Global, args: &LoginArgs, registered: Option<(String, String, String, i64)>) -> Result<ExitCode, Fail> {
    let server = login_server(global)?;
    let (email, pair) = match registered {
        Some((email, access, refresh, expires_in)) => (email, (access, refresh, expires_in)),
        None => {
            let (email, password) = credentials(args)?;
            let api = Api::anonymous(&server)?;
            let body = types::LoginRequest { email: email.clone(), password: password.try_into().map_err(|err| Fail::new(format!("password: {err}")))? };
            let session = api.client.auth_login().body(body).send().await.map_err(|err| api.fail(err))?.into_inner();
            (session.user.email, (session.access_token, session.refresh_token, session.expires_in))
        }
    };
    let name = keep_session(global, &server, &email, pair)?;
    println!("Logged in to {server} as {email} (context {name}).");
    Ok(ExitCode::SUCCESS)
}

async fn register(global: &Global, args: &RegisterArgs) -> Result<ExitCode, Fail> {
    let server = login_server(global)?;
    let (email, password) = credentials(&args.login)?;
    let api = Api::anonymous(&server)?;
    fn invalid(field: &'static str) -> impl Fn(types::error::ConversionError) -> Fail {
        move |err| Fail::new(format!("{field}: {err}"))
    }
    let body = types::RegisterRequest {
        email: email.as_str().try_into().map_err(invalid("email"))?,
        password: password.as_str().try_into().map_err(invalid("password"))?,
        display_name: args.display_name.as_deref().map(TryInto::try_into).transpose().map_err(invalid("display name"))?,
    };
    let session = api.client.auth_register().body(body).send().await.map_err(|err| api.fail(err))?.into_inner();
    println!("Registered {} on {server}.", session.user.email);
    login(global, &args.login, Some((session.user.email, session.access_token, session.refresh_token, session.expires_in))).await
}

async fn logout(global: &Global) -> Result<ExitCode, Fail> {
    let store = Store::open()?;
    let _lock = store.lock()?;
    let mut config = store.load()?;
    let Some(context) = context_name(global, &config).and_then(|name| config.context(&name).cloned()) else {
        return Err(Fail::new("not logged in: there is no current context (nexus context list)"));
    };
    let Some(user) = context.user.clone() else { return Err(Fail::new(format!("context {} has no login", context.name))) };
    let Some(session) = config.session(&context.server, &user).cloned() else {
        println!("Not logged in to {} (context {}).", context.server, context.name);
        return Ok(ExitCode::SUCCESS);
    };
    let api = Api::anonymous(&context.server)?;
    let revoked = api.client.auth_logout().body(types::RefreshRequest { refresh_token: session.refresh_token.clone() }).send().await;
    // The tokens are forgotten whatever the server said: a server that cannot be reached
    // is reported, and the session ends at its refresh token's expiry.
    config.remove_session(&context.server, &user);
    store.save(&config)?;
    match revoked {
        Ok(_) => {
            println!("Logged out of {} ({user}); the session is revoked.", context.server);
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Err(Fail::new(format!("the tokens are forgotten, but the session could not be revoked on the server: {}", api.fail(err)))),
    }
}

async fn whoami(global: &Global, output: &OutputArgs) -> Result<ExitCode, Fail> {
    let mut api = Api::resolve(global, false)?;
    let me = call!(api, |c| c.me_get().send())?.into_inner();
    match output.output {
        Some(Output::Json) => print_json(&me)?,
        Some(Output::Yaml) => print_yaml(&me)?,
        _ => match &me {
            Me::UserPrincipal(user) => {
                let tenant =
                    user.tenant.as_ref().map_or_else(|| "no tenant chosen".to_owned(), |tenant| format!("tenant {} ({})", tenant.id, tenant.display_name));
                println!("{} on {}, {tenant}", user.user.email, api.server);
            }
            Me::ApiKeyPrincipal(key) => println!("API key {:?} on {}, tenant {} ({})", key.key_label, api.server, key.tenant.id, key.tenant.display_name),
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn context(global: &Global, verb: ContextVerb) -> Result<ExitCode, Fail> {
    let store = Store::open()?;
    let _lock = store.lock()?;
    let mut config = store.load()?;
    let current = context_name(global, &config);
    match verb {
        ContextVerb::List(output) => match output.output {
            Some(Output::Json) => print_json(&config.contexts)?,
            Some(Output::Yaml) => print_yaml(&config.contexts)?,
            Some(Output::Name) => config.contexts.iter().for_each(|context| println!("context/{}", context.name)),
            _ => {
                let mut table = Table::new(&["CURRENT", "NAME", "SERVER", "USER", "TENANT", "LOGGED IN"]);
                for context in &config.contexts {
                    let logged_in = context.user.as_ref().is_some_and(|user| config.session(&context.server, user).is_some());
                    table.row(vec![
                        if current.as_deref() == Some(context.name.as_str()) { "*".into() } else { String::new() },
                        context.name.clone(),
                        context.server.clone(),
                        context.user.clone().unwrap_or_default(),
                        context.tenant.clone().unwrap_or_default(),
                        if logged_in { "yes".into() } else { "no".into() },
                    ]);
                }
                table.print();
            }
        },
        ContextVerb::Use { name } => {
            if config.context(&name).is_none() {
                return Err(Fail::new(format!("no context named {name:?}: nexus context list shows them")));
            }
            config.current_context = Some(name.clone());
            store.save(&config)?;
            println!("Switched to context {name}.");
        }
        ContextVerb::Current => match current {
            Some(name) => println!("{name}"),
            None => return Err(Fail::new("no current context: run nexus login --server URL")),
        },
        ContextVerb::SetTenant { tenant } => {
            let Some(name) = current else { return Err(Fail::new("no current context: run nexus login --server URL")) };
            let Some(context) = config.context_mut(&name) else { return Err(Fail::new(format!("no context named {name:?}"))) };
            context.tenant = Some(tenant.clone());
            store.save(&config)?;
            println!("Context {name} now acts on tenant {tenant}.");
        }
        ContextVerb::Create { name } => {
            let Some(from) = current.and_then(|current| config.context(&current).cloned()) else {
                return Err(Fail::new("no current context to share a login with: run nexus login --server URL --context NAME"));
            };
            if config.context(&name).is_some() {
                return Err(Fail::new(format!("context {name:?} exists: nexus context set-tenant changes its tenant")));
            }
            let tenant = global.tenant.clone().or(from.tenant.clone());
            config.upsert_context(Context { name: name.clone(), server: from.server, user: from.user, tenant });
            store.save(&config)?;
            println!("Created context {name} (nexus context use {name} to switch to it).");
        }
        ContextVerb::Delete { name } => {
            let Some(context) = config.context(&name).cloned() else { return Err(Fail::new(format!("no context named {name:?}"))) };
            config.contexts.retain(|kept| kept.name != name);
            let shared = config.contexts.iter().any(|kept| kept.server == context.server && kept.user == context.user);
            if let (false, Some(user)) = (shared, &context.user) {
                config.remove_session(&context.server, user);
            }
            if config.current_context.as_deref() == Some(name.as_str()) {
                config.current_context = None;
            }
            store.save(&config)?;
            println!("Deleted context {name}.");
        }
    }
    Ok(ExitCode::SUCCESS)
}

// --- tenants and keys --------------------------------------------------------------

async fn tenants(global: &Global, verb: TenantsVerb) -> Result<ExitCode, Fail> {
    let mut api = Api::resolve(global, true)?;
    match verb {
        TenantsVerb::Create { display_name, profile, use_it, output } => {
            let body = types::CreateTenantRequest {
                display_name: display_name.as_str().try_into().map_err(|err| Fail::new(format!("display name: {err}")))?,
                node_profile: profile.as_deref().map(TryInto::try_into).transpose().map_err(|err| Fail::new(format!("profile: {err}")))?,
            };
            let tenant = call!(api, |c| c.tenant_create().body(body.clone()).send())?.into_inner();
            match output.output {
                Some(Output::Json) => print_json(&tenant)?,
                Some(Output::Yaml) => print_yaml(&tenant)?,
                Some(Output::Name) => println!("{}", tenant.id),
                _ => println!("tenant/{} created ({})", tenant.id, tenant.display_name),
            }
            if use_it {
                set_context_tenant(global, &tenant.id)?;
            }
        }
        TenantsVerb::List(output) => {
            let tenants = call!(api, |c| c.tenant_list().send())?.into_inner();
            match output.output {
                Some(Output::Json) => print_json(&tenants)?,
                Some(Output::Yaml) => print_yaml(&tenants)?,
                Some(Output::Name) => tenants.iter().for_each(|tenant| println!("tenant/{}", tenant.id)),
                wide => {
                    let colour = output::colour_stdout();
                    let wide = wide == Some(Output::Wide);
                    let mut headers = vec!["ID", "NAME", "PROFILE", "PHASE", "AGE"];
                    if wide {
                        headers.extend(["MAX AGENTS", "NAMESPACE", "NODE"]);
                    }
                    let mut table = Table::new(&headers);
                    for tenant in &tenants {
                        let phase = tenant.phase.to_string();
                        let mut row = vec![
                            tenant.id.clone(),
                            tenant.display_name.clone(),
                            tenant.node_profile.clone(),
                            paint(&phase, phase_colour(&phase), colour),
                            age(&tenant.created_at),
                        ];
                        if wide {
                            row.extend([
                                tenant.max_agents.to_string(),
                                tenant.namespace.clone().unwrap_or_default(),
                                tenant.node_endpoint.clone().unwrap_or_default(),
                            ]);
                        }
                        table.row(row);
                    }
                    table.print();
                }
            }
        }
        TenantsVerb::Delete { id } => {
            let deleted = call!(api, |c| c.tenant_delete().tenant_id(id.as_str()).send())?.into_inner();
            println!("tenant/{} deleted", deleted.deleted);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn set_context_tenant(global: &Global, tenant: &str) -> Result<(), Fail> {
    let store = Store::open()?;
    let _lock = store.lock()?;
    let mut config = store.load()?;
    let Some(name) = context_name(global, &config) else { return Err(Fail::new("no current context to set the tenant of")) };
    let Some(context) = config.context_mut(&name) else { return Err(Fail::new(format!("no context named {name:?}"))) };
    context.tenant = Some(tenant.to_owned());
    store.save(&config)?;
    eprintln!("Context {name} now acts on tenant {tenant}.");
    Ok(())
}

fn tenant_of(api: &Api) -> Result<String, Fail> {
    api.tenant
        .clone()
        .ok_or_else(|| Fail::new("which tenant? pass --tenant, set NEXUS_TENANT, or run nexus context set-tenant ID (nexus tenants list shows them)"))
}

async fn keys(global: &Global, verb: KeysVerb) -> Result<ExitCode, Fail> {
    let mut api = Api::resolve(global, true)?;
    let tenant = tenant_of(&api)?;
    match verb {
        KeysVerb::Create { label, scope, expires, output } => {
            let expires_at = expires
                .map(|text| {
                    chrono::DateTime::parse_from_rfc3339(&text)
                        .map(|time| time.to_utc())
                        .map_err(|err| Fail::new(format!("--expires {text:?} is not an RFC 3339 time ({err}): e.g. 2027-01-01T00:00:00Z")))
                })
                .transpose()?;
            let body = types::CreateKeyRequest {
                label: label.as_str().try_into().map_err(|err| Fail::new(format!("label: {err}")))?,
                scope: scope.map(|scope| match scope {
                    KeyScope::Write => types::KeyScopeView::Write,
                    KeyScope::Read => types::KeyScopeView::Read,
                }),
                expires_at,
            };
            let key = call!(api, |c| c.key_create().tenant_id(tenant.as_str()).body(body.clone()).send())?.into_inner();
            match output.output {
                Some(Output::Name) => println!("{}", key.raw_key),
                Some(Output::Json) => print_json(&key)?,
                Some(Output::Yaml) => print_yaml(&key)?,
                _ => {
                    println!("{}", key.raw_key);
                    eprintln!("key/{} created (label {}, scope {}): the raw key above is shown this once; keep it now.", key.hash, key.label, key.scope);
                }
            }
        }
        KeysVerb::List(output) => {
            let keys = call!(api, |c| c.key_list().tenant_id(tenant.as_str()).send())?.into_inner();
            match output.output {
                Some(Output::Json) => print_json(&keys)?,
                Some(Output::Yaml) => print_yaml(&keys)?,
                Some(Output::Name) => keys.iter().for_each(|key| println!("key/{}", key.hash)),
                _ => {
                    let mut table = Table::new(&["HASH", "LABEL", "SCOPE", "AGE", "EXPIRES", "LAST USED"]);
                    for key in &keys {
                        table.row(vec![
                            key.hash.clone(),
                            key.label.clone(),
                            key.scope.to_string(),
                            age(&key.created_at),
                            key.expires_at.map_or_else(|| "never".into(), |time| time.to_rfc3339()),
                            key.last_used_at.as_ref().map_or_else(|| "never".into(), |time| format!("{} ago", age(time))),
                        ]);
                    }
                    table.print();
                }
            }
        }
        KeysVerb::Revoke { hash } => {
            let revoked = call!(api, |c| c.key_revoke().tenant_id(tenant.as_str()).key_hash(hash.as_str()).send())?.into_inner();
            println!("key/{} revoked", revoked.revoked);
        }
    }
    Ok(ExitCode::SUCCESS)
}

// --- apply -------------------------------------------------------------------------

/// An agent as the server holds it, with the entity tag of its version.
struct Stored {
    spec: Value,
    etag: String,
}

/// GET of one agent: `None` when there is none.
async fn fetch(api: &mut Api, name: &str) -> Result<Option<Stored>, Fail> {
    if !is_agent_name(name) {
        // No agent can have this name: creating it lets the server say what is wrong.
        return Ok(None);
    }
    match call!(api, |c| c.agent_get().name(name).send()) {
        Ok(answer) => {
            let etag = answer.headers().get("etag").and_then(|value| value.to_str().ok()).map(str::to_owned);
            let detail = answer.into_inner();
            let etag = etag.ok_or_else(|| Fail::new(format!("the server did not tag agent/{name} with its version (no ETag)")))?;
            Ok(Some(Stored { spec: detail.agent_spec, etag }))
        }
        Err(fail) if fail.status == Some(404) => Ok(None),
        Err(fail) => Err(fail),
    }
}

/// A DNS-1123 label, as agent names are.
fn is_agent_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || *byte == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Sends a manifest as it was read, as JSON, through the generated client's HTTP client
/// and base URL: the server validates it and names each field at fault. (The typed body
/// of the generated operation would refuse or reshape a manifest before the server saw it.)
async fn send_manifest(api: &mut Api, name: Option<&str>, body: &Value, if_match: Option<&str>) -> Result<(), Fail> {
    let mut renewed = false;
    loop {
        api.renew(renewed).await?;
        let url = match name {
            Some(name) => format!("{}/api/v1/agents/{name}", api.client.baseurl()),
            None => format!("{}/api/v1/agents", api.client.baseurl()),
        };
        let mut request = if name.is_some() { api.client.client().put(url) } else { api.client.client().post(url) };
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        let answer = request.json(body).send().await.map_err(|err| api.transport_fail(&err))?;
        let status = answer.status().as_u16();
        if answer.status().is_success() {
            return Ok(());
        }
        if status == 401 && api.is_user() && !renewed {
            renewed = true;
            continue;
        }
        let text = answer.text().await.map_err(|err| api.transport_fail(&err))?;
        let error =
            serde_json::from_str::<ErrorBody>(&text).unwrap_or_else(|_| ErrorBody { error: format!("the server answered {status}"), errors: Vec::new() });
        return Err(api.answer_fail(status, error));
    }
}

async fn apply(global: &Global, args: &ApplyArgs) -> Result<ExitCode, Fail> {
    let loaded = manifests::load(&args.paths);
    let mut failed = false;
    for unreadable in &loaded.unreadable {
        eprintln!("{}: {}", unreadable.origin, unreadable.reason);
        failed = true;
    }
    let mut api = Api::resolve(global, false)?;
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    let spinner = Spinner::start("applying");
    let mut results = Vec::new();
    for manifest in &loaded.manifests {
        spinner.set(&format!("applying agent/{}", manifest.name));
        results.push(apply_one(&mut api, manifest, args.dry_run).await);
    }
    drop(spinner);
    for (manifest, result) in loaded.manifests.iter().zip(results) {
        match result {
            Ok(Applied { outcome, diff }) => {
                println!("agent/{} {outcome}{suffix}", manifest.name);
                if let Some(diff) = diff {
                    print!("{}", colour_diff(&diff));
                }
            }
            Err(fail) => {
                failed = true;
                eprintln!("agent/{} ({}) failed: {}", manifest.name, manifest.origin, fail.message);
            }
        }
    }
    if args.prune {
        if !loaded.unreadable.is_empty() {
            eprintln!("not pruning: some of PATH could not be read, and its agents would be deleted");
            return Ok(ExitCode::FAILURE);
        }
        let kept: BTreeSet<&str> = loaded.manifests.iter().map(|manifest| manifest.name.as_str()).collect();
        let listed = call!(api, |c| c.agent_list().send())?.into_inner();
        let doomed: Vec<String> = listed.into_iter().map(|agent| agent.name).filter(|name| !kept.contains(name.as_str())).collect();
        if !doomed.is_empty() {
            if args.dry_run {
                doomed.iter().for_each(|name| println!("agent/{name} pruned{suffix}"));
            } else if confirm_prune(&doomed, args.yes)? {
                for name in &doomed {
                    match prune_one(&mut api, name).await {
                        Ok(()) => println!("agent/{name} pruned"),
                        Err(fail) => {
                            failed = true;
                            eprintln!("agent/{name} not pruned: {}", fail.message);
                        }
                    }
                }
            } else {
                eprintln!("nothing pruned");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn confirm_prune(doomed: &[String], yes: bool) -> Result<bool, Fail> {
    eprintln!("These agents of the tenant are not in PATH and will be deleted:");
    for name in doomed {
        eprintln!("  agent/{name}");
    }
    if yes {
        return Ok(true);
    }
    if !prompt::stdin_is_terminal() {
        return Err(Fail::new("refusing to prune without a confirmation: no terminal to ask on; pass --yes"));
    }
    prompt::confirm(&format!("Delete {} agent{}?", doomed.len(), if doomed.len() == 1 { "" } else { "s" }))
}

async fn prune_one(api: &mut Api, name: &str) -> Result<(), Fail> {
    let Some(stored) = fetch(api, name).await? else { return Ok(()) };
    call!(api, |c| c.agent_delete().name(name).if_match(stored.etag.as_str()).send()).map(|_| ())
}

struct Applied {
    outcome: &'static str,
    diff: Option<String>,
}

async fn apply_one(api: &mut Api, manifest: &Manifest, dry_run: bool) -> Result<Applied, Fail> {
    match fetch(api, &manifest.name).await? {
        None => {
            if !dry_run {
                send_manifest(api, None, &manifest.body, None).await?;
            }
            Ok(Applied { outcome: "created", diff: dry_run.then(|| manifests::diff(&manifest.name, None, &manifest.body)) })
        }
        Some(stored) if !manifests::differs(&manifest.body, &stored.spec) => Ok(Applied { outcome: "unchanged", diff: None }),
        Some(stored) => {
            if !dry_run {
                match send_manifest(api, Some(&manifest.name), &manifest.body, Some(&stored.etag)).await {
                    Err(fail) if fail.status == Some(412) => {
                        return Err(Fail::new(format!(
                            "changed on the server since it was compared (version {}); nothing was overwritten: apply again to compare with the new version",
                            stored.etag
                        )));
                    }
                    other => other?,
                }
            }
            Ok(Applied { outcome: "configured", diff: dry_run.then(|| manifests::diff(&manifest.name, Some(&stored.spec), &manifest.body)) })
        }
    }
}

fn colour_diff(diff: &str) -> String {
    let on = output::colour_stdout();
    diff.lines()
        .map(|line| {
            let colour = match line.chars().next() {
                Some('+') if !line.starts_with("+++") => Some(Colour::Green),
                Some('-') if !line.starts_with("---") => Some(Colour::Red),
                Some('@') => Some(Colour::Dim),
                _ => None,
            };
            let line = colour.map_or_else(|| line.to_owned(), |colour| paint(line, colour, on));
            format!("{line}\n")
        })
        .collect()
}

// --- reading and operating ---------------------------------------------------------

async fn get(global: &Global, args: &GetArgs) -> Result<ExitCode, Fail> {
    let mut api = Api::resolve(global, false)?;
    let colour = output::colour_stdout();
    if let Some(name) = &args.name {
        let agent = call!(api, |c| c.agent_get().name(name.as_str()).send())?;
        let etag = agent.headers().get("etag").and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
        let agent = agent.into_inner();
        match args.output.output {
            Some(Output::Json) => print_json(&agent)?,
            Some(Output::Yaml) => print_yaml(&agent)?,
            Some(Output::Name) => println!("agent/{}", agent.name),
            wide => {
                let version = agent.agent_spec.pointer("/metadata/version").and_then(Value::as_str).unwrap_or_default().to_owned();
                let phase = agent.status.phase.to_string();
                let mut headers = vec!["NAME", "PHASE", "VERSION", "AGE"];
                let mut row = vec![agent.name.clone(), paint(&phase, phase_colour(&phase), colour), version, age(&agent.created_at)];
                if wide == Some(Output::Wide) {
                    headers.extend(["UPDATED", "ETAG", "NODE ACK", "NODE NAME", "MESSAGE"]);
                    row.extend([
                        format!("{} ago", age(&agent.updated_at)),
                        etag,
                        agent.status.node_ack.to_string(),
                        agent.status.node_agent_name.clone(),
                        agent.status.message.clone().unwrap_or_default(),
                    ]);
                }
                let mut table = Table::new(&headers);
                table.row(row);
                table.print();
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let agents = call!(api, |c| c.agent_list().send())?.into_inner();
    match args.output.output {
        Some(Output::Json) => print_json(&agents)?,
        Some(Output::Yaml) => print_yaml(&agents)?,
        Some(Output::Name) => agents.iter().for_each(|agent| println!("agent/{}", agent.name)),
        wide => {
            let wide = wide == Some(Output::Wide);
            let mut headers = vec!["NAME", "PHASE", "VERSION", "AGE"];
            if wide {
                headers.extend(["UPDATED", "CREATED"]);
            }
            let mut table = Table::new(&headers);
            for agent in &agents {
                let phase = agent.phase.to_string();
                let mut row =
                    vec![agent.name.clone(), paint(&phase, phase_colour(&phase), colour), agent.version.clone().unwrap_or_default(), age(&agent.created_at)];
                if wide {
                    row.extend([format!("{} ago", age(&agent.updated_at)), agent.created_at.to_rfc3339()]);
                }
                table.row(row);
            }
            if agents.is_empty() {
                eprintln!("No agents in this tenant (nexus apply -f PATH creates them).");
            } else {
                table.print();
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What the manifest's model block names, in one line.
fn model_summary(spec: &Value) -> String {
    let model = spec.pointer("/spec/model");
    let pick = |block: Option<&Value>| -> Option<String> {
        let block = block?;
        let provider = block.get("provider").or_else(|| block.get("source")).and_then(Value::as_str);
        let model = block.get("model").and_then(Value::as_str);
        match (provider, model) {
            (Some(provider), Some(model)) => Some(format!("{provider}/{model}")),
            (None, Some(model)) => Some(model.to_owned()),
            _ => None,
        }
    };
    pick(model.and_then(|model| model.get("primary")))
        .or_else(|| pick(model.and_then(|model| model.pointer("/default/candidates/0"))))
        .or_else(|| pick(model.and_then(|model| model.get("default"))))
        .unwrap_or_else(|| "(see the manifest)".into())
}

async fn describe(global: &Global, args: &DescribeArgs) -> Result<ExitCode, Fail> {
    let mut api = Api::resolve(global, false)?;
    let name = args.name.as_str();
    let answer = call!(api, |c| c.agent_get().name(name).send())?;
    let etag = answer.headers().get("etag").and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
    let agent = answer.into_inner();
    let versions = call!(api, |c| c.agent_versions().name(name).send())?.into_inner();
    let colour = output::colour_stdout();
    let spec = &agent.agent_spec;
    let text = |pointer: &str| spec.pointer(pointer).and_then(Value::as_str).map(str::to_owned);
    let phase = agent.status.phase.to_string();
    let field = |label: &str, value: String| println!("{:<16}{value}", format!("{label}:"));
    field("Name", agent.name.clone());
    field("Namespace", agent.namespace.clone());
    field("Version", format!("{} (ETag {etag})", text("/metadata/version").unwrap_or_else(|| "-".into())));
    field("Created", format!("{} ({} ago)", agent.created_at.to_rfc3339(), age(&agent.created_at)));
    field("Updated", format!("{} ({} ago)", agent.updated_at.to_rfc3339(), age(&agent.updated_at)));
    println!("Spec:");
    println!("  {:<14}{}", "Display name:", text("/spec/identity/display_name").unwrap_or_else(|| "-".into()));
    println!("  {:<14}{}", "Model:", model_summary(spec));
    println!("  {:<14}{}", "Pattern:", text("/spec/orchestration/pattern").unwrap_or_else(|| "-".into()));
    let tools = spec.pointer("/spec/tools").and_then(Value::as_array).map_or(0, Vec::len);
    println!("  {:<14}{tools}", "Tools:");
    println!("Status:");
    println!("  {:<14}{}", "Phase:", paint(&phase, phase_colour(&phase), colour));
    println!("  {:<14}{}", "Node ack:", agent.status.node_ack);
    println!("  {:<14}{}", "Node name:", agent.status.node_agent_name);
    println!("  {:<14}{}", "Last synced:", agent.status.last_synced_at.map_or_else(|| "never".into(), |time| time.to_rfc3339()));
    if let Some(message) = &agent.status.message {
        println!("  {:<14}{message}", "Message:");
    }
    println!("Recent versions:");
    let mut table = Table::new(&["  NUMBER", "VERSION", "AUTHOR", "AGE", "CHECKSUM"]);
    for version in versions.iter().rev().take(5) {
        table.row(vec![
            format!("  {}", version.number),
            version.version.clone().unwrap_or_else(|| "-".into()),
            version.author.clone(),
            age(&version.created_at),
            version.checksum.chars().take(12).collect(),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

async fn delete(global: &Global, args: &DeleteArgs) -> Result<ExitCode, Fail> {
    let mut api = Api::resolve(global, false)?;
    let deleted = call!(api, |c| c.agent_delete().name(args.name.as_str()).send())?.into_inner();
    println!("agent/{} deleted", deleted.deleted);
    Ok(ExitCode::SUCCESS)
}

fn since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, Fail> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.to_utc());
    }
    let duration =
        humantime::parse_duration(text).map_err(|_| Fail::new(format!("--since {text:?} is neither a duration (90s, 15m, 1h) nor an RFC 3339 time")))?;
    let duration = chrono::Duration::from_std(duration).map_err(|_| Fail::new(format!("--since {text:?} is too long")))?;
    Ok(chrono::Utc::now() - duration)
}

async fn logs(global: &Global, args: &LogsArgs) -> Result<ExitCode, Fail> {
    let mut api = Api::resolve(global, false)?;
    let since = args.since.as_deref().map(since).transpose()?;
    let level = args
        .level
        .as_deref()
        .map(|level| level.parse::<types::LogLevel>().map_err(|_| Fail::new(format!("--level {level:?}: one of debug, info, warning, error"))))
        .transpose()?;
    let lines = args.lines.map(u64::from);
    let traces = call!(api, |c| {
        let mut request = c.agent_logs().name(args.name.as_str());
        if let Some(since) = since {
            request = request.since(since);
        }
        if let Some(level) = level {
            request = request.level(level);
        }
        if let Some(lines) = lines {
            request = request.lines(lines);
        }
        request.send()
    })?
    .into_inner();
    match args.output.output {
        Some(Output::Json) => print_json(&traces)?,
        Some(Output::Yaml) => print_yaml(&traces)?,
        _ => {
            if traces.traces.is_empty() {
                eprintln!("No traces of agent/{} on its node.", traces.agent);
            }
            for trace in &traces.traces {
                let time = ["timestamp", "started_at", "start_time", "created_at"].iter().find_map(|key| trace.get(*key)).map(|time| match time {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                });
                match time {
                    Some(time) => println!("{time} {trace}"),
                    None => println!("{trace}"),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn events(global: &Global, args: &EventsArgs) -> Result<ExitCode, Fail> {
    let mut api = Api::resolve(global, false)?;
    let stream = call!(api, |c| c.agent_events().name(args.name.as_str()).send())?.into_inner();
    let mut stream = stream.into_inner();
    let colour = output::colour_stdout();
    let mut buffer = String::new();
    let (mut kind, mut data) = (String::new(), String::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| api.transport_fail(&err))?;
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find('\n') {
            let line = buffer[..end].trim_end_matches('\r').to_owned();
            buffer.drain(..=end);
            if let Some(value) = line.strip_prefix("event:") {
                kind = value.trim().to_owned();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.trim_start());
            } else if line.is_empty() && !data.is_empty() {
                let payload: Value = serde_json::from_str(&data).unwrap_or(Value::String(data.clone()));
                print_event(&kind, &payload, args.output.output, colour)?;
                if kind == "deleted" {
                    return Ok(ExitCode::SUCCESS);
                }
                kind.clear();
                data.clear();
            }
        }
    }
    eprintln!("the server ended the stream (it lasts NEXUS_EVENTS_MAX_DURATION at most): run nexus events {} again to go on", args.name);
    Ok(ExitCode::SUCCESS)
}

fn print_event(kind: &str, payload: &Value, output: Option<Output>, colour: bool) -> Result<(), Fail> {
    match output {
        Some(Output::Json) => println!("{}", serde_json::to_string(payload).unwrap_or_default()),
        Some(Output::Yaml) => {
            print!("---\n{}", serde_yaml::to_string(payload).unwrap_or_default());
        }
        _ => {
            let now = chrono::Utc::now().format("%H:%M:%S");
            let name = payload.get("name").and_then(Value::as_str).unwrap_or_default();
            if kind == "deleted" {
                println!("{now}  agent/{name}  {}", paint("deleted", Colour::Red, colour));
            } else {
                let phase = payload.get("phase").and_then(Value::as_str).unwrap_or("?");
                let ack = payload.get("nodeAck").and_then(Value::as_bool).unwrap_or(false);
                let version = payload.get("version").map(Value::to_string).unwrap_or_default();
                let message = payload.get("message").and_then(Value::as_str).map(|message| format!("  {message}")).unwrap_or_default();
                println!("{now}  agent/{name}  {}  nodeAck={ack}  version={version}{message}", paint(phase, phase_colour(phase), colour));
            }
        }
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    Ok(())
}

async fn run_agent(global: &Global, args: &RunArgs) -> Result<ExitCode, Fail> {
    let mut api = Api::resolve(global, false)?;
    let body = types::AgentRunRequest {
        query: args.query.as_str().try_into().map_err(|err| Fail::new(format!("query: {err}")))?,
        session_id: args.session.as_deref().map(TryInto::try_into).transpose().map_err(|err| Fail::new(format!("--session: {err}")))?,
        context: None,
    };
    let spinner = Spinner::start(&format!("running agent/{}", args.name));
    let answer = call!(api, |c| c.agent_run().name(args.name.as_str()).body(body.clone()).send());
    drop(spinner);
    let answer = answer?.into_inner();
    match args.output.output {
        Some(Output::Json) => print_json(&answer)?,
        Some(Output::Yaml) => print_yaml(&answer)?,
        _ => {
            println!("{}", answer.answer);
            if answer.blocked {
                eprintln!("(the node's guardrails blocked the answer)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn versions(global: &Global, args: &VersionsArgs) -> Result<ExitCode, Fail> {
    let mut api = Api::resolve(global, false)?;
    let versions = call!(api, |c| c.agent_versions().name(args.name.as_str()).send())?.into_inner();
    match args.output.output {
        Some(Output::Json) => print_json(&versions)?,
        Some(Output::Yaml) => print_yaml(&versions)?,
        Some(Output::Name) => versions.iter().for_each(|version| println!("version/{}", version.number)),
        wide => {
            let mut table = Table::new(&["NUMBER", "VERSION", "AUTHOR", "AGE", "CHECKSUM"]);
            for version in &versions {
                let checksum = if wide == Some(Output::Wide) { version.checksum.clone() } else { version.checksum.chars().take(12).collect() };
                table.row(vec![
                    version.number.to_string(),
                    version.version.clone().unwrap_or_else(|| "-".into()),
                    version.author.clone(),
                    age(&version.created_at),
                    checksum,
                ]);
            }
            table.print();
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn rollback(global: &Global, args: &RollbackArgs) -> Result<ExitCode, Fail> {
    let mut api = Api::resolve(global, false)?;
    let version =
        u32::try_from(args.to).ok().and_then(std::num::NonZeroU32::new).ok_or_else(|| Fail::new("--to: a version number from nexus versions (1 or more)"))?;
    let answer = call!(api, |c| c.agent_rollback().name(args.name.as_str()).body(types::RollbackRequest { version }).send())?;
    let etag = answer.headers().get("etag").and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
    let now = etag.trim_matches('"').split('-').next().unwrap_or_default().to_owned();
    println!("agent/{} rolled back to version {} (published again as version {now})", args.name, args.to);
    Ok(ExitCode::SUCCESS)
}

async fn wait(global: &Global, args: &WaitArgs) -> Result<ExitCode, Fail> {
    let wanted = match args.condition.split_once('=') {
        Some(("phase", phase)) if !phase.is_empty() => Some(phase.to_owned()),
        None if args.condition == "delete" => None,
        _ => return Err(Fail::new(format!("--for {:?}: phase=PHASE (Pending, Deploying, Running, Failed) or delete", args.condition))),
    };
    let mut api = Api::resolve(global, false)?;
    let deadline = Instant::now() + Duration::from(args.timeout);
    let spinner = Spinner::start(&format!("waiting for agent/{} {}", args.name, args.condition));
    let mut last;
    loop {
        let seen = match call!(api, |c| c.agent_get().name(args.name.as_str()).send()) {
            Ok(answer) => Some(answer.into_inner()),
            Err(fail) if fail.status == Some(404) => None,
            Err(fail) => return Err(fail),
        };
        let met = match (&seen, &wanted) {
            (None, None) => true,
            (Some(agent), Some(phase)) => agent.status.phase.to_string().eq_ignore_ascii_case(phase),
            _ => false,
        };
        last = match &seen {
            None => "no such agent".into(),
            Some(agent) => {
                let message = agent.status.message.as_deref().map(|message| format!(", message {message:?}")).unwrap_or_default();
                format!("phase={}, nodeAck={}{message}", agent.status.phase, agent.status.node_ack)
            }
        };
        spinner.set(&format!("waiting for agent/{} {} (now {last})", args.name, args.condition));
        if met {
            drop(spinner);
            println!("agent/{} condition met ({})", args.name, args.condition);
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500).min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    drop(spinner);
    Err(Fail::new(format!("timed out after {} waiting for agent/{} {}; last seen: {last}", args.timeout, args.name, args.condition)))
}
