//! TLS: with a certificate and key configured the suite serves only TLS, its own internal
//! calls (access checks to itself) use TLS with the configured CA, and a client that trusts
//! the CA works while a plaintext client does not.

use tonic::transport::Channel;

use pim_e2e::{TestSuite, authed};
use pim_proto::assignment::v1::ListRoleDefinitionsRequest;
use pim_proto::assignment::v1::role_service_client::RoleServiceClient;
use pim_runtime::testing::unique;

/// A directory of its own holding a self-signed certificate for `names` and its key: (the
/// directory, the certificate's path, the key's).
fn self_signed(names: &[&str]) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(unique("tls"));
    std::fs::create_dir_all(&dir)?;
    let certified = rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    Ok((dir, cert, key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_serves_tls_when_a_certificate_is_configured() -> anyhow::Result<()> {
    let (dir, cert, key) = self_signed(&["localhost", "127.0.0.1"])?;
    let ts = TestSuite::embedded_with(&[
        ("PIM_TLS_CERT", cert.display().to_string()),
        ("PIM_TLS_KEY", key.display().to_string()),
        ("PIM_TLS_CA", cert.display().to_string()),
    ])
    .await?;
    let result = async {
        assert!(ts.suite.url().starts_with("https://"), "{}", ts.suite.url());
        let admin = ts.admin_token().await?;
        // create_user makes the suite ask itself CheckAccess, over TLS.
        let created = ts.create_user(&admin, "lee").await?;
        assert_eq!(created.user_name, "lee");

        let plaintext_url = ts.suite.url().replacen("https://", "http://", 1);
        let plaintext = Channel::from_shared(plaintext_url)?.connect_lazy();
        let refused = RoleServiceClient::new(plaintext)
            .list_role_definitions(authed(&admin, ListRoleDefinitionsRequest {}))
            .await;
        let refused = refused.expect_err("a plaintext client gets nothing from a TLS server");
        // The server is there (it just answered over TLS) and breaks off the plaintext talk:
        // hyper reports that as Unknown, Cancelled or Internal (an h2 protocol error, as the
        // TLS alert is read as a frame), depending on timing — never as Unavailable, which is
        // what a refused connection would be.
        assert!(
            matches!(
                refused.code(),
                tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Internal
            ),
            "{refused:?}"
        );
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    std::fs::remove_dir_all(&dir).ok();
    result
}

/// Serving TLS with a self-signed certificate and no `PIM_TLS_CA`, the suite still reaches
/// itself: its calls to its own address trust the certificate it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suite_serving_tls_reaches_itself_without_a_ca_set() -> anyhow::Result<()> {
    let (dir, cert, key) = self_signed(&["127.0.0.1"])?;
    let mut ts = TestSuite::embedded_with(&[
        ("PIM_TLS_CERT", cert.display().to_string()),
        ("PIM_TLS_KEY", key.display().to_string()),
    ])
    .await?;
    // The test's own client trusts the certificate; the suite was given no CA.
    let trusting = pim_runtime::config::TlsConfig {
        ca: Some(cert.clone()),
        ..Default::default()
    };
    ts.channel = pim_runtime::grpc::channel(ts.suite.url(), &trusting)?;
    let result = async {
        let admin = ts.admin_token().await?;
        // create_user makes the suite ask itself CheckAccess, over TLS.
        let created = ts.create_user(&admin, "lee").await?;
        assert_eq!(created.user_name, "lee");
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    std::fs::remove_dir_all(&dir).ok();
    result
}

/// A certificate or key that does not load stops the start, naming the settings, rather
/// than leave a process up with no gRPC port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_load_stops_the_start() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(unique("tls"));
    std::fs::create_dir_all(&dir)?;
    let (one, other) = (
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?,
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?,
    );
    let (cert, key) = (dir.join("cert.pem"), dir.join("other-key.pem"));
    std::fs::write(&cert, one.cert.pem())?;
    std::fs::write(&key, other.signing_key.serialize_pem())?;
    let missing = dir.join("missing.pem").display().to_string();
    for (cert, key) in [
        (missing.clone(), key.display().to_string()),
        (cert.display().to_string(), key.display().to_string()),
    ] {
        let started = TestSuite::embedded_with(&[("PIM_TLS_CERT", cert), ("PIM_TLS_KEY", key)]).await;
        let refused = format!("{:#}", started.err().expect("the start is refused"));
        assert!(refused.contains("PIM_TLS_CERT, PIM_TLS_KEY"), "{refused}");
    }
    // Mutual TLS with no certificate of its own to present to itself: refused too.
    let own_key = dir.join("key.pem");
    std::fs::write(&own_key, one.signing_key.serialize_pem())?;
    let shown = |p: &std::path::Path| p.display().to_string();
    let started = TestSuite::embedded_with(&[
        ("PIM_TLS_CERT", shown(&cert)),
        ("PIM_TLS_KEY", shown(&own_key)),
        ("PIM_TLS_CA", shown(&cert)),
        ("PIM_TLS_CLIENT_CA", shown(&cert)),
    ])
    .await;
    let refused = format!("{:#}", started.err().expect("the start is refused"));
    assert!(
        refused.contains("set PIM_TLS_CLIENT_CERT and PIM_TLS_CLIENT_KEY"),
        "{refused}"
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// Mutual TLS: with `PIM_TLS_CLIENT_CA` the suite accepts only clients presenting a
/// certificate that CA signed. Its own calls to itself present `PIM_TLS_CLIENT_CERT`, a client
/// with a certificate gets answers (and still needs its token), one without gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_only_clients_with_a_certificate_get_in() -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    let dir = std::env::temp_dir().join(unique("mtls"));
    std::fs::create_dir_all(&dir)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let issue = |names: Vec<String>, file: &str| -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(names)?.signed_by(&key, &ca)?;
        let (cert_path, key_path) = (dir.join(format!("{file}.pem")), dir.join(format!("{file}-key.pem")));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok((cert_path, key_path))
    };
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem())?;
    let (server_cert, server_key) = issue(vec!["localhost".into(), "127.0.0.1".into()], "server")?;
    let (client_cert, client_key) = issue(vec!["pim-assignment".into()], "client")?;
    let path = |p: &std::path::Path| p.display().to_string();
    let ts = TestSuite::embedded_with(&[
        ("PIM_TLS_CERT", path(&server_cert)),
        ("PIM_TLS_KEY", path(&server_key)),
        ("PIM_TLS_CA", path(&ca_path)),
        ("PIM_TLS_CLIENT_CA", path(&ca_path)),
        ("PIM_TLS_CLIENT_CERT", path(&client_cert)),
        ("PIM_TLS_CLIENT_KEY", path(&client_key)),
    ])
    .await?;
    let result = async {
        // The harness's channel presents the client certificate (it reads the same settings).
        let admin = ts.admin_token().await?;
        // create_user makes the suite ask itself CheckAccess, presenting its certificate.
        ts.create_user(&admin, "lee").await?;

        // Trusting the server but presenting nothing: the handshake fails.
        let bare = pim_runtime::grpc::channel(
            ts.suite.url(),
            &pim_runtime::config::TlsConfig {
                ca: Some(ca_path.clone()),
                ..Default::default()
            },
        )?;
        let refused = RoleServiceClient::new(bare)
            .list_role_definitions(authed(&admin, ListRoleDefinitionsRequest {}))
            .await
            .expect_err("no client certificate, no answer");
        assert_ne!(refused.code(), tonic::Code::Ok);

        // With a certificate but no token: the token is still required.
        let unauthenticated = RoleServiceClient::new(ts.channel.clone())
            .list_role_definitions(tonic::Request::new(ListRoleDefinitionsRequest {}))
            .await
            .expect_err("a certificate is not a token");
        assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    std::fs::remove_dir_all(&dir).ok();
    result
}
