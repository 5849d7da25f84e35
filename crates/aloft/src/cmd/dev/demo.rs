//! The demo app of `aloft dev`: its image, built from the `hello` binary, and its machines.

use std::path::Path;

use aloft_api::{
    Client, CreateMachineRequest, Machine, MachineConfig, MachinePort, MachineService,
    MachineState, WaitQuery,
};
use aloft_image::build::{self, BuildConfig};
use anyhow::Context as _;

use super::{DEMO_APP, DEMO_PORT};
use crate::context::UsageError;

/// Packages the `hello` binary (with its shared libraries) as an image and pushes it to the
/// built-in registry through `api` (creating the demo app first). Returns the reference hosts
/// pull it by (the registry's cluster-wide name, pinned to the pushed digest).
pub async fn push_image(api: &Client, data_dir: &Path, bin_dir: &Path) -> anyhow::Result<String> {
    let hello = bin_dir.join("hello");
    if !hello.exists() {
        return Err(UsageError(format!(
            "The demo app {} is missing: build it with `cargo build --release --workspace --bins`",
            hello.display()
        ))
        .into());
    }
    let layout = data_dir.join("demo-image");
    let files = build::binary_with_libraries(&hello, "/app/hello")?;
    build::write_layout(
        &layout,
        "latest",
        &files,
        &BuildConfig {
            entrypoint: vec!["/app/hello".into()],
            env: vec![format!("PORT={DEMO_PORT}")],
            exposed_ports: vec![format!("{DEMO_PORT}/tcp")],
            ..Default::default()
        },
    )?;
    ensure_app(api).await?;
    let destination = crate::cmd::image::Destination::check(api, DEMO_APP).await?;
    let image = aloft_image::push::from_oci_layout(&layout, Some("latest"))?;
    let reference = destination.push(&image, "latest").await?;
    println!("image          {reference}");
    Ok(reference)
}

/// Makes sure the demo app exists, creates the app's machine in `region` unless it has one
/// there (starting it when stopped), and waits until it is started.
pub async fn ensure_machine(api: &Client, region: &str, image: &str) -> anyhow::Result<Machine> {
    ensure_app(api).await?;
    let existing = api
        .list_machines(DEMO_APP, &aloft_api::ListMachinesQuery::default())
        .await?
        .into_iter()
        .find(|m| {
            m.region == region
                && m.state != MachineState::Destroyed
                && m.state != MachineState::Destroying
        });
    let machine = match existing {
        Some(m) if m.state == MachineState::Started => m,
        Some(m) => {
            api.start_machine(DEMO_APP, &m.id).await?;
            api.get_machine(DEMO_APP, &m.id).await?
        }
        None => {
            let config = MachineConfig {
                image: image.to_string(),
                services: Some(vec![MachineService {
                    protocol: Some("tcp".into()),
                    internal_port: DEMO_PORT,
                    autostart: Some(true),
                    ports: Some(vec![
                        MachinePort {
                            port: Some(80),
                            handlers: Some(vec!["http".into()]),
                            ..Default::default()
                        },
                        MachinePort {
                            port: Some(443),
                            handlers: Some(vec!["tls".into(), "http".into()]),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }]),
                ..Default::default()
            };
            api.create_machine(
                DEMO_APP,
                &CreateMachineRequest {
                    config,
                    region: Some(region.to_string()),
                    ..Default::default()
                },
            )
            .await?
        }
    };
    api.wait_machine(
        DEMO_APP,
        &machine.id,
        &WaitQuery {
            state: Some("started".into()),
            timeout: Some(120),
            instance_id: None,
        },
    )
    .await
    .with_context(|| format!("The demo machine in {region} did not start"))?;
    Ok(api.get_machine(DEMO_APP, &machine.id).await?)
}

/// Creates the demo app unless it exists.
pub async fn ensure_app(api: &Client) -> anyhow::Result<()> {
    if api.get_app(DEMO_APP).await.is_err() {
        api.create_app(&aloft_api::CreateAppRequest {
            app_name: DEMO_APP.into(),
            org_slug: None,
            network: None,
        })
        .await?;
    }
    Ok(())
}
