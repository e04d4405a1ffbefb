//! Registry credentials, from a file in Docker's `config.json` format:
//! `{"auths": {"HOST[:PORT]": {"auth": "base64 of USER:PASSWORD"}}}` (or
//! `username` and `password` in place of `auth`), as `docker login` writes.
//!
//! The file is `[registry] auth-file` or `--registry-auth-file`; else
//! Docker's own (`$DOCKER_CONFIG/config.json`, `~/.docker/config.json`),
//! if there is one. A registry it does not name is pulled from
//! anonymously. Read at every pull, so that a reload sees new credentials.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The credentials for `registry` (`HOST[:PORT]`): from `auth_file` if
/// given (which must then be readable), else from Docker's file if there is
/// one; anonymous if neither names the registry.
pub(super) fn credentials(registry: &str, auth_file: Option<&Path>) -> Result<RegistryAuth> {
    let (path, required) = match auth_file {
        Some(path) => (path.to_path_buf(), true),
        None => match docker_config() {
            Some(path) => (path, false),
            None => return Ok(RegistryAuth::Anonymous),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if !required && error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(RegistryAuth::Anonymous);
        }
        Err(error) => {
            return Err(error)
                .with_context(|| format!("cannot read registry credentials {}", path.display()));
        }
    };
    let config: DockerConfig = serde_json::from_str(&text).with_context(|| {
        format!(
            "registry credentials {} are not Docker's config.json format",
            path.display()
        )
    })?;
    let entry = config
        .auths
        .iter()
        .find(|(key, _)| server(key).eq_ignore_ascii_case(registry))
        .map(|(_, entry)| entry);
    match entry {
        Some(entry) => entry.basic().with_context(|| {
            format!(
                "registry credentials {}: the entry for {registry}",
                path.display()
            )
        }),
        None => Ok(RegistryAuth::Anonymous),
    }
}

impl Entry {
    fn basic(&self) -> Result<RegistryAuth> {
        if let (Some(username), Some(password)) = (&self.username, &self.password) {
            return Ok(RegistryAuth::Basic(username.clone(), password.clone()));
        }
        let Some(auth) = &self.auth else {
            bail!("it has neither `auth` nor `username` and `password`");
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        match decoded.as_deref().and_then(|pair| pair.split_once(':')) {
            Some((username, password)) => Ok(RegistryAuth::Basic(username.into(), password.into())),
            None => bail!("its `auth` is not the base64 of USER:PASSWORD"),
        }
    }
}

/// An `auths` key as `HOST[:PORT]`: Docker also writes URLs there.
fn server(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// Docker's credentials file, where it would be.
fn docker_config() -> Option<PathBuf> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker")))?;
    Some(dir.join("config.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_by_registry_from_dockers_format() {
        let path = std::env::temp_dir().join(format!("portico-auths-{}.json", std::process::id()));
        std::fs::write(
            &path,
            r#"{"auths": {
                "https://registry.example:5000/v1/": {"auth": "dXNlcjpwYXNz"},
                "other.example": {"username": "u", "password": "p"},
                "broken.example": {"auth": "not base64!"}
            }, "credsStore": "desktop"}"#,
        )
        .unwrap();
        let found = |registry| match credentials(registry, Some(&path)).unwrap() {
            RegistryAuth::Basic(user, password) => Some((user, password)),
            _ => None,
        };
        let pair = |user: &str, password: &str| Some((user.to_owned(), password.to_owned()));
        assert_eq!(found("registry.example:5000"), pair("user", "pass"));
        assert_eq!(found("other.example"), pair("u", "p"));
        assert_eq!(found("elsewhere.example"), None);
        let error = credentials("broken.example", Some(&path)).unwrap_err();
        assert!(format!("{error:#}").contains("not the base64"), "{error:#}");
        let missing = credentials("x", Some(Path::new("/nonexistent/auths.json"))).unwrap_err();
        assert!(format!("{missing:#}").contains("cannot read registry credentials"));
        let _ = std::fs::remove_file(path);
    }
}
