//! Test support: real processes on loopback (authgate, upstream-mock, redis-server), each
//! killed when its handle drops (also when a test panics), and clients with bounded waits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use serde_json::{json, Value};

/// Default bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(20);

/// A binary of this workspace, built by `cargo build --workspace` next to the test binary.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/e2e-xxxx -> target/debug/NAME; AUTHGATE_BIN_DIR overrides (soak, bench).
    let dir = match std::env::var_os("AUTHGATE_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let parent = exe.parent().expect("exe dir");
            if parent.ends_with("deps") {
                parent.parent().expect("target dir").to_path_buf()
            } else {
                parent.to_path_buf()
            }
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the workspace first (`cargo build --workspace`, which scripts/test does)",
        path.display()
    );
    path
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A port free right now on 127.0.0.1, and never one this process was handed before: the
/// kernel may give a just-released ephemeral port out again at once, and two parts of one test
/// (a gateway's listener and its admin port) must never get the same one.
/// A port for a test server: below the kernel's ephemeral range (32768 and up on Linux), so
/// no outgoing connection of this or any process is given it between this check and the
/// server's bind; never the same twice in this process, and probed with a bind, which other
/// test processes' servers would hold. Each process starts at its own offset.
pub fn free_port() -> u16 {
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|p| p.into_inner());
    let mut offset = next.unwrap_or((std::process::id() % u32::from(SPAN)) as u16);
    for _ in 0..SPAN {
        let port = FIRST + offset;
        offset = (offset + 1) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            *next = Some(offset);
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Checks that `f` stays true for all of `window`: for "nothing more happens" (no retry, no
/// second call), where there is no event to wait for.
pub fn holds_for(what: &str, window: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + window;
    loop {
        assert!(f(), "{what} stopped holding");
        if Instant::now() >= end {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn wait_port(addr: SocketAddr, timeout: Duration) {
    wait_until(&format!("{addr} to accept"), timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });
}

/// A scratch directory removed on drop.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "authgate-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        TestDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, SIGKILLed on drop unless it already exited.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let out = self.output();
            eprintln!(
                "---- last lines of {} ----\n{}\n----",
                self.name,
                log_tail(&out)
            );
        }
    }
}

/// The last 40 lines of a log that are not access-log lines, then its last 5 lines: under
/// load, access lines would push out what the process said about itself.
fn log_tail(out: &str) -> String {
    fn last<'a>(lines: impl DoubleEndedIterator<Item = &'a str>, n: usize) -> Vec<&'a str> {
        let mut v: Vec<&str> = lines.rev().take(n).collect();
        v.reverse();
        v
    }
    let own = last(
        out.lines().filter(|l| !l.contains(r#""kind":"access""#)),
        40,
    );
    let end = last(out.lines(), 5);
    format!(
        "{}\n-- (the last 5 lines, access log included) --\n{}",
        own.join("\n"),
        end.join("\n")
    )
}

/// upstream-mock on a free port.
pub struct Mock {
    pub proc: Proc,
    pub addr: SocketAddr,
    _dir: TestDir,
}

pub const MOCK_JWT_SECRET: &str = "e2e-jwt-secret";
pub const MOCK_INTROSPECTION: (&str, &str) = ("authgate", "e2e-introspection-secret");

impl Mock {
    pub fn start(name: &str) -> Mock {
        Self::start_on(name, free_port(), &[])
    }

    pub fn start_on(name: &str, port: u16, extra: &[&str]) -> Mock {
        let dir = TestDir::new("mock");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut cmd = Command::new(bin("upstream-mock"));
        cmd.args([
            "--listen",
            &addr.to_string(),
            "--name",
            name,
            "--jwt-secret",
            MOCK_JWT_SECRET,
        ])
        .args([
            "--introspection-client",
            &format!("{}:{}", MOCK_INTROSPECTION.0, MOCK_INTROSPECTION.1),
        ])
        .args(extra);
        let proc = Proc::spawn(
            &format!("upstream-mock {name}"),
            &mut cmd,
            dir.path("mock.log"),
        );
        wait_port(addr, WAIT);
        Mock {
            proc,
            addr,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn stats(&self) -> Value {
        client()
            .get(self.url("/__mock/stats"))
            .send()
            .expect("stats")
            .json()
            .expect("json")
    }

    /// Requests the mock received for a route pattern and the patterns under it: `"GET /echo"`
    /// counts `GET /echo`, `GET /echo/` and `GET /echo/{*rest}`.
    pub fn count(&self, route: &str) -> u64 {
        let stats = self.stats();
        let Some(by_route) = stats["by_route"].as_object() else {
            return 0;
        };
        let under = format!("{route}/");
        by_route
            .iter()
            .filter(|(k, _)| *k == route || k.starts_with(&under))
            .filter_map(|(_, v)| v.as_u64())
            .sum()
    }

    pub fn total(&self) -> u64 {
        self.stats()["total"].as_u64().unwrap_or(0)
    }

    pub fn reset(&self) {
        client()
            .post(self.url("/__mock/reset"))
            .send()
            .expect("reset");
    }
}

/// authgate on free ports. The YAML uses `${AG_LISTEN}` and `${AG_ADMIN}` for its addresses
/// (expanded by authgate itself), plus whatever variables the test passes.
pub struct Gateway {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub dir: TestDir,
}

impl Gateway {
    pub fn start(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        Self::try_start(yaml, env).expect("gateway starts")
    }

    /// Starts and waits for the admin listener; `Err` with the log if the process exits.
    pub fn try_start(yaml: &str, env: &[(&str, &str)]) -> Result<Gateway, String> {
        let dir = TestDir::new("gw");
        let config = dir.path("authgate.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut cmd = Command::new(bin("authgate"));
        cmd.arg("--config")
            .arg(&config)
            .env("AG_LISTEN", addr.to_string())
            .env("AG_ADMIN", admin.to_string())
            .env("AG_ADMIN_PORT", admin.port().to_string())
            .env("AG_LISTEN_PORT", addr.port().to_string())
            .env("RUST_LOG", "info")
            .env_remove("AUTHGATE_CONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn("authgate", &mut cmd, dir.path("authgate.log"));
        let deadline = Instant::now() + WAIT;
        loop {
            if !proc.is_running() {
                return Err(proc.output());
            }
            let up =
                |a: SocketAddr| TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok();
            if up(addr) && up(admin) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "authgate did not listen within {WAIT:?}\n{}",
                    proc.output()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(Gateway {
            proc,
            addr,
            admin,
            config,
            dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .expect("metrics")
            .text()
            .expect("text")
    }

    pub fn wait_ready(&self) {
        wait_until("authgate /readyz to answer 200", WAIT, || {
            client()
                .get(self.admin_url("/readyz"))
                .send()
                .is_ok_and(|r| r.status() == 200)
        });
    }

    /// Parsed JSON log lines written so far.
    pub fn log_lines(&self) -> Vec<Value> {
        self.proc
            .output()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// A redis-server owned by the test, on a free port, without persistence.
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
    _dir: TestDir,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Redis {
        Self::spawn(port, |cmd, _| {
            cmd.args(["--port", &port.to_string()]);
        })
    }

    /// A replica of the server on `master_port`, both as [`Redis::start_acl`].
    pub fn start_replica_of(master_port: u16) -> Redis {
        let port = free_port();
        Self::spawn(port, |cmd, _| {
            cmd.args(["--port", &port.to_string()]).args([
                "--replicaof",
                "127.0.0.1",
                &master_port.to_string(),
            ]);
            acl_args(cmd);
        })
    }

    /// Only [`ACL_USER`] may connect.
    pub fn start_acl() -> Redis {
        let port = free_port();
        Self::spawn(port, |cmd, _| {
            cmd.args(["--port", &port.to_string()]);
            acl_args(cmd);
        })
    }

    /// A node for a cluster (not yet part of one), as [`Redis::start_acl`].
    /// With `tls`, clients, replication and the cluster bus are TLS only, with
    /// `server.pem`/`server.key` and `ca.pem` from that folder.
    pub fn start_cluster_node(tls: Option<&Path>) -> Redis {
        let port = free_port();
        // The bus port would be port + 10000 by default, past 65535 for most free ports.
        let bus = free_port();
        Self::spawn(port, |cmd, dir| {
            match tls {
                None => cmd.args(["--port", &port.to_string()]),
                Some(certs) => tls_only(cmd, port, certs).args([
                    "--tls-cluster",
                    "yes",
                    "--tls-replication",
                    "yes",
                ]),
            };
            cmd.args(["--cluster-port", &bus.to_string()])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                .arg("--cluster-config-file")
                .arg(dir.path("nodes.conf"));
            acl_args(cmd);
        })
    }

    /// TLS only, on `port`: `server.pem`/`server.key` and `ca.pem` from `certs`, clients not
    /// asked for a certificate.
    pub fn start_tls(certs: &Path) -> Redis {
        let port = free_port();
        Self::spawn(port, |cmd, _| {
            tls_only(cmd, port, certs);
        })
    }

    fn spawn(port: u16, listen: impl FnOnce(&mut Command, &TestDir)) -> Redis {
        let dir = TestDir::new("redis");
        let mut cmd = Command::new("redis-server");
        listen(&mut cmd, &dir);
        // A replica syncs at once rather than after the default 5 s wait for others.
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&dir.0);
        let proc = Proc::spawn("redis-server", &mut cmd, dir.path("redis.log"));
        wait_port(format!("127.0.0.1:{port}").parse().expect("addr"), WAIT);
        Redis {
            proc,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// `redis-cli -p <port> <args>`'s answer, trimmed ("" when it could not connect).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The ACL user the Sentinel and Cluster fixtures' data nodes require (their default user is
/// off), as a gateway configures it: `username: authgate, password_env: REDIS_PASSWORD`.
pub const ACL_USER: &str = "authgate";
pub const ACL_PASS: &str = "acl-s3cret";
/// The sentinels' own password (`requirepass`), as `sentinel.password_env: SENTINEL_PASSWORD`.
pub const SENTINEL_PASS: &str = "sentinel-s3cret";

/// `redis-cli` on a sentinel of the fixture.
pub fn sentinel_cli(port: u16, args: &[&str]) -> String {
    redis_cli(
        port,
        &[&["-a", SENTINEL_PASS, "--no-auth-warning"], args].concat(),
    )
}

/// `redis-cli` as [`ACL_USER`].
pub fn acl_cli(port: u16, args: &[&str]) -> String {
    redis_cli(
        port,
        &[
            &["--user", ACL_USER, "--pass", ACL_PASS, "--no-auth-warning"],
            args,
        ]
        .concat(),
    )
}

/// TLS only on `port` (plain port off), with `server.pem`/`server.key` and `ca.pem` from
/// `certs`; clients not asked for a certificate.
fn tls_only<'c>(cmd: &'c mut Command, port: u16, certs: &Path) -> &'c mut Command {
    cmd.args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--tls-auth-clients", "no"])
        .arg("--tls-cert-file")
        .arg(certs.join("server.pem"))
        .arg("--tls-key-file")
        .arg(certs.join("server.key"))
        .arg("--tls-ca-cert-file")
        .arg(certs.join("ca.pem"))
}

fn acl_args(cmd: &mut Command) {
    // One argument per word: redis-server quotes an argument with spaces as one token.
    cmd.args(["--user", "default", "off", "--user", ACL_USER, "on"])
        .arg(format!(">{ACL_PASS}"))
        .args(["~*", "&*", "+@all"])
        .args(["--masteruser", ACL_USER, "--masterauth", ACL_PASS]);
}

/// A master, one replica and three sentinels (quorum 2) watching it as `mymaster`, all owned by
/// the test. The sentinels call the master down after 500 ms without an answer, so a failover
/// takes a few seconds.
pub struct RedisSentinel {
    pub master: Redis,
    pub replica: Redis,
    pub sentinels: Vec<Proc>,
    pub sentinel_ports: Vec<u16>,
    _dir: TestDir,
}

impl RedisSentinel {
    pub const MASTER: &'static str = "mymaster";

    pub fn start() -> RedisSentinel {
        let master = Redis::start_acl();
        let replica = Redis::start_replica_of(master.port);
        let dir = TestDir::new("sentinel");
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path(&format!("sentinel-{i}.conf"));
            // Sentinel rewrites its configuration file, so each gets its own.
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {m} 127.0.0.1 {mp} 2\n\
                     sentinel down-after-milliseconds {m} 500\n\
                     sentinel failover-timeout {m} 4000\n\
                     sentinel parallel-syncs {m} 1\n\
                     sentinel auth-user {m} {ACL_USER}\n\
                     sentinel auth-pass {m} {ACL_PASS}\n\
                     requirepass {SENTINEL_PASS}\n\
                     sentinel sentinel-pass {SENTINEL_PASS}\n",
                    dir = dir.0.display(),
                    m = Self::MASTER,
                    mp = master.port,
                ),
            )
            .expect("sentinel.conf");
            let mut cmd = Command::new("redis-server");
            cmd.arg(&conf).arg("--sentinel");
            sentinels.push(Proc::spawn(
                &format!("redis-sentinel-{i}"),
                &mut cmd,
                dir.path(&format!("sentinel-{i}.log")),
            ));
            wait_port(format!("127.0.0.1:{port}").parse().expect("addr"), WAIT);
            sentinel_ports.push(port);
        }
        let s = RedisSentinel {
            master,
            replica,
            sentinels,
            sentinel_ports,
            _dir: dir,
        };
        // Ready for a failover: the replica in sync, every sentinel knowing it and the others.
        wait_until("the replica to sync", WAIT, || {
            acl_cli(s.replica.port, &["INFO", "replication"]).contains("master_link_status:up")
        });
        for &p in &s.sentinel_ports {
            wait_until(
                "the sentinels to see the replica and each other",
                WAIT * 2,
                || {
                    let info = sentinel_cli(p, &["SENTINEL", "MASTER", Self::MASTER]);
                    let lines: Vec<&str> = info.lines().collect();
                    let field = |name: &str| {
                        lines
                            .iter()
                            .position(|l| *l == name)
                            .and_then(|i| lines.get(i + 1))
                            .and_then(|v| v.parse::<u32>().ok())
                    };
                    field("num-slaves") == Some(1) && field("num-other-sentinels") == Some(2)
                },
            );
        }
        s
    }

    /// The `sentinel:` block of a gateway configuration.
    pub fn yaml(&self) -> String {
        let nodes: Vec<String> = self
            .sentinel_ports
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        format!(
            "sentinel: {{ master: {}, nodes: [{}], password_env: SENTINEL_PASSWORD }}, username: {ACL_USER}, password_env: REDIS_PASSWORD",
            Self::MASTER,
            nodes.join(", ")
        )
    }

    /// The port of the node the sentinels call master now.
    pub fn master_port(&self) -> Option<u16> {
        let out = sentinel_cli(
            self.sentinel_ports[0],
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER],
        );
        out.lines().nth(1).and_then(|p| p.trim().parse().ok())
    }
}

/// A Redis Cluster of three masters with one replica each, created with
/// `redis-cli --cluster create`; nodes give up on a silent peer after 1 s.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
    /// The certificates' folder when the cluster speaks TLS only.
    tls: Option<PathBuf>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        Self::start_with(None)
    }

    /// TLS only: `server.pem`/`server.key` (for 127.0.0.1) and `ca.pem` in `certs`.
    pub fn start_tls(certs: &Path) -> RedisCluster {
        Self::start_with(Some(certs))
    }

    fn start_with(tls: Option<&Path>) -> RedisCluster {
        let nodes: Vec<Redis> = (0..6).map(|_| Redis::start_cluster_node(tls)).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let c = RedisCluster {
            nodes,
            tls: tls.map(Path::to_path_buf),
        };
        let out = Command::new("redis-cli")
            .args(c.cli_args())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        c.wait_healthy();
        c
    }

    /// What `redis-cli` needs to reach a node: the ACL user, and TLS when the cluster has it.
    fn cli_args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["--user", ACL_USER, "--pass", ACL_PASS, "--no-auth-warning"]
            .map(String::from)
            .to_vec();
        if let Some(certs) = &self.tls {
            args.push("--tls".into());
            args.push("--cacert".into());
            args.push(certs.join("ca.pem").display().to_string());
        }
        args
    }

    /// `redis-cli` on the node at `port`, trimmed ("" when it could not connect).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(self.cli_args())
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// Every live node says the cluster is ok and knows three masters, and every live replica
    /// is in sync (one that never synced could not take over from its master).
    pub fn wait_healthy(&self) {
        for n in &self.nodes {
            if self.cli(n.port, &["PING"]) != "PONG" {
                continue;
            }
            wait_until("the cluster to be ok on every node", WAIT * 2, || {
                let info = self.cli(n.port, &["CLUSTER", "INFO"]);
                let replication = self.cli(n.port, &["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_size:3")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
        }
    }

    /// The `cluster:` block of a gateway configuration (two seed nodes: the rest are found).
    pub fn yaml(&self) -> String {
        format!(
            "cluster: {{ nodes: [\"127.0.0.1:{}\", \"127.0.0.1:{}\"] }}, username: {ACL_USER}, password_env: REDIS_PASSWORD",
            self.nodes[0].port, self.nodes[1].port
        )
    }

    /// Indexes of the nodes that are masters now.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.cli(self.nodes[i].port, &["ROLE"])
                    .starts_with("master")
            })
            .collect()
    }
}

/// The value of one header in an upstream-mock `/echo` body (names compared
/// case-insensitively).
pub fn echo_header(v: &Value, name: &str) -> Option<String> {
    v["headers"]
        .as_array()?
        .iter()
        .find(|p| p[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .and_then(|p| p[1].as_str().map(str::to_owned))
}

/// Certificates made in the test (rcgen): a CA, server certificates it signs, and
/// self-signed ones.
pub mod certs {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    use std::path::Path;

    pub struct Ca {
        pub cert: rcgen::Certificate,
        pub key: KeyPair,
    }

    pub fn new_ca(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![]).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Ca {
            cert: params.self_signed(&key).expect("ca"),
            key,
        }
    }

    /// A server certificate for localhost and 127.0.0.1 signed by `ca`, as cert/key PEM files.
    pub fn issue(ca: &Ca, dir: &Path, cert_file: &str, key_file: &str) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("cert");
        std::fs::write(dir.join(cert_file), cert.pem()).expect("write");
        std::fs::write(dir.join(key_file), key.serialize_pem()).expect("write");
    }

    /// A self-signed certificate for localhost as `server.pem`/`server.key` in `dir`, marked
    /// CA:TRUE when `ca` (as `openssl req -x509` makes by default); returns its PEM.
    pub fn self_signed(dir: &Path, ca: bool) -> String {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let cert = params.self_signed(&key).expect("cert");
        std::fs::write(dir.join("server.pem"), cert.pem()).expect("write");
        std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write");
        cert.pem()
    }
}

/// An HTTP client that never uses a proxy and never waits long.
pub fn client() -> reqwest::blocking::Client {
    client_with_timeout(Duration::from_secs(15))
}

/// [`client`] with another bound per request (load generators want failures fast).
pub fn client_with_timeout(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends bytes exactly as given (for paths and headers an HTTP library would tidy up) and
/// reads one response. The request should say `Connection: close`.
pub fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf)
        .unwrap_or_else(|| panic!("unparseable response: {:?}", String::from_utf8_lossy(&buf)))
}

/// A GET with a raw target and `Connection: close`.
pub fn raw_get(addr: SocketAddr, target: &str, extra_headers: &str) -> RawResponse {
    raw(
        addr,
        format!(
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
}

fn parse_response(buf: &[u8]) -> Option<RawResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..line_end])
                .ok()?
                .split(';')
                .next()?
                .trim(),
            16,
        )
        .ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// The value of one metric series in a Prometheus text exposition (0 when absent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, lbls) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let ok = labels
            .iter()
            .all(|(k, v)| lbls.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if ok {
            return value.parse().unwrap_or(0.0);
        }
    }
    0.0
}

/// Signs test tokens with the committed test keys of upstream-mock (`upstream-mock/keys`).
pub mod tokens {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::Value;
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    pub fn key_file(kid: &str, kind: &str) -> std::path::PathBuf {
        super::repo()
            .join("upstream-mock/keys")
            .join(format!("{kid}.{kind}.pem"))
    }

    /// A token signed with the private key `kid` (or the HMAC `secret` for HS*), carrying
    /// `header_kid` in its header.
    pub fn sign(alg: Algorithm, key: &str, header_kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = header_kid.map(str::to_owned);
        let enc = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                EncodingKey::from_secret(key.as_bytes())
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                EncodingKey::from_ec_pem(&std::fs::read(key_file(key, "key")).expect("key"))
                    .expect("ec key")
            }
            Algorithm::EdDSA => {
                EncodingKey::from_ed_pem(&std::fs::read(key_file(key, "key")).expect("key"))
                    .expect("ed key")
            }
            _ => EncodingKey::from_rsa_pem(&std::fs::read(key_file(key, "key")).expect("key"))
                .expect("rsa key"),
        };
        encode(&header, claims, &enc).expect("sign")
    }
}

/// A DPoP client (RFC 9449): proofs signed with upstream-mock's committed test keys.
pub mod dpop {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
    use jsonwebtoken::{encode, jwk::Jwk, Algorithm, EncodingKey, Header};
    use serde_json::{json, Value};
    use sha2::{Digest, Sha256};

    pub struct Key {
        pub alg: Algorithm,
        enc: EncodingKey,
        /// The public key as a proof's header carries it.
        pub jwk: Value,
    }

    impl Key {
        /// `ec-1` with ES256, `ed-1` with EdDSA, `rsa-1` with RS256 or PS256.
        pub fn load(kid: &str, alg: Algorithm) -> Key {
            let pem = std::fs::read(super::tokens::key_file(kid, "key")).expect("key");
            let enc = match alg {
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
                _ => EncodingKey::from_rsa_pem(&pem),
            }
            .expect("encoding key");
            let path = super::repo().join(format!("upstream-mock/keys/{kid}.jwk.json"));
            let mut jwk: Value =
                serde_json::from_slice(&std::fs::read(path).expect("jwk")).expect("json");
            for m in ["kid", "alg", "use"] {
                jwk.as_object_mut().expect("object").remove(m);
            }
            Key { alg, enc, jwk }
        }

        /// Its RFC 7638 thumbprint, as a bound token's `cnf.jkt` names it.
        pub fn thumbprint(&self) -> String {
            let s = |k: &str| self.jwk[k].as_str().expect("member").to_string();
            let canonical = match self.jwk["kty"].as_str().expect("kty") {
                "EC" => format!(
                    r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                    s("crv"),
                    s("x"),
                    s("y")
                ),
                "OKP" => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, s("crv"), s("x")),
                _ => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e"), s("n")),
            };
            B64.encode(Sha256::digest(canonical.as_bytes()))
        }

        /// A fresh proof for one request.
        pub fn proof(&self, method: &str, url: &str, token: Option<&str>) -> String {
            self.proof_with(method, url, token, json!({}))
        }

        /// A proof with `extra` claims over the usual ones (`null` removes one).
        pub fn proof_with(
            &self,
            method: &str,
            url: &str,
            token: Option<&str>,
            extra: Value,
        ) -> String {
            let mut claims = json!({
                "jti": format!("{:032x}", rand_u128()),
                "htm": method,
                "htu": url,
                "iat": super::tokens::now(),
            });
            if let Some(t) = token {
                claims["ath"] = json!(B64.encode(Sha256::digest(t.as_bytes())));
            }
            for (k, v) in extra.as_object().expect("object") {
                if v.is_null() {
                    claims.as_object_mut().expect("object").remove(k);
                } else {
                    claims[k] = v.clone();
                }
            }
            let mut h = Header::new(self.alg);
            h.typ = Some("dpop+jwt".into());
            h.jwk = Some(serde_json::from_value::<Jwk>(self.jwk.clone()).expect("jwk"));
            encode(&h, &claims, &self.enc).expect("sign")
        }
    }

    /// Unique enough for proof ids within a test run.
    fn rand_u128() -> u128 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        t ^ ((N.fetch_add(1, Ordering::Relaxed) as u128) << 64) ^ std::process::id() as u128
    }
}
