//! Plugins from an OCI registry: the `oci://` reference a service may name
//! in place of a plugin file, and the process-wide settings every pull
//! follows (which registries may speak plain HTTP, how long a pull and how
//! large a plugin may be, where credentials are).
//!
//! Only what the operator wrote, checked; pulling is the sandbox's job
//! ([`crate::sandbox::registry`]). A reference is parsed here, not by the
//! client crate, so that a bad one is refused with the words of the flag
//! and the file alike, before anything starts.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Result;
use toml::Spanned;

use super::defaults::{REGISTRY_MAX_SIZE, REGISTRY_TIMEOUT};
use super::document::Document;
use super::file::RegistryTable;

/// What a reference starts with.
pub const SCHEME: &str = "oci://";

/// Where a service's plugin comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum PluginSource {
    /// A component file on this machine.
    File(PathBuf),
    /// A component pushed to an OCI registry as a wasm artifact.
    Registry(Reference),
}

impl PluginSource {
    /// The file, if the plugin is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            PluginSource::File(path) => Some(path),
            PluginSource::Registry(_) => None,
        }
    }

    /// The plugin as logs name it: the file's path, or the reference.
    pub fn display(&self) -> impl fmt::Display + '_ {
        struct Shown<'a>(&'a PluginSource);
        impl fmt::Display for Shown<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.0 {
                    PluginSource::File(path) => path.display().fmt(f),
                    PluginSource::Registry(reference) => reference.fmt(f),
                }
            }
        }
        Shown(self)
    }

    /// `text` as a source: a reference if it starts with `oci://`, else a
    /// file path, taken from `folder` if relative.
    pub fn parse_in(text: &str, folder: &Path) -> Result<Self, String> {
        match text.strip_prefix(SCHEME) {
            Some(rest) => Reference::parse(rest).map(PluginSource::Registry),
            None => Ok(PluginSource::File(folder.join(text))),
        }
    }
}

/// For `--plugin`: a path or a reference.
impl FromStr for PluginSource {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        PluginSource::parse_in(text, Path::new(""))
    }
}

/// `oci://HOST[:PORT]/NAME:TAG` or `oci://HOST[:PORT]/NAME@sha256:DIGEST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `HOST[:PORT]`, as written.
    pub registry: String,
    /// The repository, `NAME` (which may have `/` in it).
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:HEX`, the manifest's digest, which pins the plugin.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses what follows `oci://`; every problem is one sentence.
    fn parse(rest: &str) -> Result<Self, String> {
        let written = format!("{SCHEME}{rest}");
        let problem = |what: &str| format!("{written:?} is not a plugin reference: {what}");
        let Some((registry, path)) = rest.split_once('/') else {
            return Err(problem(
                "write oci://HOST[:PORT]/NAME:TAG or oci://HOST[:PORT]/NAME@sha256:DIGEST",
            ));
        };
        if registry.is_empty() || registry.contains('@') || registry.contains(char::is_whitespace) {
            return Err(problem(
                "the registry is HOST or HOST:PORT (credentials go in the auth file)",
            ));
        }
        let (named, digest) = match path.split_once('@') {
            Some((named, digest)) => (named, Some(digest)),
            None => (path, None),
        };
        let (repository, tag) = match named.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
            _ => (named, None),
        };
        if !repository.split('/').all(is_path_component) {
            return Err(problem(
                "a repository name is lower-case letters, digits and . _ - between /",
            ));
        }
        if let Some(tag) = tag
            && !is_tag(tag)
        {
            return Err(problem("a tag is up to 128 letters, digits, . _ and -"));
        }
        if let Some(digest) = digest
            && !is_sha256(digest)
        {
            return Err(problem("a digest is sha256: and 64 lower-case hex digits"));
        }
        if tag.is_none() && digest.is_none() {
            return Err(problem(
                "name a tag (NAME:TAG) or a digest (NAME@sha256:DIGEST)",
            ));
        }
        Ok(Reference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        })
    }

    /// The registry's host, without its port or an IPv6 address's brackets.
    pub fn host(&self) -> &str {
        let registry = self.registry.as_str();
        if let Some(bracketed) = registry.strip_prefix('[') {
            return bracketed.split(']').next().unwrap_or(bracketed);
        }
        registry.split(':').next().unwrap_or(registry)
    }

    /// Whether the registry is on this machine's loopback, where plain
    /// HTTP is allowed as Docker allows it.
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The repository's last part: a service's name when the flags give
    /// only `--plugin`.
    pub fn name(&self) -> &str {
        self.repository
            .rsplit('/')
            .next()
            .unwrap_or(&self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn is_path_component(part: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    part.starts_with(alnum)
        && part.ends_with(alnum)
        && part
            .chars()
            .all(|c| alnum(c) || matches!(c, '.' | '_' | '-'))
}

fn is_tag(tag: &str) -> bool {
    (1..=128).contains(&tag.len())
        && !tag.starts_with(['.', '-'])
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `sha256:` and 64 lower-case hex digits.
pub fn is_sha256(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// How every plugin is pulled from a registry.
#[derive(Clone, Debug, PartialEq)]
pub struct RegistrySettings {
    /// `HOST[:PORT]` of registries that may speak plain HTTP although not
    /// on a loopback address.
    pub insecure: Vec<String>,
    /// How long one pull (token, manifest and layer) may take.
    pub timeout: Duration,
    /// The largest plugin a registry may send, in bytes.
    pub max_size: u64,
    /// Credentials in Docker's `config.json` format; `None`: Docker's own
    /// file, if there is one.
    pub auth_file: Option<PathBuf>,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            insecure: Vec::new(),
            timeout: REGISTRY_TIMEOUT.default,
            max_size: u64::from(REGISTRY_MAX_SIZE.default) << 20,
            auth_file: None,
        }
    }
}

impl RegistrySettings {
    /// Whether `reference`'s registry may be reached over plain HTTP: on a
    /// loopback address, or listed as insecure.
    pub fn allows_plain_http(&self, reference: &Reference) -> bool {
        reference.is_loopback()
            || self
                .insecure
                .iter()
                .any(|insecure| insecure.eq_ignore_ascii_case(&reference.registry))
    }
}

/// The registry flags given beside a config file: each wins over the
/// file's key, and `--insecure-registry` adds to its list.
#[derive(Clone, Debug, Default)]
pub struct RegistryOverrides {
    pub insecure: Vec<String>,
    pub timeout: Option<Duration>,
    /// In bytes.
    pub max_size: Option<u64>,
    pub auth_file: Option<PathBuf>,
}

impl RegistryOverrides {
    pub fn apply(&self, settings: &mut RegistrySettings) {
        for registry in &self.insecure {
            if !settings.insecure.contains(registry) {
                settings.insecure.push(registry.clone());
            }
        }
        if let Some(timeout) = self.timeout {
            settings.timeout = timeout;
        }
        if let Some(max_size) = self.max_size {
            settings.max_size = max_size;
        }
        if let Some(auth_file) = &self.auth_file {
            settings.auth_file = Some(auth_file.clone());
        }
    }
}

/// `HOST[:PORT]` as `--insecure-registry` and `[registry] insecure` take it.
pub fn parse_registry_host(text: &str) -> Result<String, String> {
    let plain =
        !text.is_empty() && !text.contains(['/', '@']) && !text.contains(char::is_whitespace);
    match plain {
        true => Ok(text.to_owned()),
        false => Err(format!(
            "{text:?} is not a registry: write HOST or HOST:PORT, without oci:// or a path"
        )),
    }
}

impl Document<'_> {
    /// A service's `plugin` key: a file (relative to `folder`) or a
    /// reference.
    pub(super) fn plugin(
        &self,
        text: &Spanned<String>,
        key: &str,
        folder: &Path,
    ) -> Result<PluginSource> {
        PluginSource::parse_in(text.get_ref(), folder)
            .map_err(|problem| self.error(text.span(), key, problem))
    }

    /// The `[registry]` table.
    pub(super) fn registry(
        &self,
        table: Option<&RegistryTable>,
        folder: &Path,
    ) -> Result<RegistrySettings> {
        let mut settings = RegistrySettings::default();
        let Some(table) = table else {
            return Ok(settings);
        };
        for host in &table.insecure {
            let host = parse_registry_host(host.get_ref())
                .map_err(|problem| self.error(host.span(), "registry.insecure", problem))?;
            settings.insecure.push(host);
        }
        if let Some(timeout) = &table.timeout {
            settings.timeout =
                self.duration(timeout, "registry.timeout", REGISTRY_TIMEOUT.bounds)?;
        }
        if let Some(max_size) = &table.max_size {
            let mib = self.count(max_size, "registry.max-size", REGISTRY_MAX_SIZE.bounds)?;
            settings.max_size = u64::from(mib) << 20;
        }
        settings.auth_file = table.auth_file.as_ref().map(|path| folder.join(path));
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn reference(text: &str) -> Result<Reference, String> {
        match text.parse::<PluginSource>()? {
            PluginSource::Registry(reference) => Ok(reference),
            PluginSource::File(path) => Err(format!("a file: {}", path.display())),
        }
    }

    #[test]
    fn references_by_tag_and_by_digest() {
        let tagged = reference("oci://127.0.0.1:5000/plugins/echo:v1").unwrap();
        assert_eq!(tagged.registry, "127.0.0.1:5000");
        assert_eq!(tagged.repository, "plugins/echo");
        assert_eq!(tagged.tag.as_deref(), Some("v1"));
        assert_eq!(tagged.name(), "echo");
        assert!(tagged.is_loopback());
        assert_eq!(tagged.to_string(), "oci://127.0.0.1:5000/plugins/echo:v1");
        let pinned = reference(&format!("oci://ghcr.io/acme/echo@{DIGEST}")).unwrap();
        assert_eq!(pinned.digest.as_deref(), Some(DIGEST));
        assert_eq!(pinned.host(), "ghcr.io");
        assert!(!pinned.is_loopback());
        assert!(reference("oci://[::1]:5000/echo:v1").unwrap().is_loopback());
        assert!(reference("oci://localhost/echo:v1").unwrap().is_loopback());
        assert_eq!(
            "plugins/echo.wasm".parse::<PluginSource>().unwrap(),
            PluginSource::File("plugins/echo.wasm".into())
        );
    }

    #[test]
    fn a_bad_reference_says_what_is_wrong() {
        for (text, problem) in [
            ("oci://echo", "write oci://HOST"),
            ("oci://127.0.0.1:5000/echo", "name a tag"),
            ("oci://127.0.0.1:5000/Echo:v1", "lower-case"),
            ("oci://127.0.0.1:5000/echo@sha256:abc", "64 lower-case hex"),
            ("oci://127.0.0.1:5000/echo:-v1", "a tag is"),
            ("oci://user:pw@host/echo:v1", "credentials"),
        ] {
            let error = reference(text).unwrap_err();
            assert!(error.contains(problem), "{text}: {error}");
        }
    }

    #[test]
    fn plain_http_only_on_loopback_or_when_listed() {
        let remote = reference("oci://10.0.0.5:5000/echo:v1").unwrap();
        let mut settings = RegistrySettings::default();
        assert!(!settings.allows_plain_http(&remote));
        settings.insecure.push("10.0.0.5:5000".into());
        assert!(settings.allows_plain_http(&remote));
        assert!(settings.allows_plain_http(&reference("oci://127.0.0.2/echo:v1").unwrap()));
    }
}
