//! Who may own a hostname. Names under the apps' domain belong to the platform: `<app>.<domain>`
//! (and the names below it) to that app, always, and nothing else there to anyone. Any other
//! (custom) name belongs to the first app that claims it, but routes to it only once its
//! control is proven: DNS says so (a `CNAME` to `<app>.<domain>`, or a `TXT` record
//! `_aloft-challenge.<name>` of `app=<app>`), or an ACME CA validated the name for this app.

use super::dns::DnsEvidence;

/// Whose a name is by the platform's own rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformName {
    /// Not under the domain: a custom name.
    Custom,
    /// `<app>.<domain>` or a name below it: that app's.
    App(String),
    /// The domain itself, or a wildcard directly under it: no app's.
    Reserved,
}

/// Classifies `host` (normalized: lowercase, no trailing dot) against the apps' `domain`.
pub fn platform_name(host: &str, domain: &str) -> PlatformName {
    let domain = domain.trim_matches('.').to_ascii_lowercase();
    if domain.is_empty() {
        return PlatformName::Custom;
    }
    if host == domain {
        return PlatformName::Reserved;
    }
    let Some(rest) = host.strip_suffix(&format!(".{domain}")) else {
        return PlatformName::Custom;
    };
    match rest.rsplit('.').next() {
        Some(label) if !label.is_empty() && label != "*" => PlatformName::App(label.to_owned()),
        _ => PlatformName::Reserved,
    }
}

/// What DNS evidence says about a custom name, for one claiming app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proof {
    /// DNS names the claiming app.
    pub for_app: bool,
    /// DNS names another app (and not the claiming one).
    pub other_app: Option<String>,
}

/// The TXT value that names `app` as the owner of a name.
pub fn txt_value(app: &str) -> String {
    format!("app={app}")
}

/// Reads `evidence` for `app`: a CNAME to `<app>.<domain>` or a TXT `app=<app>` proves it.
pub fn proof(evidence: &DnsEvidence, app: &str, domain: &str) -> Proof {
    let domain = domain.trim_matches('.').to_ascii_lowercase();
    let mut named: Vec<String> = Vec::new();
    for target in &evidence.cnames {
        if let PlatformName::App(owner) = platform_name(target, &domain) {
            // Only `<app>.<domain>` itself names an app; deeper names are the app's own.
            if *target == format!("{owner}.{domain}") {
                named.push(owner);
            }
        }
    }
    for txt in &evidence.txt {
        if let Some(owner) = txt.strip_prefix("app=") {
            named.push(owner.trim().to_owned());
        }
    }
    let for_app = named.iter().any(|n| n == app);
    Proof {
        for_app,
        other_app: if for_app {
            None
        } else {
            named.into_iter().next()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_under_the_domain_belong_to_their_app_or_to_nobody() {
        let d = "apps.example";
        assert_eq!(
            platform_name("web.apps.example", d),
            PlatformName::App("web".into())
        );
        assert_eq!(
            platform_name("api.web.apps.example", d),
            PlatformName::App("web".into())
        );
        assert_eq!(
            platform_name("*.web.apps.example", d),
            PlatformName::App("web".into())
        );
        assert_eq!(platform_name("apps.example", d), PlatformName::Reserved);
        assert_eq!(platform_name("*.apps.example", d), PlatformName::Reserved);
        assert_eq!(platform_name("shop.example", d), PlatformName::Custom);
        assert_eq!(platform_name("xapps.example", d), PlatformName::Custom);
    }

    #[test]
    fn a_cname_to_the_app_or_its_txt_record_proves_control() {
        let d = "localhost";
        let cname = DnsEvidence {
            cnames: vec!["web.localhost".into()],
            txt: vec![],
        };
        assert!(proof(&cname, "web", d).for_app);
        let p = proof(&cname, "api", d);
        assert!(!p.for_app);
        assert_eq!(p.other_app.as_deref(), Some("web"));
        let txt = DnsEvidence {
            cnames: vec![],
            txt: vec!["something else".into(), "app=api".into()],
        };
        assert!(proof(&txt, "api", d).for_app);
        assert_eq!(proof(&txt, "web", d).other_app.as_deref(), Some("api"));
        // A CNAME elsewhere, or to a name below an app, names nobody.
        let elsewhere = DnsEvidence {
            cnames: vec!["edge.example.net".into(), "x.web.localhost".into()],
            txt: vec![],
        };
        assert_eq!(proof(&elsewhere, "web", d), Proof::default());
    }
}
