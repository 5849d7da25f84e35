//! `aloft certs …`: the cluster's root CA and user certificates served by every edge.

use std::path::{Path, PathBuf};

use aloft_api::certs::AddCertificateRequest;
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
    /// Serve a certificate for HOST (an exact name or `*.example.com`) on every edge.
    Add {
        host: String,
        /// The certificate chain, PEM, leaf first.
        #[arg(long)]
        cert: PathBuf,
        /// The private key, PEM.
        #[arg(long)]
        key: PathBuf,
    },
    /// List user certificates.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop serving the user certificate of HOST.
    #[command(alias = "rm")]
    Remove { host: String },
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("Cannot read the {what} {}: {e}", path.display())).into())
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
        CertsCommand::Add { host, cert, key } => {
            let req = AddCertificateRequest {
                hostname: host,
                certificate: read(&cert, "certificate")?,
                private_key: read(&key, "private key")?,
            };
            let info = api.add_certificate(&req).await?;
            println!(
                "Added a certificate for {} (sha256 {})",
                info.hostname, info.fingerprint
            );
        }
        CertsCommand::List { json } => {
            let list = api.list_certificates().await?;
            if json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    vec![
                        c.hostname.clone(),
                        c.fingerprint.clone(),
                        c.created_at.clone(),
                    ]
                })
                .collect();
            output::table(&["HOSTNAME", "SHA256", "ADDED"], &rows);
        }
        CertsCommand::Remove { host } => {
            api.remove_certificate(&host).await?;
            println!("Removed the certificate for {host}");
        }
    }
    Ok(())
}
