//! End-to-end: `aloft server --ip-pool` and `aloft ips allocate-v4/allocate-v6/list/release`
//! against the real binary (no agent needed).

use std::path::Path;

use aloft_testkit::{ok, stderr, Server};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

#[test]
fn ips_are_allocated_listed_and_released_from_the_servers_pools() {
    let server = Server::start_with(
        bin(),
        &[
            "--ip-pool",
            "203.0.113.0/29",
            "--ip-pool",
            "2001:db8:1::/120",
        ],
    )
    .unwrap();
    ok(server.cli(&["apps", "create", "web"]));

    let out = ok(server.cli(&["ips", "allocate-v4", "--app", "web"]));
    assert!(out.contains("203.0.113.1"), "{out}");
    let out = ok(server.cli(&["ips", "allocate-v6", "-a", "web"]));
    assert!(out.contains("2001:db8:1::"), "{out}");

    let out = ok(server.cli(&["ips", "list", "--app", "web"]));
    assert!(out.contains("203.0.113.1") && out.contains("v6"), "{out}");
    let list: Value =
        serde_json::from_str(&ok(server.cli(&["ips", "list", "--app", "web", "--json"]))).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(list[0]["type"], "v4");

    ok(server.cli(&["ips", "release", "203.0.113.1", "--app", "web"]));
    let out = server.cli(&["ips", "release", "203.0.113.1", "--app", "web"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds no address"),
        "{}",
        stderr(&out)
    );
    let list: Value =
        serde_json::from_str(&ok(server.cli(&["ips", "list", "--app", "web", "--json"]))).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}

#[test]
fn a_bad_ip_pool_stops_the_server_naming_the_flag() {
    let out = aloft_testkit::cli(bin(), &["server", "--ip-pool", "203.0.113.5/29"], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--ip-pool") && err.contains("203.0.113.5/29"),
        "{err}"
    );
}
