//! The user's config folder: named contexts (a server, a login and a tenant each) and the
//! sessions they use, in one file readable and writable by the owner only.
//!
//! Sessions are kept apart from contexts, keyed by server and email, so that two contexts
//! on one login (two tenants) share one refresh-token family: refresh tokens rotate, and
//! presenting a rotated one revokes the whole family, so two copies would end the session.
//! For the same reason a refresh takes an exclusive lock on the folder and reads the file
//! again under it: two `nexus` processes never refresh the same token.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Fail;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
    #[serde(default)]
    pub sessions: Vec<Session>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    pub name: String,
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub server: String,
    pub user: String,
    pub access_token: String,
    /// When the access token expires (RFC 3339), from the server's `expiresIn`.
    pub access_expires_at: chrono::DateTime<chrono::Utc>,
    pub refresh_token: String,
}

impl ConfigFile {
    pub fn context(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|context| context.name == name)
    }

    pub fn context_mut(&mut self, name: &str) -> Option<&mut Context> {
        self.contexts.iter_mut().find(|context| context.name == name)
    }

    pub fn upsert_context(&mut self, context: Context) {
        match self.context_mut(&context.name) {
            Some(existing) => *existing = context,
            None => self.contexts.push(context),
        }
    }

    pub fn session(&self, server: &str, user: &str) -> Option<&Session> {
        self.sessions.iter().find(|session| session.server == server && session.user == user)
    }

    pub fn upsert_session(&mut self, session: Session) {
        self.sessions.retain(|kept| !(kept.server == session.server && kept.user == session.user));
        self.sessions.push(session);
    }

    pub fn remove_session(&mut self, server: &str, user: &str) {
        self.sessions.retain(|kept| !(kept.server == server && kept.user == user));
    }
}

/// The folder: `$NEXUS_CONFIG_DIR`, else `$XDG_CONFIG_HOME/nexus`, else `~/.config/nexus`.
pub fn folder() -> Result<PathBuf, Fail> {
    if let Some(dir) = std::env::var_os("NEXUS_CONFIG_DIR").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir).join("nexus"));
    }
    match std::env::var_os("HOME").filter(|dir| !dir.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("nexus")),
        None => Err(Fail::new("cannot find a config folder: set NEXUS_CONFIG_DIR (or HOME)")),
    }
}

pub struct Store {
    dir: PathBuf,
}

/// Held while a session is refreshed; released when dropped.
pub struct Lock {
    _file: File,
}

impl Store {
    pub fn open() -> Result<Self, Fail> {
        Ok(Self { dir: folder()? })
    }

    fn path(&self) -> PathBuf {
        self.dir.join("config.yaml")
    }

    pub fn display_path(&self) -> String {
        self.path().display().to_string()
    }

    pub fn load(&self) -> Result<ConfigFile, Fail> {
        let path = self.path();
        match fs::read_to_string(&path) {
            Ok(text) if text.trim().is_empty() => Ok(ConfigFile::default()),
            Ok(text) => serde_yaml::from_str(&text)
                .map_err(|err| Fail::new(format!("{} cannot be read ({err}): fix it, or delete it and log in again", path.display()))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(err) => Err(Fail::new(format!("cannot read {}: {err}", path.display()))),
        }
    }

    /// Writes the whole file through a temporary file made owner-only before anything is
    /// written to it, then renamed over the old one (a crash leaves one or the other).
    pub fn save(&self, config: &ConfigFile) -> Result<(), Fail> {
        self.make_dir()?;
        let text = serde_yaml::to_string(config).map_err(|err| Fail::new(format!("cannot write the config: {err}")))?;
        let temporary = self.dir.join(format!(".config.yaml.{}", std::process::id()));
        let written = (|| -> std::io::Result<()> {
            let mut file = owner_only(OpenOptions::new().write(true).create(true).truncate(true)).open(&temporary)?;
            restrict(&temporary, 0o600)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::rename(&temporary, self.path())
        })();
        written.map_err(|err| {
            let _ = fs::remove_file(&temporary);
            Fail::new(format!("cannot write {}: {err}", self.path().display()))
        })
    }

    /// An exclusive lock on the folder, for reading, refreshing and writing a session.
    pub fn lock(&self) -> Result<Lock, Fail> {
        self.make_dir()?;
        let path = self.dir.join("config.lock");
        let file = owner_only(OpenOptions::new().write(true).create(true).truncate(false))
            .open(&path)
            .map_err(|err| Fail::new(format!("cannot open {}: {err}", path.display())))?;
        file.lock().map_err(|err| Fail::new(format!("cannot lock {}: {err}", path.display())))?;
        Ok(Lock { _file: file })
    }

    fn make_dir(&self) -> Result<(), Fail> {
        fs::create_dir_all(&self.dir).map_err(|err| Fail::new(format!("cannot create {}: {err}", self.dir.display())))?;
        restrict(&self.dir, 0o700).map_err(|err| Fail::new(format!("cannot restrict {}: {err}", self.dir.display())))
    }
}

#[cfg(unix)]
fn owner_only(options: &mut OpenOptions) -> &mut OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(0o600)
}

#[cfg(not(unix))]
fn owner_only(options: &mut OpenOptions) -> &mut OpenOptions {
    options
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// A context's default name: the server's host and port.
pub fn default_context_name(server: &str) -> String {
    let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_is_named_after_its_server() {
        assert_eq!(default_context_name("http://127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(default_context_name("https://nexus.example/"), "nexus.example");
        assert_eq!(default_context_name("nexus.example:9000"), "nexus.example:9000");
    }

    #[test]
    fn sessions_are_one_per_server_and_user() {
        let mut config = ConfigFile::default();
        let session = |token: &str| Session {
            server: "http://a".into(),
            user: "u@example.com".into(),
            access_token: token.into(),
            access_expires_at: chrono::Utc::now(),
            refresh_token: "r".into(),
        };
        config.upsert_session(session("one"));
        config.upsert_session(session("two"));
        assert_eq!(config.sessions.len(), 1);
        assert_eq!(config.session("http://a", "u@example.com").map(|s| s.access_token.as_str()), Some("two"));
        config.remove_session("http://a", "u@example.com");
        assert!(config.sessions.is_empty());
    }
}
