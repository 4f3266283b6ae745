//! An answer the proxy gives before the request body is complete (413 for a declared size over
//! the limit) reaches the system's curl, over HTTP/2 and HTTP/1.1: the proxy reads and drops a
//! bounded rest of the body instead of resetting the stream while the client is uploading.

mod support;

use std::process::Command;

use support::{start, Running, BASIC};

/// `curl` (Debian 12's is 7.88) posting `size` bytes; returns the status it printed and its exit
/// code. The client trusts only the test CA.
async fn curl_post(p: &Running, size: usize, args: &[&str]) -> (String, Option<i32>) {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, vec![b'x'; size]).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &p.pki.ca_pem).unwrap();
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "30",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
    ])
    .arg("--cacert")
    .arg(&ca)
    .arg("--resolve")
    .arg(format!("localhost:{}:127.0.0.1", p.addr.port()))
    .arg("--data-binary")
    .arg(format!("@{}", body.display()))
    .args(args)
    .arg(p.url("/upload"))
    .env_remove("http_proxy")
    .env_remove("https_proxy")
    .env_remove("HTTPS_PROXY");
    let out = tokio::task::spawn_blocking(move || {
        let out = cmd
            .output()
            .expect("curl is installed (Debian: apt-get install curl)");
        drop(dir);
        out
    })
    .await
    .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code(),
    )
}

#[tokio::test]
async fn curl_over_http2_reads_the_413_for_a_2_mb_upload() {
    let p = start(BASIC).await;
    for _ in 0..3 {
        let (out, code) = curl_post(&p, 2_000_000, &["--http2"]).await;
        assert_eq!((out.as_str(), code), ("413 2", Some(0)), "curl --http2");
    }
    assert_eq!(p.status(true, "/after").await, 200);
    assert_eq!(p.upstream.count(), 1, "only the GET reached the upstream");
}

#[tokio::test]
async fn curl_over_http1_reads_the_413_with_and_without_expect_100_continue() {
    let p = start(BASIC).await;
    let (out, code) = curl_post(&p, 2_000_000, &["--http1.1"]).await;
    assert_eq!((out.as_str(), code), ("413 1.1", Some(0)), "with Expect");
    let (out, code) = curl_post(&p, 2_000_000, &["--http1.1", "-H", "Expect:"]).await;
    assert_eq!((out.as_str(), code), ("413 1.1", Some(0)), "without Expect");
    assert_eq!(p.upstream.count(), 0);
}

/// A body without a declared length is found over the limit while it is read: the proxy answers
/// 413 part way through the upload and reads and drops the rest, so the client, still sending,
/// reads the answer instead of a reset. Over HTTP/1.1 (chunked, with and without
/// `Expect: 100-continue`) and HTTP/2 (no content-length), several times each.
#[tokio::test]
async fn curl_reads_the_413_for_an_upload_of_no_declared_length_found_too_large_midway() {
    let p = start(BASIC).await;
    let chunked = ["-H", "Transfer-Encoding: chunked"];
    let cases: [(&str, Vec<&str>, &str); 3] = [
        (
            "HTTP/1.1, chunked",
            [&["--http1.1"][..], &chunked].concat(),
            "413 1.1",
        ),
        (
            "HTTP/1.1, chunked, no Expect",
            [&["--http1.1", "-H", "Expect:"][..], &chunked].concat(),
            "413 1.1",
        ),
        (
            "HTTP/2, no length",
            [&["--http2"][..], &chunked].concat(),
            "413 2",
        ),
    ];
    for (what, args, want) in &cases {
        for _ in 0..4 {
            let (out, code) = curl_post(&p, 8_000_000, args).await;
            assert_eq!((out.as_str(), code), (*want, Some(0)), "{what}");
        }
    }
    assert_eq!(p.upstream.count(), 0, "nothing reached the upstream");
}
