//! `aloft_api::Client` against a served control plane on a real socket (port 0), including
//! the watch stream and a graceful shutdown with a stream still open.

use std::collections::BTreeMap;
use std::time::Duration;

use aloft_api::{
    Client, CreateAppRequest, CreateLeaseRequest, CreateMachineRequest, CreateTokenRequest,
    ListMachinesQuery, MachineConfig, MachineGuest, MachineState, RegisterHostRequest,
    StatusReport, StopRequest, TokenKind, WaitQuery,
};
use aloft_control::{Server, ServerOptions};
use futures::StreamExt;

#[tokio::test]
async fn the_typed_client_drives_every_kind_of_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::open(ServerOptions::new(dir.path())).await.unwrap();
    let admin = server.admin_token_created.clone().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async move {
        let _ = stop_rx.await;
    }));

    let client = Client::new(&base, admin).unwrap();
    let app = client
        .create_app(&CreateAppRequest {
            app_name: "web".into(),
            org_slug: Some("personal".into()),
            network: None,
        })
        .await
        .unwrap();
    assert_eq!(app.organization.slug, "personal");
    assert_eq!(
        client.list_apps(Some("personal")).await.unwrap().total_apps,
        1
    );

    let join = client
        .create_token(&CreateTokenRequest {
            scope: Some(TokenKind::Join),
            ..CreateTokenRequest::default()
        })
        .await
        .unwrap()
        .token;
    let joining = Client::new(&base, join).unwrap();
    let enrolled = joining
        .register_host(&RegisterHostRequest {
            id: "h1".into(),
            region: "ams".into(),
            address: "127.0.0.1:9".into(),
            cpus: 2,
            memory_mb: 2048,
            api_secret: None,
            mesh: None,
            host_index: None,
            edge_addresses: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(enrolled.host.free_cpus, 2);
    // The join token only enrols: the host speaks with the credential it got.
    let status = joining.watch("h1", 0).await.err().and_then(|e| e.status());
    assert_eq!(status, Some(403));
    let credential = enrolled
        .credential
        .expect("enrolment hands out a credential");
    let agent = Client::new(&base, credential).unwrap();
    let mut watch = Box::pin(agent.watch("h1", 0).await.unwrap());

    let config = MachineConfig {
        image: "nginx:1.25".into(),
        guest: Some(MachineGuest {
            cpus: 1,
            memory_mb: 256,
            ..MachineGuest::default()
        }),
        ..MachineConfig::default()
    };
    let machine = client
        .create_machine(
            "web",
            &CreateMachineRequest {
                config,
                region: Some("ams".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(machine.state, MachineState::Starting);

    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let assigned = event.machine.expect("an assignment, not a keep-alive");
    assert_eq!(assigned.id, machine.id);
    assert_eq!(assigned.config.image, "nginx:1.25");

    agent
        .report_status(
            "h1",
            &machine.id,
            &StatusReport {
                instance_id: assigned.instance_id.clone(),
                state: MachineState::Started,
                event: None,
                exit_code: None,
                checks: None,
                private_ip: None,
            },
        )
        .await
        .unwrap();
    client
        .wait_machine(
            "web",
            &machine.id,
            &WaitQuery {
                state: Some("started".into()),
                timeout: Some(10),
                instance_id: None,
            },
        )
        .await
        .unwrap();

    let lease = client
        .acquire_lease(
            "web",
            &machine.id,
            &CreateLeaseRequest {
                ttl: Some(60),
                description: None,
            },
        )
        .await
        .unwrap()
        .data;
    let err = client
        .stop_machine("web", &machine.id, &StopRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert!(err.to_string().contains("leased"), "{err}");
    client
        .with_lease_nonce(&lease.nonce)
        .stop_machine("web", &machine.id, &StopRequest::default())
        .await
        .unwrap();
    client
        .release_lease("web", &machine.id, &lease.nonce)
        .await
        .unwrap();

    client
        .set_metadata("web", &machine.id, "team", "infra")
        .await
        .unwrap();
    assert_eq!(
        client
            .get_metadata("web", &machine.id)
            .await
            .unwrap()
            .get("team")
            .map(String::as_str),
        Some("infra")
    );
    assert_eq!(
        client
            .get_metadata_key("web", &machine.id, "team")
            .await
            .unwrap(),
        "infra"
    );
    client
        .update_metadata(
            "web",
            &machine.id,
            &aloft_api::UpdateMetadataRequest {
                metadata: BTreeMap::from([
                    ("tier".into(), None),
                    ("team".into(), Some("infra".into())),
                ]),
                machine_version: Some(machine.version.clone()),
            },
        )
        .await
        .unwrap();
    let missing = client.get_metadata_key("web", &machine.id, "tier").await;
    assert!(
        matches!(
            missing,
            Err(aloft_api::ClientError::Api { status: 404, .. })
        ),
        "{missing:?}"
    );
    let memory = client.machine_memory("web", &machine.id).await.unwrap();
    assert_eq!(
        memory.limit_mb,
        machine.config.guest.as_ref().unwrap().memory_mb
    );
    let org = client.org_machines("personal").await.unwrap();
    assert!(org
        .machines
        .iter()
        .any(|m| m.id == machine.id && m.app_name == "web"));
    let filtered = client
        .list_machines(
            "web",
            &ListMachinesQuery {
                metadata: BTreeMap::from([("team".into(), "infra".into())]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(filtered.len(), 1);
    assert!(client.list_events("web", &machine.id).await.unwrap().len() >= 3);
    assert_eq!(
        client
            .list_versions("web", &machine.id)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(client.platform_regions().await.unwrap().regions[0].hosts, 1);
    assert!(client.openapi().await.unwrap()["paths"].is_object());

    let err = client
        .get_machine("web", "00000000000000")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    let err = client
        .wait_machine(
            "web",
            &machine.id,
            &WaitQuery {
                state: Some("suspended".into()),
                timeout: Some(1),
                instance_id: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(408));

    // Shutdown completes although the watch stream is still open, and ends that stream.
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("graceful shutdown finished")
        .unwrap()
        .unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(10), watch.collect::<Vec<_>>())
        .await
        .expect("the watch stream ends at shutdown");
    assert!(
        rest.iter().any(|item| item.as_ref().is_ok_and(|e| e
            .machine
            .as_ref()
            .is_some_and(|m| m.state == MachineState::Stopping))),
        "the stop reached the agent: {rest:?}"
    );
}
