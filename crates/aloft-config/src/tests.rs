//! Tests of parsing, defaults, validation, diagnostics and the machine-config mapping.

use std::time::Duration;

use super::*;

const MINIMAL: &str =
    "app = \"hello\"\nprimary_region = \"ams\"\n[http_service]\ninternal_port = 8080\n";

fn ok(text: &str) -> Loaded {
    match parse("aloft.toml", text) {
        Ok(loaded) => loaded,
        Err(e) => panic!("expected the config to parse, got:\n{e}"),
    }
}

/// The rendered error text of a config that must fail.
fn err(text: &str) -> String {
    match parse("aloft.toml", text) {
        Ok(loaded) => panic!("expected an error, got {:?}", loaded.config),
        Err(e) => e.to_string(),
    }
}

fn warnings(text: &str) -> Vec<String> {
    ok(text).warnings.iter().map(ToString::to_string).collect()
}

#[test]
fn minimal_four_line_file_parses_with_every_default() {
    let loaded = ok(MINIMAL);
    assert!(loaded.warnings.is_empty());
    let c = loaded.config;
    assert_eq!(c.app.as_deref(), Some("hello"));
    assert_eq!(c.primary_region.as_deref(), Some("ams"));
    assert_eq!(c.kill_signal, "SIGINT");
    assert_eq!(c.kill_timeout, Duration::from_secs(5));
    assert_eq!(c.deploy.strategy, Strategy::Rolling);
    assert_eq!(c.deploy.max_unavailable, MaxUnavailable::Fraction(0.33));
    assert_eq!(c.deploy.release_command_timeout, Duration::from_secs(300));
    let http = c.http_service.as_ref().unwrap();
    assert_eq!(http.internal_port, 8080);
    assert!(!http.force_https);
    assert!(http.auto_start_machines);
    assert_eq!(http.auto_stop_machines, None);
    assert_eq!(http.min_machines_running, 0);
    assert_eq!(http.concurrency.kind, ConcurrencyKind::Connections);
    assert_eq!(http.concurrency.soft_limit, 20);
    assert_eq!(http.concurrency.hard_limit, None);
    assert_eq!(c.process_groups(), vec!["app".to_owned()]);
    let guest = c.guest_for("app");
    assert_eq!(
        (guest.cpu_kind.as_str(), guest.cpus, guest.memory_mb),
        ("shared", 1, 256)
    );
    assert_eq!(c, AppConfig::minimal("hello", "ams", 8080));
}

#[test]
fn internal_port_defaults_to_8080_when_left_out() {
    let c = ok("app = \"hello\"\n[http_service]\nforce_https = true\n").config;
    assert_eq!(c.http_service.unwrap().internal_port, 8080);
}

#[test]
fn minimal_config_writes_the_four_line_file() {
    let text = AppConfig::minimal("hello", "ams", 8080).to_toml_string();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines,
        [
            "app = \"hello\"",
            "primary_region = \"ams\"",
            "[http_service]",
            "internal_port = 8080"
        ]
    );
    assert_eq!(ok(&text).config, AppConfig::minimal("hello", "ams", 8080));
    let other = AppConfig::minimal("api", "fra", 3000).to_toml_string();
    assert!(other.contains("internal_port = 3000"), "{other}");
}

// ---- diagnostics -------------------------------------------------------------------------

#[test]
fn bad_type_points_at_the_value_and_names_the_key() {
    let text = "app = \"hello\"\nprimary_region = \"ams\"\n\n[http_service]\n  force_https = true\n\n  internal_port = \"eighty\"\n";
    assert_eq!(
        err(text),
        "aloft.toml:7:19: [http_service] internal_port: expected an integer 1..=65535, found \"eighty\""
    );
    let text = "app = \"hello\"\n[http_service]\ninternal_port = \"eighty\"\n";
    assert_eq!(
        err(text),
        "aloft.toml:3:17: [http_service] internal_port: expected an integer 1..=65535, found \"eighty\""
    );
}

#[test]
fn bad_toml_syntax_is_located() {
    let e = parse("aloft.toml", "app = \"hello\"\nprimary_region = ams\n").unwrap_err();
    let d = &e.diagnostics()[0];
    assert_eq!((d.line, d.column), (2, 18));
    assert!(
        e.to_string().starts_with("aloft.toml:2:18: invalid TOML: "),
        "{e}"
    );

    let e = parse(
        "fly.toml",
        "app = \"hello\"\n[http_service\ninternal_port = 1\n",
    )
    .unwrap_err();
    let d = &e.diagnostics()[0];
    assert_eq!((d.file.as_str(), d.line), ("fly.toml", 2));

    let e = parse("aloft.toml", "app = \"a\"\napp = \"b\"\n").unwrap_err();
    assert_eq!(e.diagnostics()[0].line, 2, "{e}");
}

#[test]
fn invalid_values_are_located_at_the_value() {
    assert_eq!(
        err("app = \"hello\"\nkill_timeout = 400\n"),
        "aloft.toml:2:16: kill_timeout: expected at most 300 seconds, found 6m40s"
    );
    assert_eq!(
        err("app = \"Hello_World\"\n"),
        "aloft.toml:1:7: app: expected 2-63 lowercase letters, digits or dashes, not starting or ending with a dash, found \"Hello_World\""
    );
    assert_eq!(
        err("[[services]]\ninternal_port = 8080\n  [[services.ports]]\n  port = 70000\n"),
        "aloft.toml:4:10: [services.ports] port: expected an integer 1..=65535, found 70000"
    );
    assert_eq!(
        err("[deploy]\nstrategy = \"yolo\"\n"),
        "aloft.toml:2:12: [deploy] strategy: expected one of \"rolling\", \"immediate\", \"canary\", \"bluegreen\", found \"yolo\""
    );
}

#[test]
fn every_error_in_the_file_is_reported_in_order() {
    let text = "app = \"x\"\nkill_signal = \"SIGFOO\"\n[http_service]\ninternal_port = 0\nforce_https = \"yes\"\n";
    let e = parse("aloft.toml", text).unwrap_err();
    let located: Vec<(usize, usize)> = e.diagnostics().iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(located, [(1, 7), (2, 15), (4, 17), (5, 15)]);
    assert_eq!(e.to_string().lines().count(), 4);
}

#[test]
fn unknown_keys_warn_with_a_suggestion() {
    let w = warnings("app = \"hello\"\n\nprimary_regoin = \"ams\"\n");
    assert_eq!(
        w,
        ["aloft.toml:3:1: warning: unknown key 'primary_regoin' (did you mean 'primary_region'?)"]
    );
    let w = warnings("[http_service]\n  internal_prot = 80\n  [http_service.concurrency]\n  soft_limt = 5\n  flavour = 1\n");
    assert_eq!(
        w,
        [
            "aloft.toml:2:3: warning: unknown key 'internal_prot' (did you mean 'internal_port'?)",
            "aloft.toml:4:3: warning: unknown key 'soft_limt' (did you mean 'soft_limit'?)",
            "aloft.toml:5:3: warning: unknown key 'flavour' in [http_service.concurrency]",
        ]
    );
}

#[test]
fn fly_keys_aloft_ignores_warn_without_failing() {
    let w = warnings(
        "app = \"hello\"\nconsole_command = \"/bin/sh\"\n[experimental]\nauto_rollback = true\n",
    );
    assert_eq!(
        w,
        [
            "aloft.toml:2:1: warning: key console_command is not supported by Aloft and is ignored",
            "aloft.toml:4:1: warning: key [experimental] auto_rollback is not supported by Aloft and is ignored",
        ]
    );
}

#[test]
fn missing_required_keys_point_at_the_table() {
    assert_eq!(
        err("app = \"hello\"\n[mounts]\nsource = \"data\"\n"),
        "aloft.toml:2:1: [mounts]: missing required key 'destination'"
    );
    assert_eq!(
        err("[checks.alive]\nport = 8080\n"),
        "aloft.toml:1:1: [checks.alive]: missing required key 'type'"
    );
}

// ---- sections ----------------------------------------------------------------------------

#[test]
fn top_level_keys_and_durations() {
    let c = ok("app = \"hello\"\nkill_signal = \"SIGTERM\"\nkill_timeout = \"1m30s\"\nswap_size_mb = 512\n").config;
    assert_eq!(c.kill_signal, "SIGTERM");
    assert_eq!(c.kill_timeout, Duration::from_secs(90));
    assert_eq!(c.swap_size_mb, Some(512));
    assert_eq!(
        ok("kill_timeout = 30\n").config.kill_timeout,
        Duration::from_secs(30)
    );
    assert_eq!(
        ok("kill_timeout = \"500ms\"\n").config.kill_timeout,
        Duration::from_millis(500)
    );
    assert_eq!(
        ok("kill_timeout = \"5m\"\n").config.kill_timeout,
        Duration::from_secs(300)
    );
    assert!(err("kill_timeout = \"5 minutes\"\n").contains("expected a duration"));
    assert!(err("kill_timeout = -1\n").contains("expected a duration"));
}

#[test]
fn build_section() {
    let c = ok("[build]\nimage = \"nginx:1.25\"\ndockerfile = \"Dockerfile.prod\"\nbuild-target = \"runtime\"\n[build.args]\nNODE_VERSION = \"20\"\n").config;
    let b = c.build.unwrap();
    assert_eq!(b.image.as_deref(), Some("nginx:1.25"));
    assert_eq!(b.dockerfile.as_deref(), Some("Dockerfile.prod"));
    assert_eq!(b.build_target.as_deref(), Some("runtime"));
    assert_eq!(b.args["NODE_VERSION"], "20");
}

#[test]
fn env_is_strings_with_reserved_prefixes_refused() {
    let c = ok("[env]\nLOG_LEVEL = \"debug\"\nPORT = \"8080\"\n").config;
    assert_eq!(c.env["LOG_LEVEL"], "debug");
    assert_eq!(c.env["PORT"], "8080");
    // flyctl stringifies numbers and booleans; Aloft does too, and says so.
    let loaded = ok("[env]\nPORT = 8080\nDEBUG = true\n");
    assert_eq!(
        (
            loaded.config.env["PORT"].as_str(),
            loaded.config.env["DEBUG"].as_str()
        ),
        ("8080", "true")
    );
    let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        w,
        [
            "aloft.toml:2:8: warning: [env] PORT is 8080, not a string; using \"8080\" (quote it to silence this)",
            "aloft.toml:3:9: warning: [env] DEBUG is true, not a string; using \"true\" (quote it to silence this)",
        ]
    );
    assert_eq!(
        err("[env]\nPATHS = [\"/a\"]\n"),
        "aloft.toml:2:9: [env] PATHS: expected a string, found an array"
    );
    assert_eq!(
        err("[env]\n  FLY_REGION = \"ams\"\n"),
        "aloft.toml:2:3: [env] FLY_REGION: names starting with FLY_ or ALOFT_ are reserved for the platform"
    );
    assert!(err("[env]\nALOFT_TOKEN = \"x\"\n").contains("[env] ALOFT_TOKEN: names starting"));
}

#[test]
fn http_service_full() {
    let text = r#"
[http_service]
  internal_port = 3000
  force_https = true
  auto_stop_machines = "suspend"
  auto_start_machines = false
  min_machines_running = 2
  processes = ["app"]
  [http_service.concurrency]
    type = "requests"
    soft_limit = 50
    hard_limit = 100
  [http_service.http_options]
    h2_backend = true
    idle_timeout = 120
    response.pristine = true
    response.headers = { X-Frame-Options = "DENY" }
  [http_service.tls_options]
    alpn = ["h2", "http/1.1"]
    versions = ["TLSv1.2", "TLSv1.3"]
  [[http_service.checks]]
    grace_period = "10s"
    interval = "30s"
    timeout = "5s"
    method = "GET"
    path = "/healthz"
    protocol = "http"
    tls_skip_verify = false
    [http_service.checks.headers]
      X-Health = "1"
"#;
    let s = ok(text).config.http_service.unwrap();
    assert_eq!(s.internal_port, 3000);
    assert!(s.force_https);
    assert_eq!(s.auto_stop_machines, Some(AutoStop::Suspend));
    assert!(!s.auto_start_machines);
    assert_eq!(s.min_machines_running, 2);
    assert_eq!(s.processes, ["app"]);
    assert_eq!(
        s.concurrency,
        Concurrency {
            kind: ConcurrencyKind::Requests,
            soft_limit: 50,
            hard_limit: Some(100)
        }
    );
    let o = s.http_options.unwrap();
    assert_eq!((o.h2_backend, o.idle_timeout), (Some(true), Some(120)));
    assert_eq!(o.response.pristine, Some(true));
    assert_eq!(
        o.response.headers["X-Frame-Options"],
        ResponseHeader::Set(vec!["DENY".to_owned()])
    );
    let t = s.tls_options.unwrap();
    assert_eq!(t.alpn, ["h2", "http/1.1"]);
    assert_eq!(t.versions, ["TLSv1.2", "TLSv1.3"]);
    let c = &s.checks[0];
    assert_eq!(c.kind, CheckKind::Http);
    assert_eq!(c.grace_period, Some(Duration::from_secs(10)));
    assert_eq!(c.interval, Some(Duration::from_secs(30)));
    assert_eq!(c.timeout, Some(Duration::from_secs(5)));
    assert_eq!(
        (c.method.as_deref(), c.path.as_deref()),
        (Some("GET"), Some("/healthz"))
    );
    assert_eq!(
        (c.protocol.as_deref(), c.tls_skip_verify),
        (Some("http"), Some(false))
    );
    assert_eq!(c.headers["X-Health"], "1");
}

#[test]
fn auto_stop_accepts_words_and_booleans() {
    let parse_stop = |v: &str| {
        ok(&format!("[http_service]\nauto_stop_machines = {v}\n"))
            .config
            .http_service
            .unwrap()
            .auto_stop_machines
    };
    assert_eq!(parse_stop("true"), Some(AutoStop::Stop));
    assert_eq!(parse_stop("false"), Some(AutoStop::Off));
    assert_eq!(parse_stop("\"stop\""), Some(AutoStop::Stop));
    assert_eq!(parse_stop("\"off\""), Some(AutoStop::Off));
    assert_eq!(parse_stop("\"suspend\""), Some(AutoStop::Suspend));
    assert_eq!(
        err("[http_service]\nauto_stop_machines = \"sometimes\"\n"),
        "aloft.toml:2:22: [http_service] auto_stop_machines: expected \"off\", \"stop\", \"suspend\", true or false, found \"sometimes\""
    );
}

#[test]
fn services_with_ports_ranges_handlers_and_checks() {
    let text = r#"
[[services]]
  internal_port = 5432
  protocol = "tcp"
  auto_stop_machines = "stop"
  min_machines_running = 1
  [[services.ports]]
    port = 5432
    handlers = ["pg_tls"]
  [[services.ports]]
    start_port = 10000
    end_port = 10010
    handlers = ["proxy_proto"]
    proxy_proto_options = { version = "v2" }
  [services.concurrency]
    type = "connections"
    soft_limit = 80
    hard_limit = 100
  [[services.tcp_checks]]
    interval = "15s"
    timeout = "2s"
    grace_period = "1s"
  [[services.http_checks]]
    path = "/"
    method = "HEAD"
    protocol = "https"
    tls_skip_verify = true

[[services]]
  internal_port = 5353
  protocol = "udp"
  ports = [{ port = 53 }]
"#;
    let c = ok(text).config;
    assert_eq!(c.services.len(), 2);
    let s = &c.services[0];
    assert_eq!((s.internal_port, s.protocol), (5432, Protocol::Tcp));
    assert_eq!(s.auto_stop_machines, Some(AutoStop::Stop));
    assert!(s.auto_start_machines);
    assert_eq!(s.min_machines_running, 1);
    assert_eq!(s.ports[0].port, Some(5432));
    assert_eq!(s.ports[0].handlers, [Handler::PgTls]);
    assert_eq!(
        (s.ports[1].start_port, s.ports[1].end_port),
        (Some(10000), Some(10010))
    );
    assert_eq!(s.ports[1].handlers, [Handler::ProxyProto]);
    assert_eq!(
        s.ports[1].proxy_proto_options.as_ref().unwrap().version,
        "v2"
    );
    assert_eq!(s.concurrency.hard_limit, Some(100));
    assert_eq!(s.tcp_checks[0].kind, CheckKind::Tcp);
    assert_eq!(s.tcp_checks[0].interval, Some(Duration::from_secs(15)));
    assert_eq!(s.http_checks[0].kind, CheckKind::Http);
    assert_eq!(s.http_checks[0].protocol.as_deref(), Some("https"));
    assert_eq!(s.http_checks[0].tls_skip_verify, Some(true));
    let udp = &c.services[1];
    assert_eq!((udp.protocol, udp.ports[0].port), (Protocol::Udp, Some(53)));
    assert!(udp.ports[0].handlers.is_empty());
}

#[test]
fn port_forms_are_checked() {
    assert_eq!(
        err("[[services]]\n[[services.ports]]\nport = 80\nstart_port = 81\nend_port = 82\n"),
        "aloft.toml:2:1: [services.ports]: set either port or start_port/end_port, not both"
    );
    assert_eq!(
        err("[[services]]\n[[services.ports]]\nhandlers = [\"http\"]\n"),
        "aloft.toml:2:1: [services.ports]: missing required key 'port' (or 'start_port' and 'end_port')"
    );
    assert_eq!(
        err("[[services]]\n[[services.ports]]\nstart_port = 90\nend_port = 80\n"),
        "aloft.toml:4:12: [services.ports] end_port: end_port (80) must not be less than start_port (90)"
    );
    assert!(err("[[services]]\n[[services.ports]]\nstart_port = 90\n").contains("needs both"));
    assert!(
        err("[[services]]\ninternal_port = 0\n").contains("expected an integer 1..=65535, found 0")
    );
    assert_eq!(
        err("[[services]]\n[[services.ports]]\nport = 80\nhandlers = [\"http\", \"grpc\"]\n"),
        "aloft.toml:4:12: [services.ports] handlers: expected handlers from \"http\", \"tls\", \"pg_tls\", \"proxy_proto\", found \"grpc\""
    );
    assert!(err("[[services]]\nprotocol = \"sctp\"\n").contains("expected one of \"tcp\", \"udp\""));
    assert!(err(
        "[[services]]\n[[services.ports]]\nport = 1\nproxy_proto_options = { version = \"v3\" }\n"
    )
    .contains("[services.ports.proxy_proto_options] version"));
}

#[test]
fn soft_limit_must_not_exceed_hard_limit() {
    assert_eq!(
        err("[http_service]\n[http_service.concurrency]\nsoft_limit = 30\nhard_limit = 25\n"),
        "aloft.toml:3:14: [http_service.concurrency] soft_limit: soft_limit (30) must not be greater than hard_limit (25)"
    );
    let c = ok("[http_service]\nconcurrency = { soft_limit = 25, hard_limit = 25 }\n").config;
    assert_eq!(c.http_service.unwrap().concurrency.soft_limit, 25);
}

#[test]
fn top_level_checks_are_named() {
    let text = "[checks]\n  [checks.alive]\n    type = \"tcp\"\n    port = 8080\n    interval = \"15s\"\n    timeout = \"2s\"\n    grace_period = \"30s\"\n  [checks.ready]\n    type = \"http\"\n    port = 8080\n    path = \"/ready\"\n    method = \"get\"\n    headers = { Authorization = \"Bearer x\" }\n";
    let checks = ok(text).config.checks;
    assert_eq!(checks.len(), 2);
    assert_eq!(
        (checks["alive"].kind, checks["alive"].port),
        (CheckKind::Tcp, Some(8080))
    );
    assert_eq!(checks["alive"].grace_period, Some(Duration::from_secs(30)));
    assert_eq!(checks["ready"].path.as_deref(), Some("/ready"));
    assert_eq!(checks["ready"].headers["Authorization"], "Bearer x");
    assert!(err("[checks.x]\ntype = \"icmp\"\n").contains("expected one of \"http\", \"tcp\""));
    assert!(err("[checks.x]\ntype = \"http\"\npath = \"ready\"\n").contains("starting with '/'"));
}

#[test]
fn deploy_section() {
    let c = ok("[deploy]\nstrategy = \"immediate\"\nmax_unavailable = 2\nwait_timeout = \"10m\"\nrelease_command = \"bin/migrate\"\nrelease_command_timeout = \"2m\"\n").config;
    assert_eq!(c.deploy.strategy, Strategy::Immediate);
    assert_eq!(c.deploy.max_unavailable, MaxUnavailable::Count(2));
    assert_eq!(c.deploy.wait_timeout, Some(Duration::from_secs(600)));
    assert_eq!(c.deploy.release_command.as_deref(), Some("bin/migrate"));
    assert_eq!(c.deploy.release_command_timeout, Duration::from_secs(120));
    let c = ok("[deploy]\nmax_unavailable = 0.5\n").config;
    assert_eq!(c.deploy.max_unavailable, MaxUnavailable::Fraction(0.5));
    assert_eq!(
        ok("[deploy]\nstrategy = \"canary\"\n")
            .config
            .deploy
            .strategy,
        Strategy::Canary
    );
    assert_eq!(
        err("[deploy]\nmax_unavailable = 0\n"),
        "aloft.toml:2:19: [deploy] max_unavailable: expected a fraction between 0 and 1 or a whole number of machines, found 0"
    );
    assert!(err("[deploy]\nmax_unavailable = 1.5\n").contains("found 1.5"));
}

#[test]
fn canary_and_bluegreen_are_refused_with_mounts() {
    let mounts = "[mounts]\nsource = \"data\"\ndestination = \"/data\"\n";
    for strategy in ["canary", "bluegreen"] {
        let text = format!(
            "[deploy]\nstrategy = \"{strategy}\"\n{mounts}[[http_service.checks]]\npath = \"/\"\n"
        );
        assert!(
            err(&text).contains(&format!(
                "aloft.toml:2:12: [deploy] strategy: the {strategy} strategy cannot be used with [mounts]"
            )),
            "{strategy}"
        );
    }
    let text = format!("[deploy]\nstrategy = \"rolling\"\n{mounts}");
    assert_eq!(ok(&text).config.mounts.len(), 1);
}

#[test]
fn bluegreen_needs_a_service_check() {
    let e = err("[deploy]\nstrategy = \"bluegreen\"\n[http_service]\n[checks.alive]\ntype = \"tcp\"\nport = 8080\n");
    assert!(e.starts_with("aloft.toml:2:12: [deploy] strategy: the bluegreen strategy needs at least one service health check"), "{e}");
    for checks in [
        "[http_service]\n[[http_service.checks]]\npath = \"/\"\n",
        "[[services]]\nports = [{port = 80}]\n[[services.tcp_checks]]\n",
        "[[services]]\nports = [{port = 80}]\n[[services.http_checks]]\npath = \"/\"\n",
    ] {
        let c = ok(&format!("[deploy]\nstrategy = \"bluegreen\"\n{checks}")).config;
        assert_eq!(c.deploy.strategy, Strategy::Bluegreen);
    }
}

#[test]
fn processes_must_exist_when_declared() {
    let head = "[processes]\nweb = \"bin/web\"\nworker = \"bin/worker\"\n";
    for section in [
        "[http_service]\nprocesses = [\"api\"]\n",
        "[[services]]\nprocesses = [\"api\"]\nports = [{port = 80}]\n",
        "[[vm]]\nprocesses = [\"api\"]\n",
        "[mounts]\nsource = \"d\"\ndestination = \"/d\"\nprocesses = [\"api\"]\n",
        "[[restart]]\nprocesses = [\"api\"]\n",
    ] {
        let e = err(&format!("{head}{section}"));
        assert!(
            e.contains("process group 'api' is not defined in [processes] (web, worker)"),
            "{e}"
        );
    }
    // Without [processes] any name is accepted, as flyctl does for the implicit `app` group.
    ok("[http_service]\nprocesses = [\"app\"]\n");
    assert!(err("[processes]\nweb = \"bin/web 'unterminated\"\n").contains("could not split"));
}

#[test]
fn mounts_as_table_or_array() {
    let c = ok("[mounts]\nsource = \"data\"\ndestination = \"/data\"\ninitial_size = \"10gb\"\n")
        .config;
    let m = &c.mounts[0];
    assert_eq!(
        (m.source.as_str(), m.destination.as_str()),
        ("data", "/data")
    );
    assert_eq!((m.initial_size_gb, m.snapshot_retention), (Some(10), 5));
    let c = ok("[processes]\na = \"x\"\nb = \"y\"\n[[mounts]]\nsource = \"one\"\ndestination = \"/one\"\nprocesses = [\"a\"]\ninitial_size = 3\nsnapshot_retention = 14\n[[mounts]]\nsource = \"two\"\ndestination = \"/two\"\nprocesses = [\"b\"]\n").config;
    assert_eq!(c.mounts.len(), 2);
    assert_eq!(
        (c.mounts[0].initial_size_gb, c.mounts[0].snapshot_retention),
        (Some(3), 14)
    );
    assert!(err("[mounts]\nsource = \"d\"\ndestination = \"data\"\n")
        .contains("expected an absolute path"));
    assert!(
        err("[mounts]\nsource = \"d\"\ndestination = \"/d\"\ninitial_size = \"big\"\n")
            .contains("[mounts] initial_size")
    );
}

#[test]
fn vm_sizes_memory_and_overrides() {
    let c = ok("[[vm]]\nsize = \"performance-2x\"\n").config;
    let g = c.guest_for("app");
    assert_eq!(
        (g.cpu_kind.as_str(), g.cpus, g.memory_mb),
        ("performance", 2, 4096)
    );
    let c = ok("[vm]\nsize = \"shared-cpu-2x\"\nmemory = \"1gb\"\n").config;
    assert_eq!(c.guest_for("app").memory_mb, 1024);
    assert_eq!(c.guest_for("app").cpus, 2);
    let c = ok("[[vm]]\nmemory = 2048\ncpus = 4\ncpu_kind = \"performance\"\n").config;
    let g = c.guest_for("app");
    assert_eq!(
        (g.cpu_kind.as_str(), g.cpus, g.memory_mb),
        ("performance", 4, 2048)
    );
    assert_eq!(
        ok("[[vm]]\nmemory = \"512mb\"\n").config.vm[0].memory_mb,
        Some(512)
    );
    assert_eq!(
        ok("[[vm]]\nmemory_mb = 768\n").config.vm[0].memory_mb,
        Some(768)
    );
    let e = err("[[vm]]\nsize = \"shared-cpu-3x\"\n");
    assert!(e.starts_with("aloft.toml:2:8: [vm] size: unknown size \"shared-cpu-3x\"; expected one of shared-cpu-1x, shared-cpu-2x"), "{e}");
    assert!(err("[[vm]]\nmemory = \"lots\"\n").contains("[vm] memory: expected a size"));
    assert!(err("[[vm]]\nmemory = \"1gb\"\nmemory_mb = 1024\n").contains("not both"));
    assert!(err("[[vm]]\ncpu_kind = \"gpu\"\n").contains("[vm] cpu_kind"));
}

#[test]
fn restart_metrics_and_statics() {
    let c = ok("[[restart]]\npolicy = \"always\"\n[[restart]]\npolicy = \"on-failure\"\nretries = 3\n[metrics]\nport = 9091\npath = \"/metrics\"\n[[statics]]\nguest_path = \"/app/public\"\nurl_prefix = \"/static\"\n").config;
    assert_eq!(c.restart[0].policy, RestartPolicy::Always);
    assert_eq!(
        (c.restart[1].policy, c.restart[1].retries),
        (RestartPolicy::OnFailure, Some(3))
    );
    assert_eq!(
        (c.metrics[0].port, c.metrics[0].path.as_str()),
        (9091, "/metrics")
    );
    assert_eq!(c.statics[0].guest_path.as_deref(), Some("/app/public"));
    assert_eq!(
        ok("[[restart]]\nretries = 1\n").config.restart[0].policy,
        RestartPolicy::OnFailure
    );
    assert!(err("[[restart]]\npolicy = \"sometimes\"\n").contains("[restart] policy"));
}

// ---- a real-world file -------------------------------------------------------------------

const REAL_WORLD: &str = r#"
# fly.toml app configuration file for a Rails-style app.
app = "shop-prod"
primary_region = "ams"
kill_signal = "SIGTERM"
kill_timeout = "30s"
console_command = "bin/rails console"

[build]
  dockerfile = "Dockerfile"

[env]
  RAILS_ENV = "production"
  PORT = "3000"

[processes]
  app = "bin/rails server -b 0.0.0.0 -p 3000"
  worker = "bundle exec sidekiq -C 'config/sidekiq.yml'"
  cron = "supercronic /app/crontab"

[http_service]
  internal_port = 3000
  force_https = true
  auto_stop_machines = "stop"
  auto_start_machines = true
  min_machines_running = 1
  processes = ["app"]

  [http_service.concurrency]
    type = "requests"
    soft_limit = 200
    hard_limit = 250

  [[http_service.checks]]
    grace_period = "10s"
    interval = "30s"
    method = "GET"
    timeout = "5s"
    path = "/up"

[[services]]
  protocol = "tcp"
  internal_port = 9394
  processes = ["worker"]

  [[services.ports]]
    port = 9394
    handlers = ["tls"]

  [[services.tcp_checks]]
    interval = "15s"
    timeout = "2s"

[checks]
  [checks.sidekiq]
    type = "tcp"
    port = 9394
    interval = "30s"
    timeout = "5s"
    processes = ["worker"]

[deploy]
  release_command = "bin/rails db:prepare"
  strategy = "rolling"
  max_unavailable = 1

[mounts]
  source = "storage"
  destination = "/rails/storage"
  initial_size = "5gb"
  processes = ["app"]

[[vm]]
  size = "shared-cpu-2x"
  memory = "1gb"

[[vm]]
  size = "performance-1x"
  processes = ["worker"]

[[restart]]
  policy = "always"
  processes = ["worker"]

[[statics]]
  guest_path = "/rails/public"
  url_prefix = "/"
"#;

#[test]
fn real_world_fly_toml_parses() {
    let loaded = ok(REAL_WORLD);
    let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        w,
        ["aloft.toml:7:1: warning: key console_command is not supported by Aloft and is ignored"]
    );
    let c = loaded.config;
    assert_eq!(c.app.as_deref(), Some("shop-prod"));
    assert_eq!(c.kill_timeout, Duration::from_secs(30));
    assert_eq!(c.process_groups(), ["app", "cron", "worker"]);
    assert_eq!(c.default_process_group(), "app");
    assert_eq!(c.services[0].processes, ["worker"]);
    assert_eq!(c.checks["sidekiq"].processes, ["worker"]);
    assert_eq!(c.deploy.max_unavailable, MaxUnavailable::Count(1));
    assert_eq!(c.mounts[0].initial_size_gb, Some(5));
    assert_eq!(
        c.command_for("worker").unwrap(),
        ["bundle", "exec", "sidekiq", "-C", "config/sidekiq.yml"]
    );
}

#[test]
fn configs_round_trip_through_toml() {
    for text in [
        MINIMAL,
        REAL_WORLD,
        include_str!("../../../examples/aloft.toml"),
    ] {
        let config = ok(text).config;
        let written = config.to_toml_string();
        let again = ok(&written);
        assert!(again.warnings.is_empty(), "{written}");
        assert_eq!(again.config, config, "{written}");
    }
}

#[test]
fn checked_in_example_parses_without_warnings() {
    let loaded = ok(include_str!("../../../examples/aloft.toml"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert!(c.http_service.is_some());
    assert!(!c.processes.is_empty());
    assert!(!c.machine_configs("registry.local/hello:1").is_empty());
}

// ---- machine configs ---------------------------------------------------------------------

#[test]
fn minimal_config_maps_to_one_machine_with_http_and_https_ports() {
    let configs = ok(MINIMAL)
        .config
        .machine_configs("registry.local/hello@sha256:abc");
    assert_eq!(configs.keys().collect::<Vec<_>>(), ["app"]);
    let m = serde_json::to_value(&configs["app"]).unwrap();
    let expected = serde_json::json!({
        "image": "registry.local/hello@sha256:abc",
        "env": {"PRIMARY_REGION": "ams"},
        "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
        "services": [{
            "protocol": "tcp",
            "internal_port": 8080,
            "autostart": true,
            "min_machines_running": 0,
            "ports": [
                {"port": 80, "handlers": ["http"]},
                {"port": 443, "handlers": ["tls", "http"]}
            ],
            "concurrency": {"type": "connections", "soft_limit": 20}
        }],
        "metadata": {"fly_platform_version": "v2", "fly_process_group": "app"},
        "stop_config": {"timeout": "5s", "signal": "SIGINT"}
    });
    assert_eq!(m, expected);
}

#[test]
fn real_world_config_maps_to_one_machine_per_group() {
    let c = ok(REAL_WORLD).config;
    let configs = c.machine_configs("img");
    assert_eq!(
        configs.keys().collect::<Vec<_>>(),
        ["app", "cron", "worker"]
    );

    let app = &configs["app"];
    assert_eq!(app.metadata.as_ref().unwrap()["fly_process_group"], "app");
    assert_eq!(
        app.init.as_ref().unwrap().cmd.as_deref().unwrap(),
        ["bin/rails", "server", "-b", "0.0.0.0", "-p", "3000"]
    );
    let services = app.services.as_ref().unwrap();
    assert_eq!(services.len(), 1);
    let http = &services[0];
    assert_eq!(http.internal_port, 3000);
    assert_eq!(http.autostop, Some(serde_json::json!(true)));
    let ports = http.ports.as_ref().unwrap();
    assert_eq!(
        (ports[0].port, ports[0].force_https),
        (Some(80), Some(true))
    );
    assert_eq!(ports[1].handlers.as_deref().unwrap(), ["tls", "http"]);
    let check = &http.checks.as_ref().unwrap()[0];
    assert_eq!(check.path.as_deref(), Some("/up"));
    assert_eq!(check.interval, Some(serde_json::json!("30s")));
    assert_eq!(http.concurrency.as_ref().unwrap().hard_limit, Some(250));
    let guest = app.guest.as_ref().unwrap();
    assert_eq!((guest.cpus, guest.memory_mb), (2, 1024));
    assert_eq!(app.mounts.as_ref().unwrap()[0]["path"], "/rails/storage");
    assert!(app.checks.is_none());
    assert!(app.restart.is_none());
    let stop = app.stop_config.as_ref().unwrap();
    assert_eq!(
        (stop.signal.as_deref(), stop.timeout.clone()),
        (Some("SIGTERM"), Some(serde_json::json!("30s")))
    );
    assert_eq!(app.env.as_ref().unwrap()["RAILS_ENV"], "production");

    let worker = &configs["worker"];
    let services = worker.services.as_ref().unwrap();
    assert_eq!((services.len(), services[0].internal_port), (1, 9394));
    assert_eq!(
        services[0].checks.as_ref().unwrap()[0].kind.as_deref(),
        Some("tcp")
    );
    let guest = worker.guest.as_ref().unwrap();
    assert_eq!(
        (guest.cpu_kind.as_str(), guest.cpus, guest.memory_mb),
        ("performance", 1, 2048)
    );
    assert_eq!(
        worker.restart.as_ref().unwrap().policy.as_deref(),
        Some("always")
    );
    assert_eq!(worker.checks.as_ref().unwrap()["sidekiq"].port, Some(9394));
    assert!(worker.mounts.is_none());

    let cron = &configs["cron"];
    assert!(cron.services.is_none());
    assert!(cron.mounts.is_none());
    assert_eq!(
        cron.init.as_ref().unwrap().cmd.as_deref().unwrap(),
        ["supercronic", "/app/crontab"]
    );
    // The [[vm]] without processes covers every group without its own entry.
    assert_eq!(cron.guest.as_ref().unwrap().memory_mb, 1024);
}

#[test]
fn sections_without_processes_go_to_the_default_group() {
    let c = ok("[processes]\nweb = \"w\"\nworker = \"k\"\n[http_service]\n[[restart]]\npolicy = \"never\"\n").config;
    assert_eq!(c.default_process_group(), "web");
    let configs = c.machine_configs("img");
    assert!(configs["web"].services.is_some());
    assert!(configs["worker"].services.is_none());
    for group in ["web", "worker"] {
        assert_eq!(
            configs[group].restart.as_ref().unwrap().policy.as_deref(),
            Some("no")
        );
    }
}

#[test]
fn service_options_map_onto_ports() {
    let text = "[http_service]\nauto_stop_machines = \"suspend\"\n[http_service.http_options]\nh2_backend = true\n[http_service.tls_options]\nalpn = [\"h2\"]\n[[services]]\ninternal_port = 25\n[[services.ports]]\nstart_port = 2500\nend_port = 2510\nhandlers = [\"proxy_proto\"]\nproxy_proto_options = { version = \"v2\" }\n";
    let m = &ok(text).config.machine_configs("img")["app"];
    let v = serde_json::to_value(m.services.as_ref().unwrap()).unwrap();
    assert_eq!(v[0]["autostop"], "suspend");
    assert_eq!(
        v[0]["ports"][0]["http_options"],
        serde_json::json!({"h2_backend": true})
    );
    assert!(v[0]["ports"][0].get("tls_options").is_none());
    assert_eq!(
        v[0]["ports"][1]["tls_options"],
        serde_json::json!({"alpn": ["h2"]})
    );
    assert_eq!(v[1]["ports"][0]["start_port"], 2500);
    assert_eq!(v[1]["ports"][0]["proxy_proto_options"]["version"], "v2");
}

#[test]
fn swap_and_check_headers_map_to_fly_shapes() {
    let text = "swap_size_mb = 512\n[checks.ready]\ntype = \"http\"\nport = 8080\npath = \"/\"\nheaders = { X-Probe = \"1\" }\nprotocol = \"https\"\ntls_skip_verify = true\n";
    let m = &ok(text).config.machine_configs("img")["app"];
    assert_eq!(m.init.as_ref().unwrap().swap_size_mb, Some(512));
    let check = serde_json::to_value(&m.checks.as_ref().unwrap()["ready"]).unwrap();
    assert_eq!(
        check,
        serde_json::json!({
            "type": "http", "port": 8080, "path": "/",
            "headers": [{"name": "X-Probe", "values": ["1"]}],
            "protocol": "https", "tls_skip_verify": true
        })
    );
}

// ---- loading from a directory ------------------------------------------------------------

#[test]
fn load_dir_prefers_aloft_toml_and_falls_back_to_fly_toml() {
    let dir = tempfile::tempdir().unwrap();
    match load_dir(dir.path()) {
        Err(ConfigError::NotFound { dir: d }) => assert_eq!(d, dir.path()),
        other => panic!("expected NotFound, got {other:?}"),
    }
    std::fs::write(dir.path().join("fly.toml"), "app = \"from-fly\"\n").unwrap();
    let loaded = load_dir(dir.path()).unwrap();
    assert_eq!(loaded.config.app.as_deref(), Some("from-fly"));
    assert_eq!(loaded.path, dir.path().join("fly.toml"));

    std::fs::write(
        dir.path().join("aloft.toml"),
        "app = \"from-aloft\"\nkill_timeout = true\n",
    )
    .unwrap();
    let e = load_dir(dir.path()).unwrap_err();
    let expected = format!(
        "{}:2:16: kill_timeout: expected a duration such as \"10s\", \"1m30s\" or \"500ms\", or whole seconds, found true",
        dir.path().join("aloft.toml").display()
    );
    assert_eq!(e.to_string(), expected);

    std::fs::write(dir.path().join("aloft.toml"), "app = \"from-aloft\"\n").unwrap();
    assert_eq!(
        load_dir(dir.path()).unwrap().config.app.as_deref(),
        Some("from-aloft")
    );
}

// ---- edge cases --------------------------------------------------------------------------

#[test]
fn a_group_can_mount_only_one_volume() {
    let e = err("[[mounts]]\nsource = \"a\"\ndestination = \"/a\"\n[[mounts]]\nsource = \"b\"\ndestination = \"/b\"\n");
    assert_eq!(
        e,
        "aloft.toml:4:1: [mounts]: process group 'app' already mounts volume 'a'; a machine can mount only one volume"
    );
    let e = err("[processes]\nweb = \"w\"\n[[mounts]]\nsource = \"a\"\ndestination = \"/a\"\n[[mounts]]\nsource = \"b\"\ndestination = \"/b\"\nprocesses = [\"web\"]\n");
    assert!(
        e.contains("process group 'web' already mounts volume 'a'"),
        "{e}"
    );
}

#[test]
fn service_check_type_must_match_its_section() {
    ok("[[services]]\nports = [{port = 80}]\n[[services.tcp_checks]]\ntype = \"tcp\"\n");
    assert_eq!(
        err("[[services]]\nports = [{port = 80}]\n[[services.tcp_checks]]\ntype = \"http\"\n"),
        "aloft.toml:4:8: [services.tcp_checks] type: expected one of \"tcp\", found \"http\""
    );
}

#[test]
fn dotted_and_inline_tables_are_located_too() {
    assert_eq!(
        err("app = \"hello\"\nhttp_service.internal_port = \"x\"\n"),
        "aloft.toml:2:30: [http_service] internal_port: expected an integer 1..=65535, found \"x\""
    );
    assert_eq!(
        err("[http_service]\nconcurrency = { type = \"requests\", soft_limit = \"many\" }\n"),
        "aloft.toml:2:49: [http_service.concurrency] soft_limit: expected an integer of at least 1, found \"many\""
    );
    assert_eq!(
        err("[[services]]\nports = [{ port = 80 }, 443]\n"),
        "aloft.toml:2:25: [services] ports: expected a table, found 443"
    );
}

#[test]
fn wrong_section_shapes_are_errors() {
    assert_eq!(
        err("http_service = 8080\n"),
        "aloft.toml:1:16: http_service: expected a table, found 8080"
    );
    assert_eq!(
        err("services = \"web\"\n"),
        "aloft.toml:1:12: services: expected a table or an array of tables, found \"web\""
    );
    assert_eq!(
        err("env = [\"A=1\"]\n"),
        "aloft.toml:1:7: env: expected a table, found an array"
    );
}

#[test]
fn crlf_files_and_comments_keep_positions() {
    let text = "# comment\r\napp = \"hello\"\r\n[http_service]\r\ninternal_port = true\r\n";
    assert_eq!(
        err(text),
        "aloft.toml:4:17: [http_service] internal_port: expected an integer 1..=65535, found true"
    );
}

#[test]
fn empty_file_is_a_valid_config_with_defaults() {
    let c = ok("").config;
    assert_eq!(c.app, None);
    assert_eq!(c.http_service, None);
    assert_eq!(c.kill_timeout, Duration::from_secs(5));
    let configs = c.machine_configs("img");
    assert_eq!(configs["app"].services, None);
    assert_eq!(configs["app"].env, None);
}

#[test]
fn app_names_follow_the_dns_label_rules() {
    for good in ["ab", "hello-world", "a1", &"a".repeat(63)] {
        assert!(valid_app_name(good), "{good}");
    }
    for bad in [
        "a",
        "-ab",
        "ab-",
        "Hello",
        "a_b",
        "a.b",
        &"a".repeat(64),
        "",
    ] {
        assert!(!valid_app_name(bad), "{bad}");
    }
}

#[test]
fn build_target_with_an_underscore_gets_a_suggestion() {
    assert_eq!(
        warnings("[build]\nbuild_target = \"x\"\n"),
        ["aloft.toml:2:1: warning: unknown key 'build_target' (did you mean 'build-target'?)"]
    );
}

// ---- old fly.toml forms ------------------------------------------------------------------

#[test]
fn old_fly_toml_forms_are_read_as_flyctl_reads_them() {
    let text = r#"
app = "toly-gpt"
kill_signal = "SIGINT"
kill_timeout = 5
processes = []

[env]
  PORT = "8080"

[experimental]
  auto_rollback = true

[[services]]
  http_checks = []
  internal_port = "8080"
  processes = ["app"]
  protocol = "tcp"
  script_checks = []
  concurrency = "20,25"

  [[services.ports]]
    force_https = true
    handlers = ["http"]
    port = "80"

  [[services.tcp_checks]]
    grace_period = "1s"
    interval = 15000
    restart_limit = 0
    timeout = 2000

[mount]
  source = "data"
  destination = "/data"
"#;
    let loaded = ok(text);
    let c = &loaded.config;
    assert!(c.processes.is_empty());
    assert_eq!(c.kill_timeout, Duration::from_secs(5));
    let s = &c.services[0];
    assert_eq!((s.internal_port, s.ports[0].port), (8080, Some(80)));
    assert_eq!(
        s.concurrency,
        Concurrency {
            kind: ConcurrencyKind::Requests,
            soft_limit: 20,
            hard_limit: Some(25)
        }
    );
    let check = &s.tcp_checks[0];
    assert_eq!(check.interval, Some(Duration::from_secs(15)));
    assert_eq!(check.timeout, Some(Duration::from_secs(2)));
    assert_eq!(check.grace_period, Some(Duration::from_secs(1)));
    assert_eq!(c.mounts[0].source, "data");
    let w: Vec<&str> = loaded.warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(
        w,
        [
            "key [experimental] auto_rollback is not supported by Aloft and is ignored",
            "key [services] script_checks is not supported by Aloft and is ignored",
            "key [services.tcp_checks] restart_limit is not supported by Aloft and is ignored",
        ]
    );
    assert!(err("[[services]]\nconcurrency = \"lots\"\n")
        .contains("expected a table or \"soft,hard\" limits"));
    assert!(err("[[services]]\nconcurrency = \"30,20\"\n").contains("found \"30,20\""));
}

#[test]
fn experimental_commands_become_the_machine_init() {
    let text =
        "[experimental]\ncmd = [\"serve\", \"--port\", \"8080\"]\nentrypoint = \"/bin/app\"\n";
    let c = ok(text).config;
    assert_eq!(c.experimental.entrypoint, ["/bin/app"]);
    let init = c.machine_configs("img")["app"].init.clone().unwrap();
    assert_eq!(init.cmd.unwrap(), ["serve", "--port", "8080"]);
    assert_eq!(init.entrypoint.unwrap(), ["/bin/app"]);
    // A [processes] command wins over experimental.cmd.
    let c = ok(&format!("{text}[processes]\napp = \"worker --fast\"\n")).config;
    let init = c.machine_configs("img")["app"].init.clone().unwrap();
    assert_eq!(init.cmd.unwrap(), ["worker", "--fast"]);
}

#[test]
fn process_names_without_a_processes_table_warn_unless_app() {
    assert!(warnings("[http_service]\nprocesses = [\"app\"]\n").is_empty());
    assert_eq!(
        warnings("[http_service]\nprocesses = [\"web\"]\n"),
        ["aloft.toml:2:13: warning: [http_service] processes names process group 'web', but without [processes] the only group is 'app'"]
    );
}

#[test]
fn check_durations_take_milliseconds_and_other_durations_seconds() {
    let c =
        ok("[checks.a]\ntype = \"tcp\"\nport = 1\ninterval = 500\n[deploy]\nwait_timeout = 120\n")
            .config;
    assert_eq!(c.checks["a"].interval, Some(Duration::from_millis(500)));
    assert_eq!(c.deploy.wait_timeout, Some(Duration::from_secs(120)));
    assert!(err("[checks.a]\ntype = \"tcp\"\ninterval = -1\n")
        .contains("or whole milliseconds, found -1"));
}

#[test]
fn response_headers_can_set_several_values_or_remove() {
    let text = "[http_service]\n[http_service.proxy_proto_options]\nversion = \"v2\"\n[http_service.http_options]\ncompress = true\n[http_service.http_options.response.headers]\nfly-request-id = false\nx-one = \"1\"\nx-many = [\"a\", \"b\"]\n";
    let loaded = ok(text);
    let w: Vec<&str> = loaded.warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(
        w,
        ["key [http_service.http_options] compress is not supported by Aloft and is ignored"]
    );
    let s = loaded.config.http_service.clone().unwrap();
    let headers = &s.http_options.as_ref().unwrap().response.headers;
    assert_eq!(headers["fly-request-id"], ResponseHeader::Remove);
    assert_eq!(
        headers["x-many"],
        ResponseHeader::Set(vec!["a".to_owned(), "b".to_owned()])
    );
    let m = &loaded.config.machine_configs("img")["app"];
    let ports =
        serde_json::to_value(m.services.as_ref().unwrap()[0].ports.as_ref().unwrap()).unwrap();
    for port in [&ports[0], &ports[1]] {
        assert_eq!(
            port["http_options"]["response"]["headers"],
            serde_json::json!({"fly-request-id": false, "x-many": ["a", "b"], "x-one": "1"})
        );
        assert_eq!(port["proxy_proto_options"]["version"], "v2");
    }
    assert_eq!(
        err("[http_service.http_options.response.headers]\nx = 1\n"),
        "aloft.toml:2:5: [http_service.http_options.response.headers] x: expected a string, an array of strings or false, found 1"
    );
}

#[test]
fn two_services_of_one_group_cannot_share_a_public_port() {
    assert_eq!(
        err("[http_service]\n[[services]]\ninternal_port = 9000\n[[services.ports]]\nport = 443\n"),
        "aloft.toml:4:1: [services.ports]: port 443 is already served by [http_service] for process group 'app'"
    );
    let e = err("[[services]]\ninternal_port = 1\nports = [{ start_port = 100, end_port = 200 }]\n[[services]]\ninternal_port = 2\nports = [{ port = 150 }]\n");
    assert_eq!(
        e,
        "aloft.toml:6:10: [services.ports]: port 150 is already served by the [[services]] entry for internal port 1 for process group 'app'"
    );
    // Different groups, or TCP and UDP, may use the same port.
    ok("[processes]\nweb = \"w\"\nadmin = \"a\"\n[http_service]\nprocesses = [\"web\"]\n[[services]]\nprocesses = [\"admin\"]\nports = [{ port = 443 }]\n");
    ok("[[services]]\nports = [{ port = 53 }]\n[[services]]\nprotocol = \"udp\"\nports = [{ port = 53 }]\n");
}

#[test]
fn every_truncation_of_the_example_parses_or_fails_with_a_position_inside_the_text() {
    let text = include_str!("../../../examples/aloft.toml");
    let line_count = text.lines().count() + 1;
    let mut failures = 0;
    for (offset, _) in text.char_indices() {
        let prefix = &text[..offset];
        if let Err(e) = parse("aloft.toml", prefix) {
            failures += 1;
            assert!(!e.diagnostics().is_empty(), "{offset}: {e}");
            for d in e.diagnostics() {
                assert!(d.line >= 1 && d.line <= line_count, "{offset}: {d}");
                assert!(d.column >= 1, "{offset}: {d}");
                assert!(!d.message.is_empty(), "{offset}: {d}");
            }
        }
    }
    // Cutting a file mid-value must be caught somewhere, not silently accepted everywhere.
    assert!(failures > 0);
}
