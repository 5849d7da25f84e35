//! The Machines API contract: every example request of Fly's Machines API reference, written
//! here from that documentation, replayed against a real `aloft server` with a real agent
//! running the machines, comparing statuses, shapes and field names with what Fly documents.
//!
//! Sources (Fly's public docs, `superfly/docs`, and Fly's OpenAPI document for the Machines
//! API, which its generated clients come from):
//! - APPS: `machines/api/apps-resource` (create, get, list, delete)
//! - MACHINES: `machines/api/machines-resource` (list, create, create with services, wait,
//!   get, update, stop, start, delete, leases, cordon/uncordon, metadata)
//! - SPEC: the Machines OpenAPI document's operations (restart `timeout`/`signal`, signal,
//!   suspend, wait with several `state`s and `version`, events `limit`, versions, exec, ps,
//!   memory, metadata by key and `PUT`, `DELETE ?kill=`, org machines, secrets, certificates)
//! - FLY-GO: `superfly/fly-go` `flaps` (the lease calls with `?ttl=` and no body, the wait
//!   query, numeric signals)
//!
//! Example values Fly's docs use for things that exist only on Fly (`registry-1.docker.io`
//! images, `my-app-name`) are replaced by ours: an image pushed to the built-in registry and
//! a fresh app name. Everything else is sent as the docs write it.

use std::path::Path;
use std::time::Duration;

use aloft_testkit::{busybox_layout, skopeo_push, wait_for, Agent, Server};
use serde_json::{json, Value};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// A blocking JSON client for the API under test.
struct Api {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            http: reqwest::Client::new(),
            base: server.url.clone(),
            token: server.token.clone(),
        }
    }

    /// Sends `method path` with an optional JSON body and headers; the status and the body
    /// (JSON, `Null` when empty).
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(90));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        self.rt.block_on(async {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            let body = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{path}: answer is not JSON ({e}): {text}"))
            };
            (status, body)
        })
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None, &[])
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(body), &[])
    }

    fn post_empty(&self, path: &str) -> (u16, Value) {
        self.call("POST", path, None, &[])
    }

    fn delete(&self, path: &str) -> (u16, Value) {
        self.call("DELETE", path, None, &[])
    }
}

/// Asserts `status` and returns the body.
#[track_caller]
fn expect(what: &str, (status, body): (u16, Value), want: u16) -> Value {
    assert_eq!(status, want, "{what}: {body}");
    body
}

/// Asserts that `value` is an object with every one of `fields`.
#[track_caller]
fn has_fields(what: &str, value: &Value, fields: &[&str]) {
    let obj = value
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {value}"));
    for field in fields {
        assert!(obj.contains_key(*field), "{what} has no {field:?}: {value}");
    }
}

/// The fields of a Machine object in Fly's docs (MACHINES, "Machine properties").
const MACHINE_FIELDS: &[&str] = &[
    "id",
    "name",
    "state",
    "region",
    "instance_id",
    "private_ip",
    "config",
    "image_ref",
    "created_at",
    "updated_at",
    "events",
    "checks",
];

#[track_caller]
fn is_machine(what: &str, m: &Value) {
    has_fields(what, m, MACHINE_FIELDS);
    has_fields(
        &format!("{what}.image_ref"),
        &m["image_ref"],
        &["registry", "repository", "tag", "digest", "labels"],
    );
    for event in m["events"].as_array().unwrap() {
        has_fields(
            &format!("{what}.events[]"),
            event,
            &["type", "status", "source", "timestamp"],
        );
    }
}

/// The error body Fly's clients read (`{"error": "..."}`).
#[track_caller]
fn is_error(what: &str, body: &Value) {
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: not an error body: {body}"
    );
}

/// Waits (through the API) until the machine is in `state`.
fn wait_state(api: &Api, base: &str, state: &str) -> Value {
    expect(
        &format!("wait for {state}"),
        api.get(&format!("{base}/wait?state={state}&timeout=60")),
        200,
    )
}

#[test]
fn flys_machines_api_examples_answer_as_fly_documents() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let _agent = Agent::start_with(
        bin(),
        &server,
        "ams",
        &dir.path().join("agent"),
        &["--cpus", "8"],
    )
    .unwrap();
    let api = Api::new(&server);
    let app = format!("contract-{}", std::process::id());

    // An httpd image in the built-in registry stands in for Fly's example images.
    let layout = dir.path().join("layout");
    busybox_layout(
        &layout,
        "1",
        "hello from the contract\n",
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    )
    .unwrap();
    // A label, as Fly's example image has: image_ref.labels carries the image config's.
    aloft_testkit::run(
        "umoci",
        &[
            "config",
            "--image",
            &format!("{}:1", layout.display()),
            "--config.label=org.opencontainers.image.version=22.04",
        ],
    )
    .unwrap();
    let registry = server.url.trim_start_matches("http://").to_string();
    let image = format!("{registry}/{app}/busybox:1");
    skopeo_push(&layout, "1", &image, &server.token).unwrap();

    // APPS, "Create a Fly App": 201.
    let created = expect(
        "create app",
        api.post(
            "/v1/apps",
            json!({"app_name": app, "org_slug": "personal", "network": "my-optional-network"}),
        ),
        201,
    );
    has_fields("created app", &created, &["id"]);
    // APPS, "Get app details".
    let got = expect("get app", api.get(&format!("/v1/apps/{app}")), 200);
    has_fields("app", &got, &["id", "name", "status", "organization"]);
    has_fields("app.organization", &got["organization"], &["name", "slug"]);
    assert_eq!(got["organization"]["slug"], "personal");
    // APPS, "List apps in an organization".
    let listed = expect("list apps", api.get("/v1/apps?org_slug=personal"), 200);
    has_fields("app list", &listed, &["total_apps", "apps"]);
    let entry = listed["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == app.as_str())
        .unwrap_or_else(|| panic!("{app} listed: {listed}"))
        .clone();
    has_fields(
        "app list entry",
        &entry,
        &["id", "name", "machine_count", "network"],
    );

    let machines = format!("/v1/apps/{app}/machines");

    // MACHINES, "Create a Machine": the docs' body with our image. 200 with a Machine whose
    // image_ref carries the digest the tag was resolved to, and config.image pinned to it.
    let sleeper = expect(
        "create machine",
        api.post(
            &machines,
            json!({
                "config": {
                    "init": {"exec": ["/bin/sleep", "inf"]},
                    "image": image,
                    "auto_destroy": true,
                    "restart": {"policy": "always"},
                    "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}
                }
            }),
        ),
        200,
    );
    is_machine("created machine", &sleeper);
    let digest = sleeper["image_ref"]["digest"].as_str().unwrap().to_owned();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{sleeper}"
    );
    assert_eq!(
        sleeper["config"]["image"],
        format!("{image}@{digest}"),
        "config.image is pinned to what was resolved"
    );
    assert_eq!(
        (
            &sleeper["image_ref"]["registry"],
            &sleeper["image_ref"]["repository"],
            &sleeper["image_ref"]["tag"]
        ),
        (
            &json!(registry),
            &json!(format!("{app}/busybox")),
            &json!("1")
        )
    );
    assert_eq!(
        sleeper["image_ref"]["labels"]["org.opencontainers.image.version"], "22.04",
        "{sleeper}"
    );
    // Newest first, as Fly's example: the launch is the oldest.
    let launch = sleeper["events"].as_array().unwrap().last().unwrap();
    assert_eq!(
        (&launch["type"], &launch["status"]),
        (&json!("launch"), &json!("created"))
    );
    assert_eq!(launch["source"], "user");
    let sleeper_id = sleeper["id"].as_str().unwrap().to_owned();
    let s = format!("{machines}/{sleeper_id}");

    // MACHINES, "Create a Machine with services": the docs' body.
    let web = expect(
        "create machine with services",
        api.post(
            &machines,
            json!({
                "name": format!("{app}-web"),
                "config": {
                    "image": image,
                    "env": {"APP_ENV": "production"},
                    "services": [{
                        "ports": [
                            {"port": 443, "handlers": ["tls", "http"]},
                            {"port": 80, "handlers": ["http"]}
                        ],
                        "protocol": "tcp",
                        "internal_port": 8080
                    }],
                    "checks": {
                        "httpget": {
                            "type": "http", "port": 8080, "method": "GET", "path": "/",
                            "interval": "15s", "timeout": "10s"
                        }
                    }
                }
            }),
        ),
        200,
    );
    is_machine("machine with services", &web);
    assert_eq!(web["name"], format!("{app}-web"));
    assert_eq!(web["config"]["services"][0]["internal_port"], 8080);
    assert_eq!(web["config"]["checks"]["httpget"]["interval"], "15s");
    let web_id = web["id"].as_str().unwrap().to_owned();
    let w = format!("{machines}/{web_id}");

    // SPEC, Machines_create: `skip_launch` leaves it created; `lease_ttl` answers a nonce.
    let parked = expect(
        "create skip_launch with lease_ttl",
        api.post(
            &machines,
            json!({"config": {"image": image}, "skip_launch": true, "lease_ttl": 30, "region": "ams"}),
        ),
        200,
    );
    assert_eq!(parked["state"], "created");
    assert!(
        parked["nonce"].as_str().is_some_and(|n| !n.is_empty()),
        "{parked}"
    );
    let parked_id = parked["id"].as_str().unwrap().to_owned();
    let p = format!("{machines}/{parked_id}");

    // MACHINES, "Wait for a Machine to reach a specified state": 200 {"ok": true}; SPEC adds
    // state and version.
    let waited = wait_state(&api, &s, "started");
    assert_eq!(waited["ok"], true);
    has_fields("wait answer", &waited, &["ok", "state", "version"]);
    wait_state(&api, &w, "started");
    let waited = expect(
        "wait by instance_id",
        api.get(&format!(
            "{s}/wait?instance_id={}&timeout=30&state=started",
            sleeper["instance_id"].as_str().unwrap()
        )),
        200,
    );
    assert_eq!(waited["state"], "started");
    // FLY-GO: several states, repeated, and `version`.
    let waited = expect(
        "wait for several states",
        api.get(&format!(
            "{s}/wait?state=stopped&state=started&timeout=10&version={}",
            sleeper["instance_id"].as_str().unwrap()
        )),
        200,
    );
    assert_eq!(waited["state"], "started");
    // 408 when the state is not reached in time; 400 for a state one cannot wait for.
    let timed_out = expect(
        "wait timeout",
        api.get(&format!("{s}/wait?state=stopped&timeout=1")),
        408,
    );
    is_error("wait timeout", &timed_out);
    expect(
        "wait for a transient state",
        api.get(&format!("{s}/wait?state=starting")),
        400,
    );

    // MACHINES, "Get a Machine".
    let got = expect("get machine", api.get(&s), 200);
    is_machine("machine", &got);
    assert_eq!(got["state"], "started");
    // 404 for unknown ids and apps.
    is_error(
        "unknown machine",
        &expect(
            "unknown machine",
            api.get(&format!("{machines}/0000deadbeef00")),
            404,
        ),
    );
    expect(
        "unknown app",
        api.get("/v1/apps/no-such-app-here/machines"),
        404,
    );

    // MACHINES, "List Machines", with the documented filters.
    let all = expect("list machines", api.get(&machines), 200);
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
    for m in all.as_array().unwrap() {
        is_machine("listed machine", m);
    }
    let in_region = expect(
        "list ?region",
        api.get(&format!("{machines}?region=ams")),
        200,
    );
    assert_eq!(in_region.as_array().unwrap().len(), 3);
    let elsewhere = expect(
        "list ?region=yyz",
        api.get(&format!("{machines}?region=yyz")),
        200,
    );
    assert_eq!(elsewhere, json!([]));
    let started = expect(
        "list ?state",
        api.get(&format!("{machines}?state=started")),
        200,
    );
    assert_eq!(started.as_array().unwrap().len(), 2, "{started}");
    let created = expect(
        "list ?state=created",
        api.get(&format!("{machines}?state=created,stopped")),
        200,
    );
    assert_eq!(created[0]["id"], parked_id.as_str());
    let summary = expect(
        "list ?summary",
        api.get(&format!("{machines}?summary=true")),
        200,
    );
    for m in summary.as_array().unwrap() {
        has_fields(
            "summary machine",
            m,
            &["id", "name", "state", "region", "image_ref"],
        );
        assert_eq!(m["events"], json!([]), "summary leaves out events");
    }
    expect(
        "list ?include_deleted",
        api.get(&format!("{machines}?include_deleted=true")),
        200,
    );

    // MACHINES, "Update a Machine": the whole config back with a change; a new instance.
    let mut config = got["config"].clone();
    config["env"] = json!({"UPDATED": "yes"});
    let updated = expect(
        "update machine",
        api.post(
            &s,
            json!({"config": config, "current_version": got["instance_id"]}),
        ),
        200,
    );
    is_machine("updated machine", &updated);
    assert_ne!(updated["instance_id"], got["instance_id"]);
    assert_eq!(updated["config"]["env"]["UPDATED"], "yes");
    assert_eq!(updated["image_ref"]["digest"], digest.as_str());
    expect(
        "wait for the new version",
        api.get(&format!(
            "{s}/wait?state=started&timeout=60&version={}",
            updated["instance_id"].as_str().unwrap()
        )),
        200,
    );
    // SPEC, Machines_list_versions.
    let versions = expect("versions", api.get(&format!("{s}/versions")), 200);
    assert_eq!(versions.as_array().unwrap().len(), 2, "{versions}");
    has_fields("version", &versions[0], &["version", "user_config"]);

    // MACHINES, "Stop a Machine": 200 {"ok": true}; the docs' body fields.
    let stopped = expect(
        "stop",
        api.post(
            &format!("{s}/stop"),
            json!({"signal": "SIGTERM", "timeout": "10s"}),
        ),
        200,
    );
    assert_eq!(stopped, json!({"ok": true}));
    wait_state(&api, &s, "stopped");
    // 412 when the state does not allow the action.
    is_error(
        "restart a stopped machine",
        &expect(
            "restart a stopped machine",
            api.post_empty(&format!("{s}/restart")),
            412,
        ),
    );
    expect(
        "signal a stopped machine",
        api.post(&format!("{s}/signal"), json!({"signal": "SIGHUP"})),
        412,
    );
    // MACHINES, "Start a Machine".
    let started = expect("start", api.post_empty(&format!("{s}/start")), 200);
    assert_eq!(started["previous_state"], "stopped");
    has_fields(
        "start answer",
        &started,
        &["previous_state", "migrated", "new_host"],
    );
    wait_state(&api, &s, "started");

    // SPEC, Machines_restart: `timeout` and `signal` in the query.
    let before = expect("get", api.get(&s), 200);
    expect(
        "restart",
        api.post_empty(&format!("{s}/restart?timeout=5s&signal=SIGTERM")),
        200,
    );
    wait_for("the restart to go through", Duration::from_secs(60), || {
        let (_, m) = api.get(&s);
        let restarted = m["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "restart")
            .count()
            > before["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "restart")
                .count();
        (restarted && m["state"] == "started").then_some(())
    })
    .unwrap();

    // SPEC, Machines_signal; FLY-GO sends numbers too. Harmless signals: the process lives on.
    expect(
        "signal by name",
        api.post(&format!("{w}/signal"), json!({"signal": "SIGWINCH"})),
        200,
    );
    expect(
        "signal by number",
        api.post(&format!("{w}/signal"), json!({"signal": 18})),
        200,
    );
    expect(
        "unknown signal",
        api.post(&format!("{w}/signal"), json!({"signal": "SIGNOPE"})),
        400,
    );

    // SPEC, Machines_exec: the command's output.
    let exec = expect(
        "exec",
        api.post(
            &format!("{w}/exec"),
            json!({"command": ["echo", "hello"], "timeout": 10}),
        ),
        200,
    );
    has_fields("exec answer", &exec, &["exit_code", "stdout", "stderr"]);
    assert_eq!(
        (exec["exit_code"].as_i64(), exec["stdout"].as_str()),
        (Some(0), Some("hello\n"))
    );

    // SPEC, Machines_list_processes: ProcessStat entries; the httpd listens on 8080.
    let ps = wait_for(
        "ps shows the httpd listening",
        Duration::from_secs(30),
        || {
            let ps = expect("ps", api.get(&format!("{w}/ps")), 200);
            let listening = ps.as_array().unwrap().iter().any(|p| {
                p["command"].as_str().unwrap_or_default().contains("httpd")
                    && p["listen_sockets"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|l| l["address"].as_str().unwrap_or_default().ends_with(":8080"))
            });
            listening.then_some(ps)
        },
    )
    .unwrap();
    for proc in ps.as_array().unwrap() {
        has_fields(
            "process",
            proc,
            &[
                "pid",
                "command",
                "directory",
                "cpu",
                "rss",
                "stime",
                "rtime",
                "listen_sockets",
            ],
        );
    }
    assert!(ps.as_array().unwrap().iter().any(|p| p["pid"] == 1), "{ps}");
    let by_rss = expect(
        "ps sorted",
        api.get(&format!("{w}/ps?sort_by=rss&order=desc")),
        200,
    );
    let rss: Vec<u64> = by_rss
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rss"].as_u64().unwrap())
        .collect();
    assert!(rss.windows(2).all(|w| w[0] >= w[1]), "{rss:?}");
    // ps of a machine that is not running: 412.
    expect("ps of a created machine", api.get(&format!("{p}/ps")), 412);

    // SPEC, Machines_get_memory.
    let memory = expect("memory", api.get(&format!("{s}/memory")), 200);
    assert_eq!(memory["limit_mb"], 256, "{memory}");
    has_fields("memory", &memory, &["limit_mb", "available_mb"]);

    // SPEC, Machines_suspend: a started machine suspends (or, on a host that cannot
    // snapshot, stops: the next start cold-boots).
    expect("suspend", api.post_empty(&format!("{w}/suspend")), 200);
    let suspended = expect(
        "wait suspended",
        api.get(&format!(
            "{w}/wait?state=suspended&state=stopped&timeout=60"
        )),
        200,
    );
    assert!(
        ["suspended", "stopped"].contains(&suspended["state"].as_str().unwrap()),
        "{suspended}"
    );
    expect(
        "start after suspend",
        api.post_empty(&format!("{w}/start")),
        200,
    );
    wait_state(&api, &w, "started");

    // MACHINES, "cordon/uncordon": 200 {"ok": true}.
    assert_eq!(
        expect("cordon", api.post_empty(&format!("{w}/cordon")), 200),
        json!({"ok": true})
    );
    assert_eq!(
        expect("uncordon", api.post_empty(&format!("{w}/uncordon")), 200),
        json!({"ok": true})
    );

    // MACHINES, "Create a Machine lease": the docs' body; 201 {"status", "data"}.
    let lease = expect(
        "create lease",
        api.post(
            &format!("{w}/lease"),
            json!({"description": "", "ttl": 500}),
        ),
        201,
    );
    assert_eq!(lease["status"], "success");
    has_fields(
        "lease",
        &lease["data"],
        &["nonce", "expires_at", "owner", "description", "version"],
    );
    let nonce = lease["data"]["nonce"].as_str().unwrap().to_owned();
    // 409 while someone else holds it: another lease, or a change without the nonce.
    is_error(
        "second lease",
        &expect(
            "second lease",
            api.post(&format!("{w}/lease"), json!({"ttl": 30})),
            409,
        ),
    );
    expect(
        "stop while leased",
        api.post_empty(&format!("{w}/stop")),
        409,
    );
    // MACHINES, "Get a Machine lease".
    let current = expect("get lease", api.get(&format!("{w}/lease")), 200);
    assert_eq!(current["data"]["nonce"], nonce.as_str());
    // FLY-GO: refresh with `?ttl=` and no body, sending the nonce.
    let refreshed = expect(
        "refresh lease",
        api.call(
            "POST",
            &format!("{w}/lease?ttl=120"),
            None,
            &[("fly-machine-lease-nonce", &nonce)],
        ),
        201,
    );
    assert_eq!(refreshed["data"]["nonce"], nonce.as_str());
    expect(
        "cordon with the nonce",
        api.call(
            "POST",
            &format!("{w}/cordon"),
            None,
            &[("fly-machine-lease-nonce", &nonce)],
        ),
        200,
    );
    // MACHINES, "Release a Machine lease": 200 with Fly's body.
    let released = expect(
        "release lease",
        api.call(
            "DELETE",
            &format!("{w}/lease"),
            None,
            &[("fly-machine-lease-nonce", &nonce)],
        ),
        200,
    );
    assert_eq!(released, json!({"status": "success", "data": {"ok": true}}));
    expect("lease after release", api.get(&format!("{w}/lease")), 404);
    // FLY-GO: acquire with `?ttl=` and no body.
    let by_query = expect(
        "lease by query",
        api.post_empty(&format!("{s}/lease?ttl=30")),
        201,
    );
    let s_nonce = by_query["data"]["nonce"].as_str().unwrap().to_owned();
    expect(
        "release it",
        api.call(
            "DELETE",
            &format!("{s}/lease"),
            None,
            &[("fly-machine-lease-nonce", &s_nonce)],
        ),
        200,
    );

    // MACHINES, "Get a Machine's metadata" / "Add or update" (204) / "Delete" (204).
    assert_eq!(
        expect("metadata", api.get(&format!("{w}/metadata")), 200),
        json!({})
    );
    let set = expect(
        "set metadata",
        api.post(&format!("{w}/metadata/foo"), json!({"value": "bar"})),
        204,
    );
    assert_eq!(set, Value::Null, "204 has no body");
    // SPEC, Machines_get_metadata_key.
    assert_eq!(
        expect("metadata key", api.get(&format!("{w}/metadata/foo")), 200),
        json!({"value": "bar"})
    );
    expect(
        "missing metadata key",
        api.get(&format!("{w}/metadata/nope")),
        404,
    );
    // MACHINES, "List Machines" `metadata.{key}`.
    let by_meta = expect(
        "list ?metadata.foo",
        api.get(&format!("{machines}?metadata.foo=bar")),
        200,
    );
    assert_eq!(by_meta.as_array().unwrap().len(), 1);
    assert_eq!(by_meta[0]["id"], web_id.as_str());
    // SPEC, Machines_update_metadata_put: several keys; null removes; a stale version 412.
    expect(
        "put metadata",
        api.call(
            "PUT",
            &format!("{w}/metadata"),
            Some(json!({"metadata": {"a": "1", "b": "2", "foo": null}})),
            &[],
        ),
        204,
    );
    assert_eq!(
        expect("metadata after put", api.get(&format!("{w}/metadata")), 200),
        json!({"a": "1", "b": "2"})
    );
    expect(
        "put metadata at an old version",
        api.call(
            "PUT",
            &format!("{w}/metadata"),
            Some(json!({"metadata": {"a": "9"}, "machine_version": "01AAAAAAAAAAAAAAAAAAAAAAAA"})),
            &[],
        ),
        412,
    );
    expect(
        "delete metadata",
        api.delete(&format!("{w}/metadata/b")),
        204,
    );
    assert_eq!(
        expect(
            "metadata after delete",
            api.get(&format!("{w}/metadata")),
            200
        ),
        json!({"a": "1"})
    );

    // SPEC, Machines_list_events: newest first, `limit`.
    let events = expect("events", api.get(&format!("{s}/events")), 200);
    for e in events.as_array().unwrap() {
        has_fields("event", e, &["id", "type", "status", "source", "timestamp"]);
    }
    let two = expect(
        "events ?limit",
        api.get(&format!("{s}/events?limit=2")),
        200,
    );
    assert_eq!(two.as_array().unwrap().len(), 2);
    assert_eq!(two[0], events[0], "newest first");

    // SPEC, Machines_org_list.
    let org = expect("org machines", api.get("/v1/orgs/personal/machines"), 200);
    has_fields(
        "org machines",
        &org,
        &["machines", "last_machine_id", "last_updated_at"],
    );
    let ours: Vec<&Value> = org["machines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["app_name"] == app.as_str())
        .collect();
    assert_eq!(ours.len(), 3, "{org}");
    for m in &ours {
        has_fields(
            "org machine",
            m,
            &[
                "id",
                "name",
                "app_name",
                "state",
                "region",
                "private_ip",
                "version",
                "created_at",
                "updated_at",
            ],
        );
    }
    expect("unknown org", api.get("/v1/orgs/no-such-org/machines"), 404);

    // SPEC, Secrets_update / Secrets_list / Secret_delete.
    let secrets = format!("/v1/apps/{app}/secrets");
    let set = expect(
        "set secrets",
        api.post(
            &secrets,
            json!({"values": {"DATABASE_URL": "postgres://x", "OTHER": "y"}}),
        ),
        200,
    );
    has_fields("secrets answer", &set, &["secrets", "version"]);
    has_fields(
        "secret",
        &set["secrets"][0],
        &["name", "digest", "created_at", "updated_at"],
    );
    assert!(
        !set.to_string().contains("postgres://x"),
        "values are never shown"
    );
    let listed = expect("list secrets", api.get(&secrets), 200);
    assert_eq!(listed["version"], set["version"]);
    let deleted = expect(
        "delete secret",
        api.delete(&format!("{secrets}/OTHER")),
        200,
    );
    assert_eq!(
        deleted["version"].as_u64(),
        Some(set["version"].as_u64().unwrap() + 1)
    );
    expect(
        "delete it again",
        api.delete(&format!("{secrets}/OTHER")),
        404,
    );

    // SPEC, App_Certificates_list / _show under the app's path.
    let certs = expect(
        "certificates",
        api.get(&format!("/v1/apps/{app}/certificates")),
        200,
    );
    assert_eq!(certs, json!({"certificates": [], "total_count": 0}));
    expect(
        "unknown certificate",
        api.get(&format!("/v1/apps/{app}/certificates/shop.example.com")),
        404,
    );

    // MACHINES, "Delete a Machine permanently": a running one needs force (412 without);
    // SPEC `kill=true` kills it, then destroys it.
    is_error(
        "delete a running machine",
        &expect("delete a running machine", api.delete(&w), 412),
    );
    assert_eq!(
        expect(
            "delete ?kill=true",
            api.delete(&format!("{w}?kill=true")),
            200
        ),
        json!({"ok": true})
    );
    wait_state(&api, &w, "destroyed");
    expect(
        "delete ?force=true",
        api.delete(&format!("{s}?force=true")),
        200,
    );
    wait_state(&api, &s, "destroyed");
    expect(
        "delete the created machine (with its lease's nonce)",
        api.call(
            "DELETE",
            &p,
            None,
            &[("fly-machine-lease-nonce", parked["nonce"].as_str().unwrap())],
        ),
        200,
    );
    wait_state(&api, &p, "destroyed");
    let gone = expect(
        "list ?include_deleted after deletes",
        api.get(&format!("{machines}?include_deleted=true")),
        200,
    );
    assert_eq!(gone.as_array().unwrap().len(), 3);
    assert_eq!(
        expect("list after deletes", api.get(&machines), 200),
        json!([])
    );

    // APPS, "Delete a Fly App": 202.
    expect("delete app", api.delete(&format!("/v1/apps/{app}")), 202);
    expect("deleted app", api.get(&format!("/v1/apps/{app}")), 404);
}
