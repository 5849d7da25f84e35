//! Custom hostnames belong to apps through their certificates: the route table lists an app's
//! proven hostnames (and its watch sends them at once), a hostname belongs to one app at a
//! time, `<app>.<domain>` only ever to its app, a custom name routes only once DNS proves the
//! app controls it, app tokens manage their own app's certificates only, deleting an app drops
//! its hostnames, and keys are sealed in the store.

mod common;

use axum::http::{Method, StatusCode};
use common::dns::TestDns;
use common::{app_field, env, env_with_dns, Env, Lines};
use serde_json::{json, Value};

/// A self-signed certificate and key (PEM) for `host`.
fn cert(host: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// `POST /v1/certs` for `host` (an exact name or `*.parent`) and `app`, with a certificate
/// valid for it.
fn add_body(host: &str, app: &str) -> Value {
    let (certificate, private_key) = cert(&host.to_ascii_lowercase());
    json!({"hostname": host, "app": app, "certificate": certificate, "private_key": private_key})
}

fn hostnames(table: &Value, app: &str) -> Value {
    app_field(table, app, "hostnames")
}

#[tokio::test]
async fn a_hostname_routes_to_the_one_app_that_holds_its_certificate() {
    let dns = TestDns::start().await;
    for (name, app) in [
        ("shop.test", "web"),
        ("order.test", "api"),
        ("wild.test", "web"),
    ] {
        dns.set_txt(&format!("_aloft-challenge.{name}"), &format!("app={app}"));
    }
    let env = env_with_dns(&dns).await;
    env.app("web").await;
    env.app("api").await;
    let mut watch = Lines::open(env.get("/v1/routes/watch?since=0")).await;
    let first = watch.next_table().await;
    assert_eq!(hostnames(&first, "web"), json!([]));

    // Added for web: the watch sends the hostname with web at once, at a newer revision.
    let (status, info) = env
        .post("/v1/certs")
        .json(add_body("Shop.Test", "web"))
        .send()
        .await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    assert_eq!(
        (&info["hostname"], &info["app"]),
        (&json!("shop.test"), &json!("web"))
    );
    let table = watch.next_table().await;
    assert!(table["revision"].as_u64() > first["revision"].as_u64());
    assert_eq!(hostnames(&table, "web"), json!(["shop.test"]));
    assert_eq!(hostnames(&table, "api"), json!([]));

    // Another app cannot claim it, with a user certificate or an ACME order.
    let (status, body) = env
        .post("/v1/certs")
        .json(add_body("shop.test", "api"))
        .send()
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("belongs to app \"web\""), "{error}");
    env.use_unreachable_acme();
    let (status, body) = env
        .post("/v1/certs/acme")
        .json(json!({"hostname": "shop.test", "app": "api"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // An unknown app is a 404; a missing app is refused.
    let (status, body) = env
        .post("/v1/certs")
        .json(add_body("new.test", "nope"))
        .send()
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = env
        .post("/v1/certs/acme")
        .json(json!({"hostname": "new.test"}))
        .send()
        .await;
    assert!(status.is_client_error(), "{status}");

    // An ACME order of a name DNS proves attaches it to its app right away (while the order
    // runs).
    let (status, body) = env
        .post("/v1/certs/acme")
        .json(json!({"hostname": "order.test", "app": "api"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["app"], "api");
    let table = watch.next_table().await;
    assert_eq!(hostnames(&table, "api"), json!(["order.test"]));

    // A wildcard hostname is routed too (the edges match it one level down).
    let (status, body) = env
        .post("/v1/certs")
        .json(add_body("*.wild.test", "web"))
        .send()
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, table) = env.get("/v1/routes").send().await;
    assert_eq!(
        hostnames(&table, "web"),
        json!(["*.wild.test", "shop.test"])
    );

    // Removed: the name no longer routes to web.
    let (status, _) = env.delete("/v1/certs/shop.test").send().await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let table = loop {
        let table = watch.next_table().await;
        if hostnames(&table, "web") == json!(["*.wild.test"]) {
            break table;
        }
    };
    assert_eq!(hostnames(&table, "api"), json!(["order.test"]));
    // Now api may take it (once DNS no longer names web).
    dns.set_txt("_aloft-challenge.shop.test", "app=api");
    let (status, body) = env
        .post("/v1/certs")
        .json(add_body("shop.test", "api"))
        .send()
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, list) = env.get("/v1/certs?app=api").send().await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["order.test", "shop.test"]);
}

/// `POST /v1/certs` of a certificate for `host` and `app` with `token`.
async fn add_as(env: &Env, token: &str, host: &str, app: &str) -> (StatusCode, Value) {
    env.post("/v1/certs")
        .token(Some(token))
        .json(add_body(host, app))
        .send()
        .await
}

#[tokio::test]
async fn app_tokens_manage_their_own_apps_certificates_only() {
    let dns = TestDns::start().await;
    let env = env_with_dns(&dns).await;
    env.app("web").await;
    env.app("api").await;
    let web = env.app_token("web").await;
    let api = env.app_token("api").await;
    let join = env.token(json!({"scope": "join"})).await;

    for (token, host, want) in [
        (&api, "shop.test", StatusCode::FORBIDDEN),
        (&web, "shop.test", StatusCode::CREATED),
        (&join, "join.test", StatusCode::FORBIDDEN),
    ] {
        let (status, body) = add_as(&env, token, host, "web").await;
        assert_eq!(status, want, "{host} for web: {body}");
    }

    // Lists: an app token sees its own app's; another app's on request is refused.
    let (status, list) = env.get("/v1/certs").token(Some(&web)).send().await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["app"], "web");
    let (status, list) = env.get("/v1/certs").token(Some(&api)).send().await;
    assert_eq!((status, list), (StatusCode::OK, json!([])));
    let (status, _) = env.get("/v1/certs?app=web").token(Some(&api)).send().await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = env.get("/v1/certs").token(Some(&join)).send().await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Show and remove follow the certificate's app.
    for (method, holder, token, want) in [
        (Method::GET, "api", &api, StatusCode::FORBIDDEN),
        (Method::GET, "web", &web, StatusCode::OK),
        (Method::DELETE, "api", &api, StatusCode::FORBIDDEN),
        (Method::DELETE, "web", &web, StatusCode::NO_CONTENT),
    ] {
        let (status, info) = env
            .call(method.clone(), "/v1/certs/shop.test")
            .token(Some(token))
            .send()
            .await;
        assert_eq!(status, want, "{method} with {holder}'s token: {info}");
        if status == StatusCode::OK {
            assert_eq!(info["app"], "web", "{info}");
        }
    }
}

#[tokio::test]
async fn deleting_an_app_removes_its_hostnames_and_certificates() {
    let dns = TestDns::start().await;
    dns.set_txt("_aloft-challenge.gone.test", "app=gone");
    dns.set_cname("kept.test", "kept.localhost");
    let env = env_with_dns(&dns).await;
    env.app("gone").await;
    env.app("kept").await;
    for (host, app) in [("gone.test", "gone"), ("kept.test", "kept")] {
        let (status, body) = env.post("/v1/certs").json(add_body(host, app)).send().await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, _) = env.delete("/v1/apps/gone").send().await;
    assert!(status.is_success(), "{status}");
    let (_, list) = env.get("/v1/certs").send().await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kept.test"]);
    let (_, tls) = env.get("/v1/edge/tls").send().await;
    let served: Vec<&str> = tls["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(served, ["kept.test"]);
    // A new app of the same name starts without the old hostname.
    env.app("gone").await;
    let (_, table) = env.get("/v1/routes").send().await;
    assert_eq!(hostnames(&table, "gone"), json!([]));
    assert_eq!(hostnames(&table, "kept"), json!(["kept.test"]));
}

#[tokio::test]
async fn certificates_stored_before_hostnames_had_apps_are_kept_and_can_be_claimed() {
    let env = env().await;
    env.app("web").await;
    let body = add_body("old.test", "web");
    // Turn the store back into its shape before the `app` column (migration 7), with a
    // certificate stored then (undoing the later migrations that cannot run twice).
    let db = env.dir.path().join("aloft.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "DROP INDEX tokens_by_id;
         ALTER TABLE tokens DROP COLUMN id;
         ALTER TABLE tokens DROP COLUMN org;
         ALTER TABLE tokens DROP COLUMN expires_at;
         ALTER TABLE tokens DROP COLUMN last_used_at;
         ALTER TABLE tokens DROP COLUMN name;
         ALTER TABLE orgs DROP COLUMN created_at;
         DROP TRIGGER apps_delete_certificates;
         ALTER TABLE edge_certificates DROP COLUMN app;
         ALTER TABLE acme_certificates DROP COLUMN app;
         ALTER TABLE edge_certificates DROP COLUMN verified;
         ALTER TABLE edge_certificates DROP COLUMN key_nonce;
         ALTER TABLE edge_certificates DROP COLUMN key_sealed;
         ALTER TABLE acme_certificates DROP COLUMN verified;
         PRAGMA user_version = 6;",
    )
    .unwrap();
    conn.execute(
        "INSERT INTO edge_certificates (hostname, certificate, private_key, fingerprint, created_at)
         VALUES ('old.test', ?1, ?2, 'f', '2026-01-01T00:00:00Z')",
        [
            body["certificate"].as_str().unwrap(),
            body["private_key"].as_str().unwrap(),
        ],
    )
    .unwrap();
    drop(conn);
    let env = common::reopen(env, std::time::Duration::from_secs(30)).await;
    // The key an older version stored in the clear is sealed now, and its bytes are gone.
    let pem_body = body["private_key"]
        .as_str()
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    for file in ["aloft.db", "aloft.db-wal"] {
        let bytes = std::fs::read(env.dir.path().join(file)).unwrap_or_default();
        assert!(
            !bytes
                .windows(pem_body.len())
                .any(|w| w == pem_body.as_bytes()),
            "{file} holds the key in the clear"
        );
    }
    // Still served, routed nowhere, listed without an app.
    let (_, list) = env.get("/v1/certs").send().await;
    assert_eq!(list[0]["hostname"], "old.test", "{list}");
    assert_eq!(list[0]["app"], Value::Null, "{list}");
    let (_, tls) = env.get("/v1/edge/tls").send().await;
    assert_eq!(tls["certificates"][0]["hostname"], "old.test", "{tls}");
    let (_, table) = env.get("/v1/routes").send().await;
    assert_eq!(hostnames(&table, "web"), json!([]));
    // An app token cannot touch it; adding it for an app claims it.
    let web = env.app_token("web").await;
    let (status, _) = env
        .delete("/v1/certs/old.test")
        .token(Some(&web))
        .send()
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, info) = env.post("/v1/certs").json(body).send().await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    assert_eq!(info["app"], "web", "{info}");
    // Claimed, but not proven (no DNS record says web controls it): not routed yet.
    assert_eq!(info["verified"], false, "{info}");
    let (_, table) = env.get("/v1/routes").send().await;
    assert_eq!(hostnames(&table, "web"), json!([]));
    // And the app's hostnames go with the app again.
    let (status, _) = env.delete("/v1/apps/web").send().await;
    assert!(status.is_success(), "{status}");
    let (_, list) = env.get("/v1/certs").send().await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn app_names_are_their_apps_and_custom_names_route_once_dns_proves_control() {
    let dns = TestDns::start().await;
    let env = env_with_dns(&dns).await;
    env.app("web").await;
    env.app("api").await;

    // <app>.<domain> (and names below it) are that app's only: 409 for any other app, with a
    // certificate or an ACME order; the app itself gets them proven at once.
    for host in ["web.localhost", "x.web.localhost", "*.web.localhost"] {
        let (status, body) = env
            .post("/v1/certs")
            .json(add_body(host, "api"))
            .send()
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{host}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("\"web\""),
            "{body}"
        );
    }
    for host in ["localhost", "*.localhost"] {
        let (status, body) = env
            .post("/v1/certs")
            .json(add_body(host, "api"))
            .send()
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{host}: {body}");
    }
    env.use_unreachable_acme();
    let (status, body) = env
        .post("/v1/certs/acme")
        .json(json!({"hostname": "web.localhost", "app": "api"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, info) = env
        .post("/v1/certs")
        .json(add_body("api.localhost", "api"))
        .send()
        .await;
    assert_eq!(
        (status, &info["verified"]),
        (StatusCode::CREATED, &json!(true)),
        "{info}"
    );

    // A custom name without DNS proof: held by web, not routed, and `check` says what to add.
    let (status, info) = env
        .post("/v1/certs")
        .json(add_body("shop.test", "web"))
        .send()
        .await;
    assert_eq!(
        (status, &info["verified"]),
        (StatusCode::CREATED, &json!(false)),
        "{info}"
    );
    let (_, table) = env.get("/v1/routes").send().await;
    assert_eq!(hostnames(&table, "web"), json!([]));
    let (_, tls) = env.get("/v1/edge/tls").send().await;
    let served: Vec<&str> = tls["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(served, ["api.localhost"], "unproven names are not served");
    let (status, body) = env.post("/v1/certs/shop.test/check").send().await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("_aloft-challenge.shop.test") && error.contains("app=web"),
        "{error}"
    );

    // Unproven, another app may take it over only by proving control itself.
    let (status, body) = env
        .post("/v1/certs")
        .json(add_body("shop.test", "api"))
        .send()
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    dns.set_txt("_aloft-challenge.shop.test", "app=web");
    let (status, info) = env
        .post("/v1/apps/web/certificates/shop.test/check")
        .send()
        .await;
    assert_eq!(
        (status, &info["verified"]),
        (StatusCode::OK, &json!(true)),
        "{info}"
    );
    let (_, table) = env.get("/v1/routes").send().await;
    assert_eq!(hostnames(&table, "web"), json!(["shop.test"]));
    // Proven by web: api gets 409 even with DNS changed to name it.
    dns.set_txt("_aloft-challenge.shop.test", "app=api");
    let (status, body) = env
        .post("/v1/certs")
        .json(add_body("shop.test", "api"))
        .send()
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // A name whose DNS names another app is refused; a CNAME to the app proves it.
    dns.set_cname("blog.test", "web.localhost");
    let (status, body) = env
        .post("/v1/certs")
        .json(add_body("blog.test", "api"))
        .send()
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, info) = env
        .post("/v1/certs")
        .json(add_body("blog.test", "web"))
        .send()
        .await;
    assert_eq!(
        (status, &info["verified"]),
        (StatusCode::CREATED, &json!(true)),
        "{info}"
    );

    // An unproven claim of api's, then web proves control: web takes it over.
    let (status, _) = env
        .post("/v1/certs")
        .json(add_body("new.test", "api"))
        .send()
        .await;
    assert_eq!(status, StatusCode::CREATED);
    dns.set_txt("_aloft-challenge.new.test", "app=web");
    let (status, info) = env
        .post("/v1/certs")
        .json(add_body("new.test", "web"))
        .send()
        .await;
    assert_eq!(
        (status, &info["app"]),
        (StatusCode::CREATED, &json!("web")),
        "{info}"
    );

    // Keys are sealed: no stored file holds an uploaded key's PEM.
    let body = add_body("sealed.test", "web");
    let (status, _) = env.post("/v1/certs").json(body.clone()).send().await;
    assert_eq!(status, StatusCode::CREATED);
    let pem_body = body["private_key"]
        .as_str()
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    for entry in std::fs::read_dir(env.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes
                    .windows(pem_body.len())
                    .any(|w| w == pem_body.as_bytes()),
                "{} holds an uploaded key in the clear",
                path.display()
            );
        }
    }
}
