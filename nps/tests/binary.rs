//! The `nps` binary: `--check`, startup errors, SIGHUP reload (good and bad), and a SIGTERM that
//! lets the request in flight finish.

mod common;

use std::io::Read as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn nps() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nps"))
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} failed");
}

/// Waits until `host` gets `want` through the proxy, for at most 5 s.
async fn wait_status(proxy: SocketAddr, host: &str, want: u16) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        if tokio::net::TcpStream::connect(proxy).await.is_ok() && get(proxy, host, "/").await.0 == want {
            return;
        }
        assert!(Instant::now() < until, "{host} never got {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn check_flag_and_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nps.toml");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/nps.toml");
    // The example's terminated site needs its certificate: --check loads it.
    let out = nps().args(["--config", example, "--check"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rpi.home.ntm.test.crt"), "{err}");

    std::fs::write(&path, "listen_http = [\"127.0.0.1:0\"]\n[[sites]]\nfqdn = \"a.test\"\n").unwrap();
    let out = nps().args(["--config", path.to_str().unwrap(), "--check"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK (1 sites)"));

    std::fs::write(&path, "listen_http = [\"127.0.0.1:0\"]\n\n[[sites]]\nfqdn = \"a.test\"\nport = 80\n").unwrap();
    let out = nps().args(["--config", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(host::daemon::EXIT_CONFIG.into()), "a bad configuration exits 2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nps.toml") && err.contains("line 5") && err.contains("port"), "{err}");
}

#[tokio::test]
async fn sighup_reloads_and_sigterm_drains() {
    let dns = FakeDns::start().await;
    dns.set("a.test", Answer::A(std::net::Ipv4Addr::LOCALHOST), Duration::ZERO);
    dns.set("b.test", Answer::A(std::net::Ipv4Addr::LOCALHOST), Duration::ZERO);
    let up = Upstream::start("node-a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nps.toml");
    let port = free_port();
    let proxy: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let base = format!(
        "listen_http = [\"127.0.0.1:{port}\"]\nresolver = \"{}\"\nupstream_port = {}\naccess_log = \"access.log\"\n\
         vip_ranges = [\"127.0.0.0/8\"]\n",
        dns.addr,
        up.port()
    );
    std::fs::write(&path, format!("{base}[[sites]]\nfqdn = \"a.test\"\n")).unwrap();
    let mut child = nps()
        .args(["--config", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    wait_status(proxy, "a.test", 200).await;
    assert_eq!(get(proxy, "b.test", "/").await.0, 404);

    std::fs::write(&path, format!("{base}[[sites]]\nfqdn = \"a.test\"\n[[sites]]\nfqdn = \"b.test\"\n")).unwrap();
    signal(&child, "-HUP");
    wait_status(proxy, "b.test", 200).await;

    // A broken file: logged, and the running configuration stays.
    std::fs::write(&path, format!("{base}[[sites]]\nfqdn = \"a.test\"\ncolour = \"red\"\n")).unwrap();
    signal(&child, "-HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(proxy, "a.test", "/").await.0, 200);
    assert_eq!(get(proxy, "b.test", "/").await.0, 200);

    // SIGTERM while a slow request (1.5 s) is in flight: it completes, then the process exits.
    let slow = tokio::spawn(get(proxy, "a.test", "/slow"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    signal(&child, "-TERM");
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "slow but here");
    let until = Instant::now() + Duration::from_secs(5);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "nps did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
    assert!(signalled.elapsed() < Duration::from_secs(4));
    assert!(tokio::net::TcpStream::connect(proxy).await.is_err());

    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("configuration reloaded"), "{stderr}");
    assert!(stderr.contains("reload failed, still serving the previous configuration"), "{stderr}");
    assert!(stderr.contains("colour"), "{stderr}");
    // Every request is in the access log (relative to the config file), flushed at exit.
    let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
    assert!(log.lines().any(|l| l.contains("\"GET /slow HTTP/1.1\" 200 13 ")), "{log}");
    assert!(log.lines().any(|l| l.contains("\"GET / HTTP/1.1\" 404 ")), "{log}");
}
