//! `aloft certs …`: the cluster's root CA, user certificates, and certificates ordered from the
//! server's ACME CA, served by every edge.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aloft_api::certs::{
    AcmeChallengeType, AddCertificateRequest, CertificateInfo, CertificateSource,
    CertificateStatus, OrderCertificateRequest,
};
use clap::Subcommand;

use crate::context::{self, UsageError};
use crate::output;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Print the cluster's root CA certificate (PEM), e.g. for `curl --cacert`.
    Root {
        /// Write it to this file instead of printing it.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Attach HOST to an app and serve a certificate for it on every edge: your own (--cert
    /// and --key; HOST may be `*.example.com`), or, without them, one ordered from the server's
    /// ACME CA (the server needs --acme-directory; HOST must resolve to the edges). The edges
    /// route an exact HOST to the app.
    Add {
        host: String,
        /// The app HOST belongs to (default: `app` of the config).
        #[arg(long, short)]
        app: Option<String>,
        /// The certificate chain, PEM, leaf first.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// The private key, PEM.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// ACME: the challenge to solve (http-01 or tls-alpn-01; default: the server's choice).
        #[arg(long, conflicts_with = "cert")]
        challenge: Option<AcmeChallengeType>,
        /// ACME: wait until the certificate is issued (or the order fails).
        #[arg(long, conflicts_with = "cert")]
        wait: bool,
    },
    /// Show one certificate: source, status, expiry and, for a failed order, why.
    Show {
        host: String,
        #[arg(long)]
        json: bool,
    },
    /// List certificates (of every app, or of one).
    #[command(alias = "ls")]
    List {
        /// Only this app's certificates.
        #[arg(long, short)]
        app: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Look up DNS again for HOST, added but not routed yet: once DNS proves the app controls
    /// it (a CNAME to <app>.<domain>, or TXT _aloft-challenge.HOST "app=<app>"), it routes.
    Check { host: String },
    /// Stop serving the certificate of HOST (HOST no longer routes to its app).
    #[command(alias = "rm")]
    Remove { host: String },
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("Cannot read the {what} {}: {e}", path.display())).into())
}

fn status(c: &CertificateInfo) -> String {
    match (c.source, c.status) {
        (CertificateSource::User, _) => "user".to_owned(),
        (CertificateSource::Acme, Some(s)) => s.to_string(),
        (CertificateSource::Acme, None) => "unknown".to_owned(),
    }
}

fn show(c: &CertificateInfo) {
    println!("Hostname:    {}", c.hostname);
    println!("App:         {}", c.app.as_deref().unwrap_or("-"));
    let source = match c.source {
        CertificateSource::User => "user",
        CertificateSource::Acme => "acme",
    };
    println!("Source:      {source}");
    println!("Status:      {}", status(c));
    println!(
        "Routed:      {}",
        if c.verified {
            "yes (control proven)"
        } else {
            "no: control not proven yet (`aloft certs check HOST`)"
        }
    );
    if let Some(ch) = c.challenge {
        println!("Challenge:   {ch}");
    }
    if !c.fingerprint.is_empty() {
        println!("SHA256:      {}", c.fingerprint);
    }
    if let Some(e) = &c.expires_at {
        println!("Expires:     {e}");
    }
    println!("Added:       {}", c.created_at);
    if let Some(e) = &c.error {
        println!("Error:       {e}");
    }
}

/// What to add to DNS before a custom hostname routes.
fn unproven_hint(host: &str, app: &str) {
    let base = host.trim_start_matches("*.");
    println!(
        "{host} does not route to {app} until DNS proves control: a CNAME from {host} to \
         {app}.<domain>, or a TXT record _aloft-challenge.{base} with the value \"app={app}\"; \
         then run `aloft certs check {host}`"
    );
}

pub async fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    let api = context::api()?;
    match cmd {
        CertsCommand::Root { output } => {
            let root = api.root_certificate().await?;
            match output {
                Some(path) => {
                    std::fs::write(&path, &root.certificate)
                        .map_err(|e| UsageError(format!("Cannot write {}: {e}", path.display())))?;
                    println!("Wrote the cluster root CA to {}", path.display());
                }
                None => print!("{}", root.certificate),
            }
        }
        CertsCommand::Add {
            host,
            app,
            cert: Some(cert),
            key: Some(key),
            ..
        } => {
            let req = AddCertificateRequest {
                hostname: host,
                app: context::app(app)?,
                certificate: read(&cert, "certificate")?,
                private_key: read(&key, "private key")?,
            };
            let info = api.add_certificate(&req).await?;
            println!(
                "Added a certificate for {} to app {} (sha256 {})",
                info.hostname, req.app, info.fingerprint
            );
            if !info.verified {
                unproven_hint(&info.hostname, &req.app);
            }
        }
        CertsCommand::Add {
            host,
            app,
            challenge,
            wait,
            ..
        } => {
            let req = OrderCertificateRequest {
                hostname: host,
                app: context::app(app)?,
                challenge,
            };
            let mut info = api.order_certificate(&req).await?;
            println!(
                "Ordered a certificate for {} (app {}) from the ACME CA",
                info.hostname, req.app
            );
            if !wait {
                println!(
                    "Status: {} (see `aloft certs show {}`)",
                    status(&info),
                    info.hostname
                );
                return Ok(());
            }
            while info.status == Some(CertificateStatus::Pending) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                info = api.get_certificate(&info.hostname).await?;
            }
            show(&info);
            if info.status == Some(CertificateStatus::Failed) {
                anyhow::bail!("The ACME order for {} failed", info.hostname);
            }
        }
        CertsCommand::Show { host, json } => {
            let info = api.get_certificate(&host).await?;
            if json {
                return output::json(&info);
            }
            show(&info);
        }
        CertsCommand::List { app, json } => {
            let list = api.list_certificates(app.as_deref()).await?;
            if json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    vec![
                        c.hostname.clone(),
                        c.app.clone().unwrap_or_else(|| "-".to_owned()),
                        status(c),
                        c.expires_at.clone().unwrap_or_else(|| "-".to_owned()),
                        if c.fingerprint.is_empty() {
                            "-".to_owned()
                        } else {
                            c.fingerprint.clone()
                        },
                        c.created_at.clone(),
                    ]
                })
                .collect();
            output::table(
                &["HOSTNAME", "APP", "STATUS", "EXPIRES", "SHA256", "ADDED"],
                &rows,
            );
        }
        CertsCommand::Check { host } => {
            let info = api.check_certificate(&host).await?;
            println!(
                "{} routes to app {}: control proven",
                info.hostname,
                info.app.as_deref().unwrap_or("-")
            );
        }
        CertsCommand::Remove { host } => {
            api.remove_certificate(&host).await?;
            println!("Removed the certificate for {host}");
        }
    }
    Ok(())
}
