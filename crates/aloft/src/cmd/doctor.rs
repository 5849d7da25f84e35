//! `aloft doctor`: checks, in order, what the CLI needs to work, and says what to fix for each
//! check that fails: a token, a control plane that answers and takes the token, live hosts,
//! the registry taking the token, and DNS for the app's name under the cluster's domain.

use clap::Args;
use serde::Serialize;

use crate::context;
use crate::output::{self, Paint, Stream};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The app whose name to look up in DNS (default: `app` of the config here).
    #[arg(long, short)]
    pub app: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Ok,
    Fail,
    Skipped,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    outcome: Outcome,
    detail: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: String) -> Check {
        Check {
            name,
            outcome: Outcome::Ok,
            detail,
            fix: None,
        }
    }

    fn fail(name: &'static str, detail: String, fix: String) -> Check {
        Check {
            name,
            outcome: Outcome::Fail,
            detail,
            fix: Some(fix),
        }
    }

    fn skipped(name: &'static str, detail: String) -> Check {
        Check {
            name,
            outcome: Outcome::Skipped,
            detail,
            fix: None,
        }
    }
}

/// A failed doctor run: the checks said what failed, so the error only counts them.
#[derive(Debug, thiserror::Error)]
#[error("{0} check(s) failed")]
pub struct DoctorFailed(usize);

pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let checks = checks(args.app).await;
    if args.json {
        output::json(&checks)?;
    } else {
        for c in &checks {
            print(c);
        }
    }
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    if failed > 0 {
        return Err(DoctorFailed(failed).into());
    }
    if !args.json {
        println!("Everything checked is fine");
    }
    Ok(())
}

fn print(c: &Check) {
    let (word, paint) = match c.outcome {
        Outcome::Ok => ("ok", Paint::Green),
        Outcome::Fail => ("FAIL", Paint::Red),
        Outcome::Skipped => ("skip", Paint::Yellow),
    };
    let word = output::paint(Stream::Stdout, paint, &format!("{word:<4}"));
    println!("{word}  {:<10} {}", c.name, c.detail);
    if let Some(fix) = &c.fix {
        println!("      {:<10} fix: {fix}", "");
    }
}

async fn checks(app: Option<String>) -> Vec<Check> {
    let mut out = Vec::new();
    let e = context::endpoint();
    let Some(token) = e.token.clone() else {
        out.push(Check::fail(
            "token",
            "no API token found".into(),
            "set ALOFT_API_TOKEN, or run `aloft auth login --url URL` with a token from \
             `aloft tokens create`"
                .into(),
        ));
        return out;
    };
    out.push(Check::ok("token", format!("from {}", e.token_from)));
    let api = match aloft_api::Client::new(&e.url, token.clone()) {
        Ok(api) => api,
        Err(err) => {
            out.push(Check::fail(
                "api",
                format!("{err} (from {})", e.url_from),
                "set ALOFT_API_URL to the control plane's URL, e.g. http://127.0.0.1:4280".into(),
            ));
            return out;
        }
    };
    let cluster =
        match api.cluster().await {
            Ok(c) => c,
            Err(err) => {
                out.push(Check::fail(
                "api",
                format!("{} (from {}) does not answer: {}", e.url, e.url_from, root(&err)),
                "start the control plane (`aloft server`), or set ALOFT_API_URL to where it runs"
                    .into(),
            ));
                return out;
            }
        };
    out.push(Check::ok("api", format!("{} answers", e.url)));
    match api.list_apps(None).await {
        Ok(list) => out.push(Check::ok(
            "auth",
            format!("the token is accepted ({} app(s) visible)", list.apps.len()),
        )),
        Err(err) if err.status() == Some(401) => {
            out.push(Check::fail(
                "auth",
                format!("the token from {} is refused", e.token_from),
                "get a valid token (`aloft tokens create` with an admin token, or the server's \
                 admin-token file) and set ALOFT_API_TOKEN or run `aloft auth login`"
                    .into(),
            ));
            return out;
        }
        Err(err) => out.push(Check::ok(
            "auth",
            format!("the token is accepted, with limits ({})", root(&err)),
        )),
    }
    out.push(match api.platform_regions().await {
        Ok(r) if r.regions.is_empty() => Check::fail(
            "hosts",
            "no region has a live host: machines cannot be placed".into(),
            "start an agent on a host: `aloft agent --token-file JOIN_TOKEN_FILE --region ams` (a join \
             token comes from `aloft hosts join-token create`)"
                .into(),
        ),
        Ok(r) => {
            let codes: Vec<&str> = r.regions.iter().map(|r| r.code.as_str()).collect();
            Check::ok("hosts", format!("live hosts in {}", codes.join(", ")))
        }
        Err(err) => Check::skipped(
            "hosts",
            format!("not visible to this token ({})", root(&err)),
        ),
    });
    out.push(registry(&e.url, &token, &cluster.registry).await);
    out.push(dns(app, &cluster.domain).await);
    out
}

/// `GET /v2/` with the token, as `docker login` and pushes do.
async fn registry(url: &str, token: &str, name: &str) -> Check {
    let target = format!("{}/v2/", url.trim_end_matches('/'));
    let answer = reqwest::Client::new()
        .get(&target)
        .basic_auth("aloft", Some(token))
        .send()
        .await;
    match answer {
        Ok(r) if r.status().is_success() => Check::ok(
            "registry",
            format!("{target} takes the token (hosts pull from it as {name})"),
        ),
        Ok(r) => Check::fail(
            "registry",
            format!("{target} answered {} to the token", r.status()),
            "use a token that may push (an app token or an admin token); \
             `docker login` takes it as the password"
                .into(),
        ),
        Err(err) => Check::fail(
            "registry",
            format!("{target} does not answer: {err}"),
            "the registry is served by `aloft server` at /v2: check a proxy in front of it".into(),
        ),
    }
}

/// Resolves `<app>.<domain>`.
async fn dns(app: Option<String>, domain: &str) -> Check {
    let app = match app.map(Ok).unwrap_or_else(|| context::app(None)) {
        Ok(app) => app,
        Err(_) => {
            return Check::skipped(
                "dns",
                format!("no app here to look up under {domain}: pass --app NAME"),
            )
        }
    };
    let name = format!("{app}.{domain}");
    match tokio::net::lookup_host(format!("{name}:443")).await {
        Ok(mut addrs) => match addrs.next() {
            Some(a) => Check::ok("dns", format!("{name} resolves to {}", a.ip())),
            None => dns_failure(&name, domain, "no address".into()),
        },
        Err(err) => dns_failure(&name, domain, err.to_string()),
    }
}

fn dns_failure(name: &str, domain: &str, why: String) -> Check {
    if domain == "localhost" || domain.ends_with(".localhost") {
        // RFC 6761: every name under localhost is loopback; curl and browsers answer it
        // themselves even where the system resolver does not.
        return Check::ok(
            "dns",
            format!("{name} is loopback (curl and browsers resolve *.localhost themselves)"),
        );
    }
    Check::fail(
        "dns",
        format!("{name} does not resolve ({why})"),
        format!(
            "add a wildcard record *.{domain} for your edges' address (or {name} to /etc/hosts \
             for a local cluster); the domain is `aloft server --domain`"
        ),
    )
}

/// The innermost message of an error, for a one-line detail.
fn root(err: &(dyn std::error::Error + 'static)) -> String {
    let mut e = err;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
}
