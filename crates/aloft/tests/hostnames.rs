//! End-to-end: a custom hostname belongs to the app its certificate was added to. With a real
//! server (asking a test DNS server, which says web controls the names), an agent whose edge
//! serves HTTP and HTTPS, and an app with a machine,
//! `aloft certs add shop.test --app web --cert … --key …` makes HTTPS with SNI `shop.test` and
//! HTTP with `Host: shop.test` reach the app; another app cannot claim the name; removing the
//! certificate makes the name unknown to the edge again.

use std::path::Path;
use std::time::Duration;

use aloft_testkit::edge::{curl_https, http_get, self_signed_cert, WebMachine};
use aloft_testkit::{ok, stderr, wait_for, Agent, Server};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

#[test]
fn a_custom_hostname_routes_to_the_app_it_was_added_to_until_it_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let dns = aloft_testkit::dns::TestDns::start().unwrap();
    for host in ["shop.test", "shop2.test"] {
        dns.set_txt(&format!("_aloft-challenge.{host}"), "app=web");
    }
    let server = Server::start_with(bin(), &["--dns-resolver", &dns.addr]).unwrap();
    let mut agent = Agent::start_with(
        bin(),
        &server,
        "ams",
        &dir.path().join("agent"),
        &["--https", "127.0.0.1:0"],
    )
    .unwrap();
    let http = agent
        .edge_listen_addr("http")
        .expect("the edge serves HTTP");
    let https = agent
        .edge_listen_addr("https")
        .expect("the edge serves HTTPS");
    let _web = WebMachine::run(&server, dir.path(), "web");
    ok(server.cli(&["apps", "create", "api"]));
    wait_for(
        "web answers through the edge",
        Duration::from_secs(30),
        || http_get(http, "web.localhost").filter(|(s, _)| *s == 200),
    )
    .unwrap();

    // Before: the edge knows no app for shop.test.
    let (status, body) = http_get(http, "shop.test").unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no app is configured for host shop.test"),
        "{body}"
    );

    let (cert, key) = self_signed_cert(dir.path(), "shop.test");
    let (c, k) = (cert.to_string_lossy(), key.to_string_lossy());
    let out = ok(server.cli(&[
        "certs",
        "add",
        "shop.test",
        "--app",
        "web",
        "--cert",
        &c,
        "--key",
        &k,
    ]));
    assert!(out.contains("to app web"), "{out}");

    // HTTPS by SNI (with the added certificate) and HTTP by Host reach web's machine.
    let answer = wait_for(
        "HTTPS to shop.test reaches web",
        Duration::from_secs(30),
        || Some(curl_https(https, "shop.test", &cert)).filter(|a| a.code == 0),
    )
    .unwrap();
    assert_eq!(answer.body, "hello from web\n");
    let (status, body) = wait_for(
        "HTTP to shop.test reaches web",
        Duration::from_secs(30),
        || http_get(http, "shop.test").filter(|(s, _)| *s == 200),
    )
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from web\n"));

    // The list shows the app; another app cannot claim the name.
    let list = ok(server.cli(&["certs", "list"]));
    let header = list.lines().next().unwrap_or_default();
    assert!(header.contains("APP"), "{list}");
    let row = list
        .lines()
        .find(|l| l.contains("shop.test"))
        .unwrap_or_else(|| panic!("shop.test missing from\n{list}"));
    assert!(row.split_whitespace().any(|w| w == "web"), "{row}");
    let json: Value = serde_json::from_str(&ok(server.cli(&["certs", "list", "--json"]))).unwrap();
    assert_eq!(json[0]["hostname"], "shop.test", "{json}");
    assert_eq!(json[0]["app"], "web", "{json}");
    let out = server.cli(&[
        "certs",
        "add",
        "shop.test",
        "--app",
        "api",
        "--cert",
        &c,
        "--key",
        &k,
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("belongs to app \"web\""),
        "{}",
        stderr(&out)
    );
    let (status, body) = http_get(http, "shop.test").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from web\n"));

    // The app defaults to $ALOFT_APP (or the config's `app`), as for other commands.
    let (cert2, key2) = self_signed_cert(dir.path(), "shop2.test");
    let env = [
        ("ALOFT_API_URL", server.url.as_str()),
        ("ALOFT_API_TOKEN", server.token.as_str()),
        ("ALOFT_APP", "web"),
    ];
    ok(aloft_testkit::cli(
        bin(),
        &[
            "certs",
            "add",
            "shop2.test",
            "--cert",
            &cert2.to_string_lossy(),
            "--key",
            &key2.to_string_lossy(),
        ],
        &env,
    ));
    let (status, body) = wait_for(
        "HTTP to shop2.test reaches web",
        Duration::from_secs(30),
        || http_get(http, "shop2.test").filter(|(s, _)| *s == 200),
    )
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from web\n"));

    // Removed: shop.test is unknown to the edge again (and shop2.test still routes).
    ok(server.cli(&["certs", "remove", "shop.test"]));
    let (_, body) = wait_for(
        "shop.test is unknown again",
        Duration::from_secs(30),
        || http_get(http, "shop.test").filter(|(s, _)| *s == 404),
    )
    .unwrap();
    assert!(
        body.contains("no app is configured for host shop.test"),
        "{body}"
    );
    let (status, _) = http_get(http, "shop2.test").unwrap();
    assert_eq!(status, 200);
}
