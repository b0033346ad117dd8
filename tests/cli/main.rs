//! The `nexus` command-line client driven as a user drives it: the binary, run against a
//! real `nexus serve` on a temporary SQLite database, with a config folder of its own, on
//! a pseudo-terminal where a terminal changes what it does.

mod proxy;
mod support;

use std::time::Duration;

use support::{PASSWORD, Server, User, agent, examples, http, write};

fn config_value(user: &User) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(user.config_file()).expect("the config file")).expect("YAML")
}

fn refresh_token(user: &User) -> String {
    config_value(user)["sessions"][0]["refreshToken"].as_str().expect("a refresh token").to_owned()
}

#[test]
fn login_asks_the_password_without_echo_and_keeps_the_tokens_owner_only() {
    let server = Server::start();
    let first = User::signed_up(&server, "ada@example.com");
    drop(first);

    let user = User::new();
    let mut terminal = user.on_terminal(&["login", "--server", &server.url]);
    terminal.expect("Email: ");
    terminal.type_line("ada@example.com");
    terminal.expect("Password: ");
    terminal.type_line(PASSWORD);
    let (code, text) = terminal.finish();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("Logged in to"), "{text}");
    assert!(!text.contains(PASSWORD), "the password is not echoed: {text:?}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let file = std::fs::metadata(user.config_file()).expect("the config file").permissions().mode() & 0o777;
        let folder = std::fs::metadata(user.config_file().parent().expect("its folder")).expect("the folder").permissions().mode() & 0o777;
        assert_eq!((file, folder), (0o600, 0o700), "owner-only");
    }
    let current = user.run(&["context", "current"]).ok();
    assert_eq!(current.stdout.trim(), server.url.trim_start_matches("http://"));
    let whoami = user.run(&["whoami"]).ok();
    assert!(whoami.stdout.contains("ada@example.com"), "{whoami:?}");

    // Without a terminal, and without --password-stdin, nothing is asked.
    let piped = User::new().run(&["login", "--server", &server.url, "--email", "ada@example.com"]).failed();
    assert!(piped.stderr.contains("--password-stdin"), "{piped:?}");
    let wrong =
        User::new().run_with_input(&["login", "--server", &server.url, "--email", "ada@example.com", "--password-stdin"], "not-the-password\n").failed();
    assert!(wrong.stderr.contains("invalid email or password"), "{wrong:?}");
}

#[test]
fn the_access_token_is_renewed_across_its_expiry_and_logout_revokes_the_session() {
    let server = Server::start_with(&[("NEXUS_ACCESS_TTL", "2s")]);
    let (user, _tenant) = User::with_tenant(&server, "renew@example.com");
    user.run(&["apply", "-f", examples().join("support-bot.yaml").to_str().unwrap()]).ok();
    let before = refresh_token(&user);
    std::thread::sleep(Duration::from_secs(3));
    let listed = user.run(&["get", "agents", "-o", "name"]).ok();
    assert_eq!(listed.lines(), ["agent/support-bot"]);
    let after = refresh_token(&user);
    assert_ne!(before, after, "the expired access token was renewed with the refresh token, which rotated");
    // The replaced refresh token is spent; the new one is what the file holds.
    std::thread::sleep(Duration::from_secs(3));
    user.run(&["tenants", "list", "-o", "name"]).ok();

    let kept = refresh_token(&user);
    let logout = user.run(&["logout"]).ok();
    assert!(logout.stdout.contains("revoked"), "{logout:?}");
    let (status, _) = http("POST", &format!("{}/auth/refresh", server.url), &[], Some(("application/json", &format!("{{\"refreshToken\":\"{kept}\"}}"))));
    assert_eq!(status, 401, "logout revoked the session on the server");
    let after_logout = user.run(&["get", "agents"]).failed();
    assert!(after_logout.stderr.contains("not logged in") && after_logout.stderr.contains("nexus login --server"), "{after_logout:?}");
}

#[test]
fn apply_of_the_examples_folder_twice_creates_then_leaves_everything_unchanged() {
    let server = Server::start();
    let (user, _tenant) = User::with_tenant(&server, "apply@example.com");
    let folder = examples();
    let first = user.run(&["apply", "-f", folder.to_str().unwrap()]).ok();
    let mut lines = first.lines();
    lines.sort_unstable();
    assert_eq!(lines, ["agent/billing-agent created", "agent/faq-bot created", "agent/support-bot created", "agent/triage-agent created"]);
    let second = user.run(&["apply", "-f", folder.to_str().unwrap()]).ok();
    assert!(second.lines().len() == 4 && second.lines().iter().all(|line| line.ends_with(" unchanged")), "{second:?}");

    let waited = user.run(&["wait", "agent", "triage-agent", "--for", "phase=Running", "--timeout", "60s"]).ok();
    assert!(waited.stdout.contains("condition met"), "{waited:?}");
    let listed = user.run(&["get", "agents", "-o", "json"]).ok();
    let agents: serde_json::Value = serde_json::from_str(&listed.stdout).expect("JSON");
    assert_eq!(agents.as_array().map(Vec::len), Some(4));
    assert!(agents[0].get("createdAt").is_some() && agents[0].get("phase").is_some(), "the API's objects: {agents}");

    // One manifest changed: only it is configured, and the stored manifest is the file's.
    let copy = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(folder.join("support-bot.yaml")).unwrap().replace("pattern: react", "pattern: plan_and_execute");
    write(copy.path(), "support-bot.yaml", &text);
    write(copy.path(), "faq-bot.json", &std::fs::read_to_string(folder.join("faq-bot.json")).unwrap());
    let third = user.run(&["apply", "-f", copy.path().to_str().unwrap()]).ok();
    let mut lines = third.lines();
    lines.sort_unstable();
    assert_eq!(lines, ["agent/faq-bot unchanged", "agent/support-bot configured"]);
    let yaml = user.run(&["get", "agents", "support-bot", "-o", "yaml"]).ok();
    assert!(yaml.stdout.contains("pattern: plan_and_execute"), "{yaml:?}");
}

#[test]
fn apply_reads_standard_input_and_dry_run_diffs_without_changing_anything() {
    let server = Server::start();
    let (user, _tenant) = User::with_tenant(&server, "dry@example.com");
    let two = format!("{}---\n{}", agent("alpha", "react"), agent("beta", "react"));
    let created = user.run_with_input(&["apply", "-f", "-"], &two).ok();
    assert_eq!(created.lines(), ["agent/alpha created", "agent/beta created"]);

    let changed = format!("{}---\n{}---\n{}", agent("alpha", "plan_and_execute"), agent("beta", "react"), agent("gamma", "react"));
    let dry = user.run_with_input(&["apply", "-f", "-", "--dry-run"], &changed).ok();
    assert!(dry.stdout.contains("agent/alpha configured (dry run)"), "{dry:?}");
    assert!(dry.stdout.contains("-    pattern: react") && dry.stdout.contains("+    pattern: plan_and_execute"), "a diff: {dry:?}");
    assert!(dry.stdout.contains("agent/beta unchanged (dry run)") && dry.stdout.contains("agent/gamma created (dry run)"), "{dry:?}");
    assert!(!dry.stdout.contains('\x1b'), "no colour off a terminal: {dry:?}");
    let names = user.run(&["get", "agents", "-o", "name"]).ok();
    assert_eq!(names.lines(), ["agent/alpha", "agent/beta"], "nothing changed");
    let versions = user.run(&["versions", "alpha", "-o", "json"]).ok();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&versions.stdout).unwrap().as_array().map(Vec::len), Some(1));
}

#[test]
fn validation_errors_name_each_field_and_the_exit_status_says_it_failed() {
    let server = Server::start();
    let (user, _tenant) = User::with_tenant(&server, "invalid@example.com");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "good.yaml", &agent("good-one", "react"));
    write(dir.path(), "bad.yaml", "apiVersion: astromesh/v2\nkind: Agent\nmetadata:\n  name: bad-one\n  version: not-semver\nspec: {}\n");
    write(dir.path(), "nested/broken.yml", "metadata: [unclosed\n");
    write(dir.path(), "notes.txt", "not a manifest, not read");
    let outcome = user.run(&["apply", "-f", dir.path().to_str().unwrap()]).failed();
    assert_eq!(outcome.lines(), ["agent/good-one created"], "{outcome:?}");
    assert!(outcome.stderr.contains("agent/bad-one"), "{outcome:?}");
    for field in ["apiVersion:", "metadata.version:", "spec.model:"] {
        assert!(outcome.stderr.contains(&format!("  {field}")), "{field} named: {outcome:?}");
    }
    assert!(outcome.stderr.contains("broken.yml") && outcome.stderr.contains("not valid YAML"), "{outcome:?}");
    assert!(!outcome.stderr.contains("notes.txt"), "{outcome:?}");
}

#[test]
fn a_change_made_while_apply_compares_is_reported_not_overwritten() {
    let server = Server::start();
    let (user, tenant) = User::with_tenant(&server, "race@example.com");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "racer.yaml", &agent("racer", "react"));
    user.run(&["apply", "-f", dir.path().to_str().unwrap()]).ok();
    let key = user.run(&["keys", "create", "--label", "other-writer", "-o", "name"]).ok().stdout.trim().to_owned();

    // Between apply's read and its write, another writer publishes a version: the proxy in
    // front of the server makes that change just before it passes the client's PUT on.
    let concurrent = agent("racer", "plan_and_execute").replace("1.0.0", "9.9.9");
    let proxy = proxy::Proxy::start(&server.url, key.clone(), concurrent);
    write(dir.path(), "racer.yaml", &agent("racer", "chain_of_thought"));
    let mut ci = User::new();
    ci.env = vec![("NEXUS_SERVER".into(), proxy.url.clone()), ("NEXUS_API_KEY".into(), key.clone()), ("NEXUS_TENANT".into(), tenant)];
    let outcome = ci.run(&["apply", "-f", dir.path().to_str().unwrap()]).failed();
    assert!(proxy.raced(), "the concurrent change was made");
    assert!(outcome.stderr.contains("agent/racer") && outcome.stderr.contains("changed on the server since it was compared"), "{outcome:?}");
    let stored = user.run(&["get", "agents", "racer", "-o", "json"]).ok();
    let stored: serde_json::Value = serde_json::from_str(&stored.stdout).unwrap();
    assert_eq!(stored["agentSpec"]["spec"]["orchestration"]["pattern"], "plan_and_execute", "the other writer's change stands");
    // Applied again, it compares with the new version and goes through.
    let again = user.run(&["apply", "-f", dir.path().to_str().unwrap()]).ok();
    assert_eq!(again.lines(), ["agent/racer configured"]);
}

#[test]
fn prune_lists_asks_and_deletes_the_agents_path_no_longer_holds() {
    let server = Server::start();
    let (user, _tenant) = User::with_tenant(&server, "prune@example.com");
    let dir = tempfile::tempdir().unwrap();
    for name in ["keep-me", "drop-me", "drop-me-too"] {
        write(dir.path(), &format!("{name}.yaml"), &agent(name, "react"));
    }
    let path = dir.path().to_str().unwrap().to_owned();
    user.run(&["apply", "-f", &path]).ok();
    std::fs::remove_file(dir.path().join("drop-me.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("drop-me-too.yaml")).unwrap();

    let dry = user.run(&["apply", "-f", &path, "--prune", "--dry-run"]).ok();
    assert!(dry.stdout.contains("agent/drop-me pruned (dry run)") && dry.stdout.contains("agent/drop-me-too pruned (dry run)"), "{dry:?}");
    let refused = user.run(&["apply", "-f", &path, "--prune"]).failed();
    assert!(refused.stderr.contains("agent/drop-me\n") && refused.stderr.contains("--yes"), "listed, then refused off a terminal: {refused:?}");

    let mut terminal = user.on_terminal(&["apply", "-f", &path, "--prune"]);
    terminal.expect("Delete 2 agents? [y/N]");
    terminal.type_line("n");
    let (code, text) = terminal.finish();
    assert_eq!(code, 1, "{text}");
    assert_eq!(user.run(&["get", "agents", "-o", "name"]).ok().lines().len(), 3, "nothing deleted on no");

    let mut terminal = user.on_terminal(&["apply", "-f", &path, "--prune"]);
    terminal.expect("Delete 2 agents? [y/N]");
    terminal.type_line("y");
    let (code, text) = terminal.finish();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("agent/drop-me pruned") && text.contains("agent/keep-me unchanged"), "{text}");
    assert_eq!(user.run(&["get", "agents", "-o", "name"]).ok().lines(), ["agent/keep-me"]);

    write(dir.path(), "other.yaml", &agent("other", "react"));
    user.run(&["apply", "-f", &path]).ok();
    std::fs::remove_file(dir.path().join("other.yaml")).unwrap();
    let yes = user.run(&["apply", "-f", &path, "--prune", "--yes"]).ok();
    assert!(yes.stdout.contains("agent/other pruned"), "{yes:?}");
}

#[test]
fn tenants_keys_and_ci_variables_without_a_config_file() {
    let server = Server::start();
    let (user, tenant) = User::with_tenant(&server, "keys@example.com");
    let listed = user.run(&["tenants", "list"]).ok();
    assert!(listed.lines()[0].starts_with("ID") && listed.stdout.contains(&tenant), "{listed:?}");
    let key = user.run(&["keys", "create", "--label", "ci", "-o", "name"]).ok();
    assert_eq!(key.lines().len(), 1, "only the raw key on stdout: {key:?}");
    let raw = key.stdout.trim().to_owned();
    assert!(raw.starts_with("nxk_"), "{raw}");
    let read_key = user.run(&["keys", "create", "--label", "dashboard", "--scope", "read", "-o", "json"]).ok();
    let read_key: serde_json::Value = serde_json::from_str(&read_key.stdout).unwrap();
    assert_eq!(read_key["scope"], "read");
    let keys = user.run(&["keys", "list"]).ok();
    assert!(keys.stdout.contains("ci") && keys.stdout.contains("dashboard") && !keys.stdout.contains("nxk_"), "{keys:?}");

    // CI: no file, the variables only.
    let mut ci = User::new();
    ci.env = vec![("NEXUS_SERVER".into(), server.url.clone()), ("NEXUS_API_KEY".into(), raw.clone())];
    let applied = ci.run(&["apply", "-f", examples().join("faq-bot.json").to_str().unwrap()]).ok();
    assert_eq!(applied.lines(), ["agent/faq-bot created"]);
    assert!(!ci.config_file().exists(), "nothing written for CI");
    // Flags win over variables.
    let flagged = ci.run(&["--server", "http://127.0.0.1:9", "get", "agents"]).failed();
    assert!(flagged.stderr.contains("cannot reach the server at http://127.0.0.1:9") && flagged.stderr.lines().count() == 1, "{flagged:?}");
    let forbidden = ci.run(&["tenants", "list"]).failed();
    assert!(forbidden.stderr.contains("nexus login"), "{forbidden:?}");

    let revoked = user.run(&["keys", "revoke", read_key["hash"].as_str().unwrap()]).ok();
    assert!(revoked.stdout.contains("revoked"), "{revoked:?}");
    let second = user.run(&["tenants", "create", "Second", "-o", "json"]).ok();
    let second: serde_json::Value = serde_json::from_str(&second.stdout).unwrap();
    let deleted = user.run(&["tenants", "delete", second["id"].as_str().unwrap()]).ok();
    assert!(deleted.stdout.contains("deleted"), "{deleted:?}");
}

#[test]
fn contexts_name_servers_and_tenants() {
    let server = Server::start();
    let (user, first) = User::with_tenant(&server, "ctx@example.com");
    let second = user.run(&["tenants", "create", "Other", "-o", "name"]).ok().stdout.trim().to_owned();
    user.run(&["--tenant", &second, "context", "create", "other"]).ok();
    user.run(&["apply", "-f", examples().join("support-bot.yaml").to_str().unwrap()]).ok();
    user.run(&["context", "use", "other"]).ok();
    assert_eq!(user.run(&["context", "current"]).ok().stdout.trim(), "other");
    assert!(user.run(&["get", "agents", "-o", "name"]).ok().stdout.is_empty(), "the other tenant has no agent");
    let listed = user.run(&["context", "list"]).ok();
    assert!(listed.stdout.contains(&first) && listed.stdout.contains(&second), "{listed:?}");
    assert!(listed.lines().iter().any(|line| line.starts_with('*') && line.contains("other")), "{listed:?}");
    // A flag and a variable pick another tenant for one command.
    assert_eq!(user.run(&["--tenant", &first, "get", "agents", "-o", "name"]).ok().lines(), ["agent/support-bot"]);
    let missing = user.run(&["context", "use", "nope"]).failed();
    assert!(missing.stderr.contains("nexus context list"), "{missing:?}");
}

#[test]
fn an_agent_read_followed_run_rolled_back_waited_for_and_deleted() {
    let server = Server::start();
    let (user, _tenant) = User::with_tenant(&server, "ops@example.com");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bot.yaml", &agent("bot", "react"));
    user.run(&["apply", "-f", dir.path().to_str().unwrap()]).ok();
    user.run(&["wait", "agent", "bot", "--for", "phase=Running", "--timeout", "60s"]).ok();

    let mut events = user.spawn(&["events", "bot"]);
    write(dir.path(), "bot.yaml", &agent("bot", "plan_and_execute"));
    user.run(&["apply", "-f", dir.path().to_str().unwrap()]).ok();

    let table = user.run(&["get", "agents"]).ok();
    assert!(table.lines()[0].starts_with("NAME") && table.stdout.contains("bot") && table.stdout.contains("Running"), "{table:?}");
    let wide = user.run(&["get", "agents", "bot", "-o", "wide"]).ok();
    assert!(wide.stdout.contains("NODE NAME") && wide.stdout.contains("bot-"), "{wide:?}");
    let described = user.run(&["describe", "agent", "bot"]).ok();
    for part in ["Name:", "Phase:", "Node name:", "Recent versions:", "ollama/llama3.1:8b", "plan_and_execute"] {
        assert!(described.stdout.contains(part), "{part}: {described:?}");
    }
    let versions = user.run(&["versions", "bot"]).ok();
    assert_eq!(versions.lines().len(), 3, "a header and two versions: {versions:?}");
    let rolled = user.run(&["rollback", "bot", "--to", "1"]).ok();
    assert!(rolled.stdout.contains("published again as version 3"), "{rolled:?}");
    let yaml = user.run(&["get", "agents", "bot", "-o", "yaml"]).ok();
    assert!(yaml.stdout.contains("pattern: react"), "{yaml:?}");
    let answer = user.run(&["run", "bot", "Where is my order?", "--session", "customer-42"]).ok();
    assert!(answer.stdout.contains("Where is my order?"), "the stub node echoes: {answer:?}");
    let run_json = user.run(&["run", "bot", "hello", "-o", "json"]).ok();
    assert!(serde_json::from_str::<serde_json::Value>(&run_json.stdout).unwrap().get("answer").is_some());
    let logs = user.run(&["logs", "bot", "--since", "1h", "--lines", "10", "-o", "json"]).ok();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&logs.stdout).unwrap()["agent"], "bot");

    let timeout = user.run(&["wait", "agent", "bot", "--for", "phase=Failed", "--timeout", "2s"]).failed();
    assert!(timeout.stderr.contains("timed out after 2s") && timeout.stderr.contains("last seen: phase=Running"), "{timeout:?}");
    let deleted = user.run(&["delete", "agent", "bot"]).ok();
    assert_eq!(deleted.lines(), ["agent/bot deleted"]);
    user.run(&["wait", "agent", "bot", "--for", "delete", "--timeout", "10s"]).ok();

    // The stream followed the changes and ended with the deletion.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = events.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "events did not end with the deletion");
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = events.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(status.success(), "{text}");
    assert!(text.contains("agent/bot  Running") && text.lines().last().is_some_and(|line| line.contains("deleted")), "{text}");
    let missing = user.run(&["describe", "agent", "bot"]).failed();
    assert!(missing.stderr.starts_with("error: "), "{missing:?}");
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let server = Server::start();
    let (mut user, _tenant) = User::with_tenant(&server, "colour@example.com");
    user.run(&["apply", "-f", examples().join("support-bot.yaml").to_str().unwrap()]).ok();
    user.run(&["wait", "agent", "support-bot", "--for", "phase=Running"]).ok();
    let (code, text) = user.on_terminal(&["get", "agents"]).finish();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("\x1b[32mRunning\x1b[0m"), "green on a terminal: {text:?}");
    assert!(!user.run(&["get", "agents"]).ok().stdout.contains('\x1b'), "none through a pipe");
    user.env.push(("NO_COLOR".into(), "1".into()));
    let (code, text) = user.on_terminal(&["get", "agents"]).finish();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("Running") && !text.contains('\x1b'), "NO_COLOR: {text:?}");
}

#[test]
fn errors_say_what_to_do_and_help_has_examples() {
    let user = User::new();
    let outcome = user.run(&["get", "agents"]).failed();
    assert_eq!(outcome.stderr.trim(), "error: not logged in: run nexus login --server URL (or set NEXUS_SERVER and NEXUS_API_KEY)");
    let unreachable =
        user.run_with_input(&["login", "--server", "http://127.0.0.1:9", "--email", "a@example.com", "--password-stdin"], "a-password\n").failed();
    assert!(unreachable.stderr.contains("cannot reach the server at http://127.0.0.1:9") && unreachable.stderr.contains("is it running?"), "{unreachable:?}");
    assert_eq!(unreachable.stderr.lines().count(), 1, "one line: {unreachable:?}");
    for verb in [
        &["login"][..],
        &["register"],
        &["logout"],
        &["whoami"],
        &["context"],
        &["context", "list"],
        &["tenants", "create"],
        &["tenants", "list"],
        &["tenants", "delete"],
        &["keys", "create"],
        &["keys", "list"],
        &["keys", "revoke"],
        &["apply"],
        &["get"],
        &["describe"],
        &["delete"],
        &["logs"],
        &["events"],
        &["run"],
        &["versions"],
        &["rollback"],
        &["wait"],
        &["completion"],
    ] {
        let mut args = verb.to_vec();
        args.push("--help");
        let help = user.run(&args).ok();
        assert!(help.stdout.contains("Example"), "{verb:?} --help has an example: {help:?}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = user.run(&["completion", shell]).ok();
        assert!(script.stdout.contains("apply") && script.stdout.contains("serve"), "{shell}: {script:?}");
    }
    let usage = user.run(&["get", "widgets"]);
    assert_eq!(usage.code, 2, "{usage:?}");
}

/// The README's quickstart, line by line as written there: a drifting README fails this.
#[test]
fn the_readme_quickstart_runs_as_written() {
    let server = Server::start();
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("the README");
    let start = readme.find("and in another").expect("the quickstart's client part");
    let block = &readme[start..];
    let block = &block[block.find("```sh\n").expect("its commands") + 6..];
    let block = &block[..block.find("```").expect("their end")];
    let mut user = User::new();
    let mut ran = Vec::new();
    for line in block.lines() {
        let command = line.split(" #").next().unwrap_or_default().trim().replace("http://localhost:8080", &server.url);
        if command.is_empty() {
            continue;
        }
        let (variable, command) = match command.strip_prefix("export ").and_then(|rest| rest.split_once("=$(")) {
            Some((variable, inner)) => (Some(variable.to_owned()), inner.trim_end_matches(')').to_owned()),
            None => (None, command),
        };
        let words = shell_words(&command);
        assert_eq!(words[0], "nexus", "{line}");
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        ran.push(args[0].to_owned());
        match args[0] {
            "register" => {
                let mut terminal = user.on_terminal(&args);
                terminal.expect("Password: ");
                terminal.type_line(PASSWORD);
                let (code, text) = terminal.finish();
                assert_eq!(code, 0, "{line}: {text}");
            }
            "events" => {
                let mut child = user.spawn(&args);
                std::thread::sleep(Duration::from_secs(2));
                let _ = child.kill();
                let output = child.wait_with_output().unwrap();
                let text = String::from_utf8_lossy(&output.stdout);
                assert!(text.contains("agent/support-bot  Running"), "{line}: {text}");
            }
            _ => {
                let outcome = user.run_in(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), &args).ok();
                if let Some(variable) = &variable {
                    user.env.push((variable.clone(), outcome.stdout.trim().to_owned()));
                }
                if args[0] == "apply" {
                    assert!(outcome.stdout.contains("agent/support-bot created"), "{line}: {outcome:?}");
                }
                if args[0] == "run" {
                    assert!(outcome.stdout.contains("Where is my order?"), "{line}: {outcome:?}");
                }
            }
        }
    }
    assert_eq!(ran, ["register", "tenants", "keys", "apply", "wait", "get", "events", "run"], "the quickstart's commands");
}

/// Words of a command line as a shell splits them (double quotes only).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for character in line.chars() {
        match character {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(character),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}
