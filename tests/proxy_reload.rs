//! Live policy and certificate reloads: applied quickly, never half-applied, last good kept.

mod support;

use std::time::Duration;

use support::{eventually, render, start, start_in, Options, Upstream, BASIC};

fn with_deny(path: &str) -> String {
    BASIC.replace("routes:\n", &format!("routes:\n  - name: blocked\n    match: {{ path: {{ prefix: {path} }} }}\n    deny: {{ status: 403 }}\n"))
}

#[tokio::test]
async fn valid_policy_edit_applies_within_two_seconds() {
    let p = start(BASIC).await;
    assert_eq!(p.status(false, "/new").await, 200);
    p.write_policy(&with_deny("/new"));
    assert!(
        eventually(Duration::from_secs(2), || async {
            p.status(false, "/new").await == 403
        })
        .await,
        "edit not applied within 2s"
    );
    let (_, m) = p.admin_get("/metrics").await;
    assert!(
        m.contains(r#"ward_policy_reloads_total{result="changed"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn invalid_edit_keeps_the_old_policy_and_shows_the_error() {
    let p = start(BASIC).await;
    let (_, before) = p.admin_get("/policy").await;
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    // A typo in a limit and a deny route in the same edit: nothing of it may apply.
    let broken = with_deny("/x").replace("    max_body: 1KiB", "    max_bdy: 1KiB");
    p.write_policy(&broken);
    let shown = eventually(Duration::from_secs(3), || async {
        let (_, body) = p.admin_get("/policy").await;
        body.contains("last_reload_error\":{")
    })
    .await;
    assert!(shown, "the reload error is shown on /policy");
    let (_, after) = p.admin_get("/policy").await;
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    let msg = after["last_reload_error"]["message"].as_str().unwrap();
    let file = p.policy_path.display().to_string();
    assert!(
        msg.starts_with(&format!(
            "{file}:11:5: defaults.limits: unknown field `max_bdy`"
        )),
        "{msg}"
    );
    assert_eq!(
        after["hash"], before["hash"],
        "the last good policy keeps serving"
    );
    assert_eq!(
        p.status(false, "/x").await,
        200,
        "the deny route of the bad edit did not half-apply"
    );
    let (_, m) = p.admin_get("/metrics").await;
    assert!(
        m.contains(r#"ward_policy_reloads_total{result="error"}"#),
        "{m}"
    );
    assert!(
        m.contains(r#"ward_security_events_total{event="policy_reload_failed"}"#),
        "a failed reload is a security event: {m}"
    );
    // Fixing the file clears the error and applies.
    p.write_policy(&with_deny("/x"));
    assert!(
        eventually(Duration::from_secs(2), || async {
            p.status(false, "/x").await == 403
        })
        .await
    );
    let (_, fixed) = p.admin_get("/policy").await;
    assert!(fixed.contains("\"last_reload_error\":null"), "{fixed}");
}

#[tokio::test]
async fn configmap_style_data_symlink_swap_reloads() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cm = dir.path().join("policy");
    std::fs::create_dir(&cm).unwrap();
    // Kubernetes' layout: a timestamped dir, `..data` pointing at it, and the file name through `..data`.
    let v1 = cm.join("..2026_11_22_10_00_00.000000001");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("policy.yaml"), render(BASIC, upstream.addr)).unwrap();
    std::os::unix::fs::symlink("..2026_11_22_10_00_00.000000001", cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policy.yaml", cm.join("policy.yaml")).unwrap();
    let p = start_in(dir, cm.clone(), upstream, Options::default()).await;
    assert_eq!(p.status(false, "/cm").await, 200);

    let v2 = cm.join("..2026_11_22_10_05_00.000000002");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(
        v2.join("policy.yaml"),
        render(&with_deny("/cm"), p.upstream.addr),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_11_22_10_05_00.000000002", cm.join("..data_tmp")).unwrap();
    std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    assert!(
        eventually(Duration::from_secs(2), || async {
            p.status(false, "/cm").await == 403
        })
        .await,
        "the ..data swap was not seen"
    );
}

#[tokio::test]
async fn a_reload_request_reloads_a_change_the_watcher_cannot_see() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The policy path is a symlink into an unwatched directory: only a reload request (SIGHUP for
    // the binary) can tell ward.
    let hidden = tempfile::tempdir().unwrap();
    let target = hidden.path().join("real.yaml");
    std::fs::write(&target, render(BASIC, upstream.addr)).unwrap();
    let link = dir.path().join("policy.yaml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let p = start_in(dir, link, upstream, Options::default()).await;
    assert_eq!(p.status(false, "/hup").await, 200);
    std::fs::write(&target, render(&with_deny("/hup"), p.upstream.addr)).unwrap();
    assert_eq!(
        p.status(false, "/hup").await,
        200,
        "not seen without a request"
    );
    p.reload();
    assert!(
        eventually(Duration::from_secs(3), || async {
            p.status(false, "/hup").await == 403
        })
        .await,
        "the reload request did not reload"
    );
}

fn peer_cn(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn certificate_swap_applies_to_new_handshakes_and_bad_files_keep_the_old() {
    let p = start(BASIC).await;
    let old = peer_cn(&p.tls_connect(&[b"http/1.1"]).await);
    let (cert2, key2) = p.pki.leaf("leaf-two");
    let der2 = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(cert2.as_bytes())
            .unwrap()
            .to_vec()
    };
    assert_ne!(old, der2);
    // A connection opened before the swap keeps working after it.
    let c = p.client(false);
    assert_eq!(c.get(p.url("/before")).send().await.unwrap().status(), 200);
    // cert-manager style: the key first, then the certificate, each replaced atomically.
    support::write_atomically(&p.cert_paths.key, &key2);
    support::write_atomically(&p.cert_paths.cert, &cert2);
    let swapped = eventually(Duration::from_secs(3), || async {
        peer_cn(&p.tls_connect(&[b"http/1.1"]).await) == der2
    })
    .await;
    assert!(swapped, "new handshakes present the new certificate");
    assert_eq!(c.get(p.url("/after")).send().await.unwrap().status(), 200);

    std::fs::write(&p.cert_paths.cert, "not a certificate").unwrap();
    let counted = eventually(Duration::from_secs(3), || async {
        p.admin_get("/metrics")
            .await
            .1
            .contains(r#"ward_cert_reloads_total{result="error"}"#)
    })
    .await;
    assert!(counted, "a bad certificate is reported");
    assert_eq!(
        peer_cn(&p.tls_connect(&[b"h2"]).await),
        der2,
        "the last good certificate keeps serving"
    );
}

#[tokio::test]
async fn requests_in_flight_finish_under_the_policy_they_started_with() {
    let v1 = BASIC.replace(
        "        Cache-Control: no-store",
        "        Cache-Control: no-store\n        X-Policy-Version: one",
    );
    let p = start(&v1).await;
    let c = p.client(true);
    let url = p.url("/slow");
    let slow = tokio::spawn(async move {
        c.get(url)
            .header("x-delay-ms", "1500")
            .send()
            .await
            .unwrap()
    });
    assert!(eventually(Duration::from_secs(5), || async { p.upstream.count() == 1 }).await);
    p.write_policy(&v1.replace("X-Policy-Version: one", "X-Policy-Version: two"));
    let fresh = eventually(Duration::from_secs(2), || async {
        p.client(false)
            .get(p.url("/now"))
            .send()
            .await
            .map(|r| r.headers()["x-policy-version"] == "two")
            .unwrap_or(false)
    })
    .await;
    assert!(fresh, "new requests see the new policy");
    let r = slow.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-policy-version"],
        "one",
        "the in-flight request kept its snapshot"
    );
}

/// `ward_tls_certificate_expiry_timestamp_seconds` from the admin port, if present.
async fn expiry_gauge(p: &support::Running) -> Option<i64> {
    p.admin_get("/metrics").await.1.lines().find_map(|l| {
        l.strip_prefix("ward_tls_certificate_expiry_timestamp_seconds ")
            .map(|v| v.trim().parse().unwrap())
    })
}

#[tokio::test]
async fn certificate_expiry_gauge_follows_the_serving_certificate() {
    let p = start(BASIC).await;
    // The harness's first leaf keeps rcgen's default notAfter, 4096-01-01: a GeneralizedTime.
    assert_eq!(expiry_gauge(&p).await, Some(67_090_118_400), "set at start");

    // A certificate ending in 2031 encodes notAfter as a UTCTime.
    let until = time::macros::datetime!(2031-06-01 12:00 UTC);
    let (cert, key) = p.pki.leaf_until("short-lived", until);
    support::write_atomically(&p.cert_paths.key, &key);
    support::write_atomically(&p.cert_paths.cert, &cert);
    let followed = eventually(Duration::from_secs(3), || async {
        expiry_gauge(&p).await == Some(until.unix_timestamp())
    })
    .await;
    assert!(followed, "set again when the certificate is reloaded");

    // A bad file keeps the last good certificate, and the gauge keeps describing it.
    std::fs::write(&p.cert_paths.cert, "not a certificate").unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            p.admin_get("/metrics")
                .await
                .1
                .contains(r#"ward_cert_reloads_total{result="error"}"#)
        })
        .await
    );
    assert_eq!(expiry_gauge(&p).await, Some(until.unix_timestamp()));
}
