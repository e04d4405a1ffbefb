//! The host's config file for the soak: every service on a port chosen
//! once, so that a restarted host (and a restarted Redis or NATS) is found
//! where it was. The reload fault writes it again with the echo service's
//! plugin swapped; nothing else changes between reloads, so that only the
//! echo service is rebuilt.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::capabilities::free_addr;

/// Where each part listens.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub admin: SocketAddr,
    pub echo: SocketAddr,
    pub http: SocketAddr,
    pub redis_kv: SocketAddr,
    pub kv_file: SocketAddr,
    pub chat: SocketAddr,
    pub tls: SocketAddr,
    pub proxy: SocketAddr,
    pub hostile: SocketAddr,
    pub spinners: SocketAddr,
    pub redis: SocketAddr,
    pub nats: SocketAddr,
}

impl Ports {
    pub fn pick() -> Result<Ports> {
        Ok(Ports {
            admin: free_addr()?,
            echo: free_addr()?,
            http: free_addr()?,
            redis_kv: free_addr()?,
            kv_file: free_addr()?,
            chat: free_addr()?,
            tls: free_addr()?,
            proxy: free_addr()?,
            hostile: free_addr()?,
            spinners: free_addr()?,
            redis: free_addr()?,
            nats: free_addr()?,
        })
    }
}

/// The echo service's places and queue: small, so that a burst reaches
/// them with a hundred connections.
pub const ECHO_MAX_CONNECTIONS: u32 = 64;
pub const ECHO_MAX_QUEUED: u32 = 16;
/// The echo service's idle timeout: how long a vanished client holds its
/// place. Every legitimate echo client sends more often than this.
pub const ECHO_IDLE_TIMEOUT_S: u64 = 15;
/// The hostile services' CPU budget: attackers are cut off at it.
pub const HOSTILE_CPU_BUDGET: &str = "500ms";

/// Everything the config file is written from.
#[derive(Clone)]
pub struct Setup {
    pub ports: Ports,
    pub plugin_dir: PathBuf,
    /// The folder of the soak's files (certificate, token, cache).
    pub out: PathBuf,
    /// The file bucket's database, on the tmpfs.
    pub kv_file_db: PathBuf,
    /// The Unix time, in ms, from which every new instance of the
    /// spinners service spins in its start-up code.
    pub spin_from_ms: u128,
}

impl Setup {
    pub fn config_path(&self) -> PathBuf {
        self.out.join("portico.toml")
    }

    pub fn plugin(&self, file: &str) -> PathBuf {
        self.plugin_dir.join(file)
    }

    /// Writes the config file with `echo_plugin` (a file in the plugin
    /// folder) for the echo service. Written aside and renamed, so that a
    /// reload never reads half a file.
    pub fn write(&self, echo_plugin: &str) -> Result<()> {
        let path = self.config_path();
        let partial = path.with_extension("toml.partial");
        std::fs::write(&partial, self.text(echo_plugin))
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))
    }

    fn text(&self, echo_plugin: &str) -> String {
        let out = |file: &str| toml_string(&self.out.join(file));
        let mut text = format!(
            "# Written by `portico-bench soak`: every service it loads, on ports\n\
             # chosen for this run.\n\
             drain-timeout = \"5s\"\n\n\
             [admin]\nlisten = \"{admin}\"\ntoken-file = {token}\n\n\
             [cache]\ndir = {cache}\n\n\
             # Load clients keep their connections for a whole 10 s window.\n\
             [defaults]\ncpu-budget = \"60s\"\nidle-timeout = \"60s\"\n\n",
            admin = self.ports.admin,
            token = out("admin-token"),
            cache = out("cache"),
        );
        for (name, file, addr, extra) in self.services(echo_plugin) {
            let plugin = toml_string(&self.plugin(file));
            let _ = write!(
                text,
                "[services.{name}]\nplugin = {plugin}\nlisten = [\"{addr}\"]\n{extra}\n"
            );
        }
        let _ = write!(
            text,
            "[keyvalue.cache]\nbackend = \"memory\"\n\n\
             [keyvalue.durable]\nbackend = \"file\"\npath = {}\n\n\
             [messaging]\nbackend = \"nats\"\nurl = \"nats://{}\"\n",
            toml_string(&self.kv_file_db),
            self.ports.nats
        );
        text
    }

    /// Each service: its name, plugin file, address, and its other keys.
    fn services<'a>(
        &self,
        echo_plugin: &'a str,
    ) -> [(&'static str, &'a str, SocketAddr, String); 9] {
        let p = &self.ports;
        let out = |file: &str| toml_string(&self.out.join(file));
        let hostile = format!("cpu-budget = \"{HOSTILE_CPU_BUDGET}\"\n");
        [
            (
                "echo",
                echo_plugin,
                p.echo,
                format!(
                    "max-connections = {ECHO_MAX_CONNECTIONS}\nmax-queued = {ECHO_MAX_QUEUED}\n\
                     idle-timeout = \"{ECHO_IDLE_TIMEOUT_S}s\"\n"
                ),
            ),
            ("http", "http_hello.wasm", p.http, String::new()),
            (
                "redis-kv",
                "redis_kv.wasm",
                p.redis_kv,
                "[services.redis-kv.grants]\nkeyvalue = [\"cache\"]\n".into(),
            ),
            (
                "redis-kv-file",
                "redis_kv.wasm",
                p.kv_file,
                "[services.redis-kv-file.settings]\nbucket = \"durable\"\n\
                 [services.redis-kv-file.grants]\nkeyvalue = [\"durable\"]\n"
                    .into(),
            ),
            (
                "chat",
                "chat.wasm",
                p.chat,
                "[services.chat.grants]\nmessaging = [\"rooms.*\"]\n".into(),
            ),
            (
                "tls",
                "echo.wasm",
                p.tls,
                format!(
                    "[services.tls.tls]\ncertificates = [{{ cert = {}, key = {} }}]\n",
                    out("cert.pem"),
                    out("key.pem")
                ),
            ),
            (
                "proxy",
                "tcp_proxy.wasm",
                p.proxy,
                format!(
                    "[services.proxy.settings]\nupstream = \"{redis}\"\n\
                     [services.proxy.grants]\noutbound = [\"{redis}\"]\n",
                    redis = p.redis
                ),
            ),
            ("hostile", "misbehave.wasm", p.hostile, hostile.clone()),
            (
                "spinners",
                "misbehave.wasm",
                p.spinners,
                format!(
                    "{hostile}[services.spinners.settings]\ninit = \"spin\"\n\
                     init-after-ms = \"{}\"\n",
                    self.spin_from_ms
                ),
            ),
        ]
    }
}

/// `path` as a TOML basic string.
fn toml_string(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}
