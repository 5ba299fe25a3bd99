//! TLS: with a certificate and key configured the suite serves only TLS, its own internal
//! calls (access checks to itself) use TLS with the configured CA, and a client that trusts
//! the CA works while a plaintext client does not.

use tonic::transport::Channel;

use pim_e2e::{TestSuite, authed};
use pim_proto::assignment::v1::ListRoleDefinitionsRequest;
use pim_proto::assignment::v1::role_service_client::RoleServiceClient;
use pim_runtime::testing::unique;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_serves_tls_when_a_certificate_is_configured() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(unique("tls"));
    std::fs::create_dir_all(&dir)?;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
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
