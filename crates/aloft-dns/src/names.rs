//! The `internal.` zone as pure data: the snapshot the agent hands the server ([`DnsView`]) and
//! the lookup of one name in it for one querier ([`lookup`]). No sockets here.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv6Addr;
use std::time::Duration;

/// Everything the server answers `internal.` names from, as of one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DnsView {
    /// This host's region: machines there are the nearest.
    pub region: String,
    /// Measured round-trip times from this host to other regions.
    pub rtts: HashMap<String, Duration>,
    pub apps: Vec<DnsApp>,
}

/// An app and the org network it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsApp {
    pub name: String,
    /// The org's 6PN network id: only queriers on this network see the app.
    pub network: u32,
    pub machines: Vec<DnsMachine>,
}

/// A machine of an app, on any host.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsMachine {
    pub id: String,
    pub region: String,
    /// Its 6PN address.
    pub address: Ipv6Addr,
    /// Only started machines appear in answers.
    pub started: bool,
    pub healthy: bool,
    /// Its process group (`app`, `worker`...), when known.
    pub process_group: Option<String>,
}

/// Who is asking, as far as `internal.` names go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A machine on this org network: it sees this org's apps only.
    Org(u32),
    /// The host itself (the agent, an operator on the host): it sees every org's apps.
    Host,
    /// A source the server cannot place: `internal.` names are refused.
    Unknown,
}

/// What a name is, for one querier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No such name (or it belongs to another org, or its machine is not started).
    NxDomain,
    /// The querier may not ask about `internal.` names.
    Refused,
    /// `internal.` itself: it exists and has an SOA.
    Apex,
    /// A name of addresses (AAAA); empty when none of its machines is started.
    Addresses(Vec<Ipv6Addr>),
    /// A name of text (TXT).
    Text(String),
}

/// The zone's name, lowercase, without the final dot.
pub const ZONE: &str = "internal";

/// Whether `name` (lowercase, with or without a final dot) is in the `internal.` zone.
pub fn in_zone(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name == ZONE || name.ends_with(".internal")
}

/// Looks `name` (lowercase, with or without a final dot, inside [`ZONE`]) up for a querier
/// with `scope`.
pub fn lookup(view: &DnsView, scope: Scope, name: &str) -> Lookup {
    let name = name.strip_suffix('.').unwrap_or(name);
    let network = match scope {
        Scope::Org(n) => Some(n),
        Scope::Host => None,
        Scope::Unknown => return Lookup::Refused,
    };
    let Some(rest) = name.strip_suffix(ZONE) else {
        return Lookup::NxDomain;
    };
    if rest.is_empty() {
        return Lookup::Apex;
    }
    let Some(rest) = rest.strip_suffix('.') else {
        return Lookup::NxDomain;
    };
    let labels: Vec<&str> = rest.split('.').collect();
    let visible = |app: &&DnsApp| network.is_none_or(|n| app.network == n);
    if labels == ["_apps"] {
        let names: BTreeSet<&str> = view
            .apps
            .iter()
            .filter(visible)
            .map(|a| a.name.as_str())
            .collect();
        return Lookup::Text(names.into_iter().collect::<Vec<_>>().join(","));
    }
    let (app_name, qualifiers) = labels.split_last().expect("split yields one label");
    let Some(app) = view
        .apps
        .iter()
        .filter(visible)
        .find(|a| a.name == *app_name)
    else {
        return Lookup::NxDomain;
    };
    let started = || app.machines.iter().filter(|m| m.started);
    let addresses = |it: &mut dyn Iterator<Item = &DnsMachine>| {
        Lookup::Addresses(it.map(|m| m.address).collect())
    };
    match qualifiers {
        [] => addresses(&mut started()),
        ["vms"] => Lookup::Text(
            started()
                .map(|m| format!("{} {}", m.id, m.region))
                .collect::<Vec<_>>()
                .join(","),
        ),
        ["regions"] => {
            let regions: BTreeSet<&str> = started().map(|m| m.region.as_str()).collect();
            Lookup::Text(regions.into_iter().collect::<Vec<_>>().join(","))
        }
        [region] => {
            if app.machines.iter().any(|m| m.region == *region) {
                addresses(&mut started().filter(|m| m.region == *region))
            } else {
                Lookup::NxDomain
            }
        }
        [id, "vm"] => match started().find(|m| m.id == *id) {
            Some(m) => Lookup::Addresses(vec![m.address]),
            None => Lookup::NxDomain,
        },
        [group, "process"] => {
            if app
                .machines
                .iter()
                .any(|m| m.process_group.as_deref() == Some(group))
            {
                addresses(&mut started().filter(|m| m.process_group.as_deref() == Some(group)))
            } else {
                Lookup::NxDomain
            }
        }
        [top, "nearest", "of"] => match parse_top(top) {
            Some(n) => Lookup::Addresses(
                nearest(view, started())
                    .into_iter()
                    .take(n)
                    .map(|m| m.address)
                    .collect(),
            ),
            None => Lookup::NxDomain,
        },
        _ => Lookup::NxDomain,
    }
}

/// `top<N>` with N ≥ 1.
fn parse_top(label: &str) -> Option<usize> {
    let digits = label.strip_prefix("top")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<usize>().ok().filter(|n| *n >= 1)
}

/// Machines ordered by nearness to this host: its own region first, then by measured RTT
/// (regions without a measurement last), healthy before unhealthy, then by id.
fn nearest<'a>(
    view: &DnsView,
    machines: impl Iterator<Item = &'a DnsMachine>,
) -> Vec<&'a DnsMachine> {
    let distance = |m: &DnsMachine| {
        if m.region == view.region {
            Duration::ZERO
        } else {
            view.rtts.get(&m.region).copied().unwrap_or(Duration::MAX)
        }
    };
    let mut list: Vec<&DnsMachine> = machines.collect();
    list.sort_by(|a, b| (distance(a), !a.healthy, &a.id).cmp(&(distance(b), !b.healthy, &b.id)));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACME: u32 = 0x1234;
    const OTHER: u32 = 0x9999;

    fn machine(id: &str, region: &str, last: u16, started: bool) -> DnsMachine {
        DnsMachine {
            id: id.into(),
            region: region.into(),
            address: Ipv6Addr::new(0xfdaa, 0, 0x1234, 0, 1, 0, last, 2),
            started,
            healthy: true,
            process_group: Some("app".into()),
        }
    }

    fn view() -> DnsView {
        let mut worker = machine("w1", "iad", 9, true);
        worker.process_group = Some("worker".into());
        let mut sick = machine("a4", "ams", 4, true);
        sick.healthy = false;
        DnsView {
            region: "ams".into(),
            rtts: HashMap::from([
                ("iad".into(), Duration::from_millis(80)),
                ("syd".into(), Duration::from_millis(250)),
            ]),
            apps: vec![
                DnsApp {
                    name: "shop".into(),
                    network: ACME,
                    machines: vec![
                        machine("s1", "syd", 1, true),
                        machine("i2", "iad", 2, true),
                        machine("a3", "ams", 3, true),
                        sick,
                        machine("a5", "ams", 5, false),
                        machine("f6", "fra", 6, false),
                        worker,
                    ],
                },
                DnsApp {
                    name: "db".into(),
                    network: ACME,
                    machines: vec![],
                },
                DnsApp {
                    name: "secret".into(),
                    network: OTHER,
                    machines: vec![machine("x1", "ams", 7, true)],
                },
            ],
        }
    }

    fn addrs(lasts: &[u16]) -> Lookup {
        Lookup::Addresses(
            lasts
                .iter()
                .map(|l| Ipv6Addr::new(0xfdaa, 0, 0x1234, 0, 1, 0, *l, 2))
                .collect(),
        )
    }

    fn acme(name: &str) -> Lookup {
        lookup(&view(), Scope::Org(ACME), name)
    }

    #[test]
    fn app_names_list_started_machines_only() {
        assert_eq!(acme("shop.internal"), addrs(&[1, 2, 3, 4, 9]));
        assert_eq!(acme("shop.internal."), addrs(&[1, 2, 3, 4, 9]));
        // An app with no started machine exists but has no addresses.
        assert_eq!(acme("db.internal"), addrs(&[]));
        assert_eq!(acme("nosuch.internal"), Lookup::NxDomain);
    }

    #[test]
    fn region_names() {
        assert_eq!(acme("ams.shop.internal"), addrs(&[3, 4]));
        assert_eq!(acme("iad.shop.internal"), addrs(&[2, 9]));
        // A region whose machines are all stopped exists, empty; an unknown one does not.
        assert_eq!(acme("fra.shop.internal"), addrs(&[]));
        assert_eq!(acme("lhr.shop.internal"), Lookup::NxDomain);
    }

    #[test]
    fn nearest_names_order_by_region_then_rtt() {
        assert_eq!(acme("top1.nearest.of.shop.internal"), addrs(&[3]));
        // Same region first (healthy before unhealthy), then iad (80 ms), then syd (250 ms).
        assert_eq!(acme("top3.nearest.of.shop.internal"), addrs(&[3, 4, 2]));
        assert_eq!(
            acme("top99.nearest.of.shop.internal"),
            addrs(&[3, 4, 2, 9, 1])
        );
        for bad in ["top0", "top", "topx", "top-1", "first"] {
            assert_eq!(
                acme(&format!("{bad}.nearest.of.shop.internal")),
                Lookup::NxDomain,
                "{bad}"
            );
        }
    }

    #[test]
    fn nearest_puts_regions_without_rtt_last() {
        let mut v = view();
        v.rtts.remove("iad");
        let got = lookup(&v, Scope::Org(ACME), "top5.nearest.of.shop.internal");
        assert_eq!(got, addrs(&[3, 4, 1, 2, 9]));
    }

    #[test]
    fn vm_and_process_names() {
        assert_eq!(acme("s1.vm.shop.internal"), addrs(&[1]));
        assert_eq!(acme("a5.vm.shop.internal"), Lookup::NxDomain, "stopped");
        assert_eq!(acme("zz.vm.shop.internal"), Lookup::NxDomain);
        assert_eq!(acme("worker.process.shop.internal"), addrs(&[9]));
        assert_eq!(acme("app.process.shop.internal"), addrs(&[1, 2, 3, 4]));
        assert_eq!(acme("cron.process.shop.internal"), Lookup::NxDomain);
    }

    #[test]
    fn txt_names() {
        assert_eq!(
            acme("vms.shop.internal"),
            Lookup::Text("s1 syd,i2 iad,a3 ams,a4 ams,w1 iad".into())
        );
        assert_eq!(
            acme("regions.shop.internal"),
            Lookup::Text("ams,iad,syd".into())
        );
        assert_eq!(acme("_apps.internal"), Lookup::Text("db,shop".into()));
        assert_eq!(acme("internal"), Lookup::Apex);
        assert_eq!(acme("a.b.c.d.e.shop.internal"), Lookup::NxDomain);
        assert_eq!(acme("xinternal"), Lookup::NxDomain);
    }

    #[test]
    fn other_orgs_apps_do_not_exist() {
        assert_eq!(acme("secret.internal"), Lookup::NxDomain);
        assert_eq!(acme("x1.vm.secret.internal"), Lookup::NxDomain);
        assert_eq!(acme("vms.secret.internal"), Lookup::NxDomain);
        let other = |n: &str| lookup(&view(), Scope::Org(OTHER), n);
        assert_eq!(other("shop.internal"), Lookup::NxDomain);
        assert_eq!(other("_apps.internal"), Lookup::Text("secret".into()));
        assert_eq!(
            lookup(&view(), Scope::Host, "_apps.internal"),
            Lookup::Text("db,secret,shop".into())
        );
        assert_eq!(
            lookup(&view(), Scope::Unknown, "shop.internal"),
            Lookup::Refused
        );
    }

    #[test]
    fn a_machine_that_stops_disappears() {
        let mut v = view();
        assert_eq!(
            lookup(&v, Scope::Org(ACME), "s1.vm.shop.internal"),
            addrs(&[1])
        );
        v.apps[0].machines[0].started = false;
        assert_eq!(
            lookup(&v, Scope::Org(ACME), "s1.vm.shop.internal"),
            Lookup::NxDomain
        );
        assert_eq!(
            lookup(&v, Scope::Org(ACME), "shop.internal"),
            addrs(&[2, 3, 4, 9])
        );
        assert_eq!(
            lookup(&v, Scope::Org(ACME), "regions.shop.internal"),
            Lookup::Text("ams,iad".into())
        );
    }

    #[test]
    fn zone_membership() {
        assert!(in_zone("internal") && in_zone("internal.") && in_zone("a.internal."));
        assert!(!in_zone("example.com.") && !in_zone("xinternal."));
    }
}
