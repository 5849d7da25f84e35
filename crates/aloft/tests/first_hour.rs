//! End-to-end: a new user's first hour on a fresh `aloft dev`. In a new directory with a
//! four-line `fly.toml`, `aloft deploy --image` of an ordinary Debian image (an OCI layout of
//! Debian bookworm with Python) serves the app over HTTP and HTTPS from every city.
//!
//! The CLI reaches the control plane through this machine's loopback forwarder while the
//! region hosts reach it at its backbone address: the same steps as against a server behind
//! a tunnel, a load balancer or a VPN. What the machines run is named by the registry's
//! cluster-wide name, pinned to the pushed digest.

use std::path::Path;
use std::time::Duration;

use aloft_testkit::dev::{dev_prefix, Dev};
use aloft_testkit::{debian, stderr, stdout, wait_for};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

const FLY_TOML: &str = "app = \"debian-web\"\n\
                        primary_region = \"ams\"\n\
                        [http_service]\n\
                        internal_port = 8080\n";

#[test]
fn an_ordinary_debian_image_deploys_and_answers_http_and_https_from_every_city() {
    let layout = debian::layout().unwrap_or_else(|e| panic!("{e}"));
    let dev =
        Dev::start(bin(), &dev_prefix("fh"), "ams,iad,syd", &[]).unwrap_or_else(|e| panic!("{e}"));
    let app_dir = tempfile::tempdir().unwrap();
    std::fs::write(app_dir.path().join("fly.toml"), FLY_TOML).unwrap();
    let image = format!("{}:{}", layout.display(), debian::TAG);

    // Deploying to an app that does not exist says what to do, before anything is pushed.
    let out = dev.cli_in(app_dir.path(), &["deploy", "--image", &image]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("aloft apps create debian-web"), "{err}");
    assert!(!err.contains("Pushed"), "{err}");
    let images = dev.cli_json(&["image", "list", "--json"]);
    assert!(
        images.get("debian-web").is_none(),
        "nothing was pushed: {images}"
    );

    let out = dev.cli(&["apps", "create", "debian-web"]);
    assert!(out.status.success(), "{out:?}");
    let out = dev.cli_in(app_dir.path(), &["deploy", "--image", &image]);
    assert!(
        out.status.success(),
        "deploy failed:\n{}\n{}\n{}",
        stdout(&out),
        stderr(&out),
        dev.logs()
    );

    // The machine runs what was pushed, by the registry's cluster-wide name and digest.
    let machines = dev.cli_json(&["machine", "list", "--app", "debian-web", "--json"]);
    let machines = machines.as_array().unwrap();
    assert_eq!(machines.len(), 1, "{machines:?}");
    let pinned = machines[0]["config"]["image"].as_str().unwrap().to_owned();
    assert!(
        pinned.starts_with("registry.localhost/debian-web:deployment-")
            && pinned.contains("@sha256:"),
        "{pinned}"
    );

    // HTTP from every city.
    for city in ["ams", "iad", "syd"] {
        let page = fetch(&dev, city, &["http://debian-web.localhost/"]);
        assert_eq!(page, debian::PAGE, "from {city}");
    }

    // HTTPS from every city, verified against the cluster's root certificate.
    let ca = app_dir.path().join("ca.pem");
    let out = dev.cli(&["certs", "root", "--output", &ca.to_string_lossy()]);
    assert!(out.status.success(), "{out:?}");
    for city in ["ams", "iad", "syd"] {
        let page = fetch(
            &dev,
            city,
            &[
                "--cacert",
                &ca.to_string_lossy(),
                "https://debian-web.localhost/",
            ],
        );
        assert_eq!(page, debian::PAGE, "from {city} over HTTPS");
    }
}

/// What curl gets from a client in `city`, retried for up to a minute (the edges learn the
/// new machine through their route tables).
fn fetch(dev: &Dev, city: &str, curl_args: &[&str]) -> String {
    let mut last = String::new();
    let got = wait_for(
        &format!("an answer in {city}"),
        Duration::from_secs(60),
        || {
            let mut args = vec![
                "exec", "--from", city, "--", "curl", "-sS", "-f", "-m", "10",
            ];
            args.extend_from_slice(curl_args);
            let out = dev.dev_cmd(&args);
            if out.status.success() {
                Some(stdout(&out))
            } else {
                last = format!("{}{}", stdout(&out), stderr(&out));
                None
            }
        },
    );
    got.unwrap_or_else(|e| panic!("{e}: {last}\n{}", dev.logs()))
}
