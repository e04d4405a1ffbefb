//! Plugins pulled from an OCI registry: Debian's `docker-registry` (the
//! CNCF distribution server) on a free loopback port, pushed to with
//! `skopeo` from an OCI image layout each test writes, as `wkg oci push`
//! would lay the wasm artifact out. Hostile registries are small servers in
//! the test itself.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Instant;

use base64::Engine as _;
use sha2::Digest;

use crate::services::{Scratch, get, post};
use crate::startup::assert_refused;
use crate::util::{Host, Peer, echoes, plugin, read_line};

const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
const WASM_LAYER: &str = "application/wasm";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// A docker-registry serving from `dir`, killed when dropped.
fn registry(dir: &Path) -> Peer {
    registry_with(dir, "")
}

/// A docker-registry serving from `dir`, with `more` in its config.
fn registry_with(dir: &Path, more: &str) -> Peer {
    let root = dir.join("registry");
    let config = dir.join("registry.yml");
    Peer::start("docker-registry", |port| {
        let yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n{more}",
            root.display()
        );
        std::fs::write(&config, yaml).unwrap();
        vec!["serve".into(), config.display().to_string()]
    })
}

/// The user the authenticating registry knows, its password, and the
/// password's bcrypt hash as an htpasswd file holds it.
const USER: &str = "portico";
const PASSWORD: &str = "s3cret";
const PASSWORD_HASH: &str = "$2b$05$abcdefghijklmnopqrstuuLK7U1u6pVRmL7L1BBM2aS35PSZnDXlK";

/// An OCI image layout in `dir` holding one manifest, tagged `tag`, with
/// this config and these layers (media type, bytes); returns the
/// manifest's bytes.
fn layout(dir: &Path, tag: &str, config: (&str, &[u8]), layers: &[(&str, &[u8])]) -> Vec<u8> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let blob = |media_type: &str, bytes: &[u8]| {
        let digest = sha256(bytes);
        std::fs::write(blobs.join(&digest[7..]), bytes).unwrap();
        serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    };
    let layers: Vec<_> = layers
        .iter()
        .map(|(media_type, bytes)| blob(media_type, bytes))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": blob(config.0, config.1),
        "layers": layers,
    }))
    .unwrap();
    let mut entry = blob(OCI_MANIFEST, &manifest);
    entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [entry]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    manifest
}

/// Pushes `wasm` as a wasm artifact to `registry` as `name` (NAME:TAG);
/// returns the manifest's digest.
fn push_wasm(registry: SocketAddr, scratch: &Path, name: &str, wasm: &[u8]) -> String {
    let dir = scratch.join(format!(
        "layout-{}",
        sha256(wasm).split_at(15).0.replace(':', "-")
    ));
    let tag = name.split(':').nth(1).unwrap();
    let manifest = layout(&dir, tag, (WASM_CONFIG, b"{}"), &[(WASM_LAYER, wasm)]);
    push(&dir, tag, registry, name);
    sha256(&manifest)
}

fn push(dir: &Path, tag: &str, registry: SocketAddr, name: &str) {
    push_as(dir, tag, registry, name, None)
}

/// [`push`], logged in as `credentials` (`USER:PASSWORD`) if given.
fn push_as(dir: &Path, tag: &str, registry: SocketAddr, name: &str, credentials: Option<&str>) {
    let mut skopeo = Command::new("skopeo");
    skopeo.args(["copy", "--quiet", "--dest-tls-verify=false"]);
    if let Some(credentials) = credentials {
        skopeo.arg(format!("--dest-creds={credentials}"));
    }
    let output = skopeo
        .arg(format!("oci:{}:{tag}", dir.display()))
        .arg(format!("docker://{registry}/{name}"))
        .output()
        .expect("skopeo (from Debian's packages; `cargo xtask test` installs it)");
    assert!(
        output.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A registry that asks for basic auth: a pull without credentials is
/// refused in one line that says so; with them, in Docker's config format
/// (`--registry-auth-file`), the plugin is pulled and served.
#[test]
fn basic_auth_credentials_come_from_the_auth_file() {
    let scratch = Scratch::new("registry-auth");
    let htpasswd = scratch.0.join("htpasswd");
    std::fs::write(&htpasswd, format!("{USER}:{PASSWORD_HASH}\n")).unwrap();
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: portico\n    path: {}\n",
        htpasswd.display()
    );
    let registry = registry_with(&scratch.0, &auth);
    let echo = std::fs::read(plugin("echo")).unwrap();
    let dir = scratch.0.join("layout");
    layout(&dir, "v1", (WASM_CONFIG, b"{}"), &[(WASM_LAYER, &echo)]);
    let credentials = format!("{USER}:{PASSWORD}");
    push_as(
        &dir,
        "v1",
        registry.addr,
        "plugins/echo:v1",
        Some(&credentials),
    );
    let reference = format!("oci://{}/plugins/echo:v1", registry.addr);
    let cache = scratch.0.join("cache").display().to_string();

    assert_refused(
        &["--plugin", &reference, "--cache-dir", &cache],
        &[&reference, "not authorized", "--registry-auth-file"],
    );
    let auth_file = scratch.0.join("auth.json");
    let encoded = base64::engine::general_purpose::STANDARD.encode(&credentials);
    let auths = serde_json::json!({"auths": {registry.addr.to_string(): {"auth": encoded}}});
    std::fs::write(&auth_file, auths.to_string()).unwrap();
    let host = Host::start_file(
        Path::new(&reference),
        &[
            "--cache-dir",
            &cache,
            "--registry-auth-file",
            auth_file.to_str().unwrap(),
        ],
    );
    assert!(echoes(&mut host.connect(), "pulled with credentials"));
}

/// The SHA-256 of a plugin file, as logs and metrics show it.
fn file_digest(path: &Path) -> String {
    sha256(&std::fs::read(path).unwrap())[7..].to_owned()
}

/// Pulled by tag, then pinned by digest; a restart with the registry down
/// serves the pinned plugin from the cache folder, without the network,
/// while a tag (which must be resolved) cannot start. The digest in the
/// log and the metric is the layer's, which is the file's SHA-256.
#[test]
fn pulled_by_tag_and_by_digest_and_pinned_without_the_registry() {
    let scratch = Scratch::new("registry-pull");
    let mut registry = registry(&scratch.0);
    let echo = plugin("echo");
    let manifest = push_wasm(
        registry.addr,
        &scratch.0,
        "plugins/echo:v1",
        &std::fs::read(&echo).unwrap(),
    );
    let cache = scratch.0.join("cache").display().to_string();
    let digest = file_digest(&echo);

    let by_tag = format!("oci://{}/plugins/echo:v1", registry.addr);
    let started = Instant::now();
    let host = Host::start_file(
        Path::new(&by_tag),
        &["--cache-dir", &cache, "--admin", "127.0.0.1:0"],
    );
    let ready = started.elapsed();
    assert!(echoes(&mut host.connect(), "pulled by tag"));
    let pulled = host.wait_for_log(&["plugin pulled", "downloaded=true"]);
    host.wait_for_log(&[
        "plugin loaded and checked",
        "service=\"echo\"",
        &format!("digest={digest}"),
    ]);
    let (_, metrics) = get(&host.admin_url("/metrics"));
    assert!(
        metrics.contains(&format!("digest=\"{digest}\"")),
        "{metrics}"
    );
    eprintln!(
        "echo.wasm pulled and serving in {ready:?}: {}",
        pulled.trim()
    );
    let kept = Path::new(&cache).join(format!("oci/sha256/{digest}.wasm"));
    assert_eq!(std::fs::read(&kept).unwrap(), std::fs::read(&echo).unwrap());
    drop(host);

    let pinned = format!("oci://{}/plugins/echo@{manifest}", registry.addr);
    let host = Host::start_file(Path::new(&pinned), &["--cache-dir", &cache]);
    assert!(echoes(&mut host.connect(), "pinned"));
    drop(host);

    registry.kill();
    let host = Host::start_file(Path::new(&pinned), &["--cache-dir", &cache]);
    assert!(echoes(&mut host.connect(), "registry down"));
    host.wait_for_log(&["plugin loaded and checked", &format!("digest={digest}")]);
    assert!(!host.log().contains("plugin pulled"), "{}", host.log());
    drop(host);
    assert_refused(
        &["--plugin", &by_tag, "--cache-dir", &cache],
        &[&by_tag, "cannot reach the registry", "Connection refused"],
    );
}

/// A service whose tag moves is pulled again at reload: the log names the
/// old and the new digest, the metric shows the new one, and the new
/// plugin serves. A tag moved to something that is no plugin refuses the
/// reload; a registry that is down keeps the plugin in force, in one line.
#[test]
fn a_moved_tag_is_pulled_at_reload_and_a_registry_down_keeps_the_plugin() {
    let scratch = Scratch::new("registry-reload");
    let mut registry = registry(&scratch.0);
    let (echo, greeter) = (plugin("echo"), plugin("greeter"));
    push_wasm(
        registry.addr,
        &scratch.0,
        "app:live",
        &std::fs::read(&echo).unwrap(),
    );
    let config = scratch.0.join("portico.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[cache]\ndir = \"cache\"\n\
             [services.app]\nplugin = \"oci://{}/app:live\"\nlisten = [\"127.0.0.1:0\"]\n",
            registry.addr
        ),
    )
    .unwrap();
    let host = Host::start_config(&config, &[], 1, true);
    assert!(echoes(&mut host.connect(), "before"));
    let (old, new) = (file_digest(&echo), file_digest(&greeter));

    push_wasm(
        registry.addr,
        &scratch.0,
        "app:live",
        &std::fs::read(&greeter).unwrap(),
    );
    let (status, body) = post(&host.admin_url("/reload"));
    assert_eq!(status, 200, "{body}");
    host.wait_for_log(&[
        "the tag moved",
        &format!("old digest {old}, new digest {new}"),
    ]);
    assert_eq!(read_line(&mut host.connect()), "hello\n");
    let (_, metrics) = get(&host.admin_url("/metrics"));
    assert!(metrics.contains(&format!("digest=\"{new}\"")), "{metrics}");

    // A tag moved to an ordinary container image: refused, greeter stays.
    let image = scratch.0.join("image");
    layout(
        &image,
        "live",
        ("application/vnd.oci.image.config.v1+json", b"{}"),
        &[("application/vnd.oci.image.layer.v1.tar", &[0; 1024])],
    );
    push(&image, "live", registry.addr, "app:live");
    let (status, body) = post(&host.admin_url("/reload"));
    assert_ne!(status, 200, "{body}");
    assert!(body.contains("not a wasm component"), "{body}");
    assert_eq!(read_line(&mut host.connect()), "hello\n");

    registry.kill();
    let (status, body) = post(&host.admin_url("/reload"));
    assert_eq!(status, 200, "{body}");
    let kept = host.wait_for_log(&["registry unreachable, the plugin in force stays"]);
    assert_eq!(kept.trim().lines().count(), 1);
    assert!(
        kept.contains(&format!("digest={new}")) && kept.contains("Connection refused"),
        "{kept}"
    );
    assert_eq!(read_line(&mut host.connect()), "hello\n");
}

/// A tiny HTTP server answering every request with `answer(path)`: status
/// line, content type and body. Lives as long as the test process.
fn fake_registry(
    answer: impl Fn(&str) -> (&'static str, String, Vec<u8>) + Send + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let path = request.split(' ').nth(1).unwrap_or("/").to_owned();
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|read| read > 2) {
                line.clear();
            }
            let (status, headers, body) = answer(&path);
            let head = format!(
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream
                .write_all(head.as_bytes())
                .and_then(|()| stream.write_all(&body));
        }
    });
    addr
}

/// A fake registry serving `manifest` for every manifest and `blob` for
/// every blob.
fn serving(manifest: Vec<u8>, media_type: &'static str, blob: Vec<u8>) -> SocketAddr {
    fake_registry(move |path| match path {
        "/v2/" => ("200 OK", String::new(), b"{}".to_vec()),
        path if path.contains("/manifests/") => (
            "200 OK",
            format!("Content-Type: {media_type}\r\n"),
            manifest.clone(),
        ),
        path if path.contains("/blobs/") => ("200 OK", String::new(), blob.clone()),
        _ => ("404 Not Found", String::new(), Vec::new()),
    })
}

fn wasm_manifest(layer_digest: &str, size: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": WASM_CONFIG, "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": WASM_LAYER, "digest": layer_digest, "size": size}],
    }))
    .unwrap()
}

/// Every way a registry can be wrong, each refused before anything
/// compiles, in one `error:` line that names the problem; run at once.
#[test]
fn hostile_registries_are_refused_in_one_line() {
    let scratch = Scratch::new("registry-hostile");
    let registry = registry(&scratch.0);
    let echo = std::fs::read(plugin("echo")).unwrap();
    let image = scratch.0.join("image");
    layout(
        &image,
        "v1",
        ("application/vnd.oci.image.config.v1+json", b"{}"),
        &[(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &[0x1f, 0x8b, 0, 0],
        )],
    );
    push(&image, "v1", registry.addr, "busybox:v1");
    push_wasm(
        registry.addr,
        &scratch.0,
        "big:v1",
        &[echo.clone(), vec![0; 2 << 20]].concat(),
    );

    let good = wasm_manifest(&sha256(&echo), echo.len());
    let pinned_elsewhere = sha256(b"another manifest");
    let mut forged = echo.clone();
    forged[100] ^= 1;
    let lying = serving(good.clone(), OCI_MANIFEST, forged);
    let swollen = serving(
        wasm_manifest(&sha256(&echo), 100),
        OCI_MANIFEST,
        echo.clone(),
    );
    let unknown = serving(
        b"{\"schemaVersion\":2}".to_vec(),
        "application/vnd.example.thing+json",
        Vec::new(),
    );
    let unknown_typed = serving(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.example.thing+json"}"#.to_vec(),
        OCI_MANIFEST,
        Vec::new(),
    );
    let mismatch = serving(good, OCI_MANIFEST, echo.clone());
    let looping = fake_registry(|path| {
        (
            "307 Temporary Redirect",
            format!("Location: {path}\r\n"),
            Vec::new(),
        )
    });
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let slow = silent.local_addr().unwrap();
    thread::spawn(move || {
        let held: Vec<TcpStream> = silent.incoming().filter_map(Result::ok).collect();
        drop(held);
    });

    let pinned = format!("oci://{mismatch}/echo@{pinned_elsewhere}");
    let cases: Vec<(String, Vec<&str>, Vec<String>)> = vec![
        (
            pinned.clone(),
            vec![],
            vec![
                pinned.clone(),
                format!("not {pinned_elsewhere}"),
                "the registry sent a manifest whose digest is sha256:".into(),
            ],
        ),
        (
            format!("oci://{lying}/echo:v1"),
            vec![],
            vec![
                "the registry sent a layer whose digest is".into(),
                format!("not {}", sha256(&echo)),
            ],
        ),
        (
            format!("oci://{swollen}/echo:v1"),
            vec![],
            vec![format!(
                "sends {} bytes for a layer its manifest declares as 100 bytes",
                echo.len()
            )],
        ),
        (
            format!("oci://{}/busybox:v1", registry.addr),
            vec![],
            vec![
                "not a wasm component".into(),
                "application/vnd.oci.image.config.v1+json".into(),
            ],
        ),
        (
            format!("oci://{}/big:v1", registry.addr),
            vec!["--registry-max-size", "1"],
            vec!["over the limit of 1 MiB".into()],
        ),
        (
            format!("oci://{unknown_typed}/echo:v1"),
            vec![],
            vec!["unknown media type \"application/vnd.example.thing+json\"".into()],
        ),
        (
            format!("oci://{unknown}/echo:v1"),
            vec![],
            vec!["not a wasm component".into()],
        ),
        (
            format!("oci://{looping}/echo:v1"),
            vec![],
            vec!["redirect".into()],
        ),
        (
            format!("oci://{slow}/echo:v1"),
            vec!["--registry-timeout", "1s"],
            vec!["did not complete the pull within 1s".into()],
        ),
    ];
    let cache = scratch.0.join("cache").display().to_string();
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(reference, flags, expected)| {
            let cache = cache.clone();
            thread::spawn(move || {
                let mut args = vec!["--plugin", &reference, "--cache-dir", &cache];
                args.extend(flags);
                let started = Instant::now();
                let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
                let line = assert_refused(&args, &expected);
                (started.elapsed(), line)
            })
        })
        .collect();
    for run in runs {
        let (took, line) = run.join().unwrap();
        eprint!("{took:?}: {line}");
    }
    // Nothing unchecked was kept.
    let kept = Path::new(&cache).join("oci/sha256");
    let files: Vec<PathBuf> =
        std::fs::read_dir(&kept).map_or(Vec::new(), |dir| dir.map(|e| e.unwrap().path()).collect());
    assert!(files.is_empty(), "{files:?}");
}

/// TLS unless the registry is on a loopback address or listed with
/// `--insecure-registry`. The registry is named as 0.0.0.0, which is not a
/// loopback address but reaches this machine's loopback, so that the test
/// sends nothing to any other address.
#[test]
fn plain_http_needs_loopback_or_insecure_registry() {
    let scratch = Scratch::new("registry-insecure");
    let registry = registry(&scratch.0);
    push_wasm(
        registry.addr,
        &scratch.0,
        "echo:v1",
        &std::fs::read(plugin("echo")).unwrap(),
    );
    let named = format!("0.0.0.0:{}", registry.addr.port());
    let reference = format!("oci://{named}/echo:v1");
    let cache = scratch.0.join("cache").display().to_string();
    assert_refused(
        &["--plugin", &reference, "--cache-dir", &cache],
        &["TLS is required", &format!("--insecure-registry {named}")],
    );
    let host = Host::start_file(
        Path::new(&reference),
        &["--cache-dir", &cache, "--insecure-registry", &named],
    );
    assert!(echoes(&mut host.connect(), "insecure, as allowed"));
}
