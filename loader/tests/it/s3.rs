//! Shard sets on S3: a real S3-compatible server (moto, installed in .venv by
//! scripts/setup.sh) on loopback; a fault proxy in front of it answers 503 to show retries.

use crate::common;
use common::*;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mdm_loader::{Batch, Error, LoaderBuilder, StoreOptions};

/// The moto server of `.venv`; without it the tests skip loudly, or fail where CI sets
/// `MDM_REQUIRE_FIXTURES=1`.
fn moto_server() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if p.exists() {
        return Some(p);
    }
    let msg = format!("{} missing: run `bash scripts/setup.sh` (or `make test`) first; it installs moto[server]", p.display());
    if std::env::var_os("MDM_REQUIRE_FIXTURES").is_some_and(|v| v != "0") {
        panic!("MDM_REQUIRE_FIXTURES is set: {msg}");
    }
    eprintln!("\n*** SKIPPED: {msg} ***\n");
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A moto S3 server on loopback, killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Option<Moto> {
        let server = moto_server()?;
        let port = free_port();
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Moto { child, port };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(30), "moto_server did not listen on {port} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    /// One unsigned request (moto does not check signatures); returns the status code.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> u16 {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", self.port, body.len()).unwrap();
        s.write_all(body).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap_or_default();
        reply.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    /// Creates `bucket` and uploads every file of `dir` under `prefix/`.
    fn upload(&self, bucket: &str, dir: &Path, prefix: &str) {
        assert_eq!(self.request("PUT", &format!("/{bucket}"), b""), 200);
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let status = self.request("PUT", &format!("/{bucket}/{prefix}/{name}"), &std::fs::read(&p).unwrap());
            assert_eq!(status, 200, "upload {name}");
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Answers the first `fail` connections with 503, then forwards to `upstream`.
fn fault_proxy(upstream: u16, fail: usize) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { return };
            if count.load(Ordering::SeqCst) < fail {
                count.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = client.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
            let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
                let _ = s2.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let (mut s, mut c) = (server, client);
                let _ = std::io::copy(&mut s, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (port, served)
}

fn options(port: u16, cache: &Path, retries: usize) -> StoreOptions {
    let config = [
        ("aws_endpoint", format!("http://127.0.0.1:{port}")),
        ("aws_allow_http", "true".into()),
        ("aws_access_key_id", "test".into()),
        ("aws_secret_access_key", "test".into()),
        ("aws_region", "us-east-1".into()),
    ];
    StoreOptions {
        cache_dir: Some(cache.to_path_buf()),
        max_retries: retries,
        init_backoff: Duration::from_millis(10),
        retry_timeout: Duration::from_secs(20),
        request_timeout: Duration::from_secs(10),
        config: config.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        ..StoreOptions::default()
    }
}

fn batches(b: &mut LoaderBuilder, n: usize) -> Vec<Batch> {
    b.build().unwrap().take(n).map(Result::unwrap).collect()
}

#[test]
fn s3_shards_read_back_the_same_batches_as_local_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    write_set_with(&local, mdm_shards::RecordKind::TextImage, &[64, 32], 0, 90, 30, Some(encoder(4)));
    let Some(moto) = Moto::start() else { return };
    moto.upload("data", &local, "sets/a");

    let ratio = vec![(32, 1.0), (16, 1.0)];
    let want = batches(builder(&local).batch_size(10).mixed_ratio(ratio.clone()), 9);
    let (cache, port) = (tmp.path().join("cache"), moto.port);
    let remote = |url: &str| {
        let mut b = builder_for(url);
        b.batch_size(10).mixed_ratio(ratio.clone()).store_options(options(port, &cache, 3));
        b
    };
    assert_eq!(batches(&mut remote("s3://data/sets/a"), 9), want);
    // A second run is served by the cache: the same batches with the server gone.
    assert!(std::fs::read_dir(&cache).unwrap().count() > 0);
    let remote_again = remote("s3://data/sets/a/manifest.json");
    drop(moto);
    assert_eq!(batches(&mut remote_again.clone(), 9), want);
}

#[test]
fn s3_reads_retry_through_503s_and_fail_loudly_without_retries() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    write_set(&local, 40);
    let Some(moto) = Moto::start() else { return };
    moto.upload("data", &local, "b");
    let want = batches(builder(&local).batch_size(8), 4);

    let (port, served) = fault_proxy(moto.port, 3);
    let mut b = builder_for("s3://data/b");
    b.batch_size(8).store_options(options(port, &tmp.path().join("c1"), 5));
    assert_eq!(batches(&mut b, 4), want);
    assert_eq!(served.load(Ordering::SeqCst), 3, "the proxy answered 503 three times");

    let (port, _) = fault_proxy(moto.port, 1000);
    let mut b = builder_for("s3://data/b");
    b.store_options(options(port, &tmp.path().join("c2"), 0));
    let err = b.build().err().expect("a 503 without retries is an error");
    assert!(matches!(err, Error::Store { .. }), "{err}");
    assert!(err.to_string().contains("s3://data/b/manifest.json"), "{err}");
}
