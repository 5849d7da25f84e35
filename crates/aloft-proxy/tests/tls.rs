//! HTTPS through the edge: certificates from the cluster CA, user certificates, h2 via ALPN.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use aloft_proxy::Ca;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

fn client_config(root_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

async fn connect(
    addr: SocketAddr,
    name: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
}

async fn https_get(
    addr: SocketAddr,
    name: &str,
    path: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> (Version, String) {
    let tls = connect(addr, name, cfg).await.expect("TLS handshake");
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let req = Request::builder()
        .uri(format!("https://{name}{path}"))
        .header("host", name);
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let resp = if h2 {
        let (mut tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        tx.send_request(req).await.unwrap()
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        tx.send_request(req).await.unwrap()
    };
    let version = resp.version();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (version, String::from_utf8_lossy(&body).into_owned())
}

async fn tls_edge(dir: &std::path::Path) -> (aloft_proxy::Edge, Backend, Arc<Ca>) {
    let port = shared_port().await;
    let backend = Backend::start((ip(2), port).into(), "a1").await;
    let ca = Arc::new(Ca::load_or_create(dir).unwrap());
    let mut alpha = app("alpha", port, vec![machine("a1", "ams", "h1", 2)]);
    alpha.hostnames = vec!["shop.example.com".into()];
    let c = ca.clone();
    let edge = edge_with(vec![alpha], move |o| {
        o.https_listen = Some("127.0.0.1:0".parse().unwrap());
        o.ca = Some(c);
    })
    .await;
    (edge, backend, ca)
}

#[tokio::test]
async fn serves_app_hosts_with_certificates_from_the_cluster_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (edge, _b, ca) = tls_edge(dir.path()).await;
    let https = edge.https_addr().unwrap();
    let cfg = client_config(ca.root_pem(), &[b"http/1.1"]);
    let (version, body) = https_get(https, "alpha.aloft.test", "/headers", cfg.clone()).await;
    assert_eq!(version, Version::HTTP_11);
    let seen: std::collections::HashMap<String, String> = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-ssl"], "on");
    assert_eq!(seen["x-forwarded-port"], "443");
    // Custom hostnames in the route table get a certificate too; unknown names get none.
    assert_eq!(
        https_get(https, "shop.example.com", "/", cfg.clone())
            .await
            .1,
        "machine=a1"
    );
    assert!(connect(https, "nobody.aloft.test", cfg).await.is_err());
    // The CA on disk is the same one on the next start.
    assert_eq!(
        Ca::load_or_create(dir.path()).unwrap().root_pem(),
        ca.root_pem()
    );
}

#[tokio::test]
async fn negotiates_h2_over_tls_with_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let (edge, _b, ca) = tls_edge(dir.path()).await;
    let cfg = client_config(ca.root_pem(), &[b"h2", b"http/1.1"]);
    let (version, body) = https_get(edge.https_addr().unwrap(), "alpha.aloft.test", "/", cfg).await;
    assert_eq!((version, body.as_str()), (Version::HTTP_2, "machine=a1"));
}

#[tokio::test]
async fn only_tls_12_and_13_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (edge, _b, ca) = tls_edge(dir.path()).await;
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.root_pem().as_bytes()).unwrap())
            .unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[v])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tls = connect(
            edge.https_addr().unwrap(),
            "alpha.aloft.test",
            Arc::new(cfg),
        )
        .await
        .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(v.version));
    }
}

#[tokio::test]
async fn user_certificates_win_over_the_cluster_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (edge, _b, ca) = tls_edge(dir.path()).await;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["shop.example.com".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    assert!(edge
        .add_certificate("shop.example.com", "garbage", &key.serialize_pem())
        .is_err());
    edge.add_certificate("Shop.Example.com", &cert.pem(), &key.serialize_pem())
        .unwrap();
    let https = edge.https_addr().unwrap();
    let own = client_config(&cert.pem(), &[b"http/1.1"]);
    assert_eq!(
        https_get(https, "shop.example.com", "/", own).await.1,
        "machine=a1"
    );
    // A client trusting only the cluster CA now rejects that name.
    assert!(
        connect(https, "shop.example.com", client_config(ca.root_pem(), &[]))
            .await
            .is_err()
    );
}
