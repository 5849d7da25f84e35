//! `aloft dev partition A B` and `aloft dev heal A B`: a network partition between the hosts
//! of two regions. Each host gets blackhole routes to the other's backbone addresses (IPv4 and
//! IPv6), so nothing passes between them in either direction (the mesh's UDP included), while
//! both still reach the control plane, their cities and every other host. Healing removes
//! exactly those routes. The pairs are kept in the dev state file; `aloft dev down` removes
//! the namespaces, and the routes with them.

use super::topology::{self, DevState, Topology};
use super::Where;
use crate::context::UsageError;

/// `aloft dev partition A B`
pub fn partition(at: &Where, a: &str, b: &str) -> anyhow::Result<()> {
    let (mut state, pair) = load(at, a, b)?;
    if state.partitions.contains(&pair) {
        return Err(UsageError(format!("{a} and {b} are already partitioned")).into());
    }
    for ns in [a, b].map(|r| state.topology.host_ns(r)) {
        if !topology::netns_exists(&ns) {
            return Err(UsageError(format!("The host of {} is dead", host_of(&ns))).into());
        }
    }
    for (args, _) in routes(&state.topology, a, b, "add") {
        topology::ip(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    state.partitions.push(pair);
    save(at, &state)?;
    println!("partitioned {a} and {b}: nothing passes between their hosts");
    Ok(())
}

/// `aloft dev heal A B`
pub fn heal(at: &Where, a: &str, b: &str) -> anyhow::Result<()> {
    let (mut state, pair) = load(at, a, b)?;
    if !state.partitions.contains(&pair) {
        return Err(UsageError(format!("{a} and {b} are not partitioned")).into());
    }
    let mut failed = None;
    for (args, ns) in routes(&state.topology, a, b, "del") {
        // A host that died since has taken its routes with it.
        if !topology::netns_exists(&ns) {
            continue;
        }
        if let Err(e) = topology::ip(&args.iter().map(String::as_str).collect::<Vec<_>>()) {
            failed.get_or_insert(e);
        }
    }
    state.partitions.retain(|p| *p != pair);
    save(at, &state)?;
    if let Some(e) = failed {
        return Err(e);
    }
    println!("healed {a} and {b}: their hosts reach each other again");
    Ok(())
}

/// The `ip route VERB` (`add` or `del`) arguments of the four blackhole routes between the
/// hosts of `a` and `b` (each host to the other's IPv4 and IPv6 backbone address), with the
/// namespace each is in.
fn routes(topo: &Topology, a: &str, b: &str, verb: &str) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    for (from, to) in [(a, b), (b, a)] {
        let ns = topo.host_ns(from);
        for (family, dest) in [
            ("-4", format!("{}/32", topo.host_ip(to))),
            ("-6", format!("{}/128", topo.host_ip6(to))),
        ] {
            let args = ["-n", &ns, family, "route", verb, "blackhole", &dest]
                .map(str::to_string)
                .to_vec();
            out.push((args, ns.clone()));
        }
    }
    out
}

fn host_of(ns: &str) -> &str {
    ns.split_once("-h-").map_or(ns, |(_, r)| r)
}

/// The running topology's state, and the pair `(a, b)` in a canonical order.
fn load(at: &Where, a: &str, b: &str) -> anyhow::Result<(DevState, (String, String))> {
    let state = super::ops::running(at)?;
    for r in [a, b] {
        super::ops::check_region(&state.topology, r)?;
    }
    if a == b {
        return Err(UsageError(format!("Give two different regions, not {a} twice")).into());
    }
    let pair = if a < b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    };
    Ok((state, pair))
}

fn save(at: &Where, state: &DevState) -> anyhow::Result<()> {
    let path = topology::state_path(&at.data_dir);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(state)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_hosts_blackhole_both_addresses_of_the_other() {
        let topo = Topology {
            prefix: "t".into(),
            regions: vec!["ams".into(), "lhr".into(), "iad".into()],
        };
        let lines: Vec<String> = routes(&topo, "ams", "lhr", "add")
            .into_iter()
            .map(|(args, _)| args.join(" "))
            .collect();
        assert_eq!(
            lines,
            [
                "-n t-h-ams -4 route add blackhole 10.200.0.11/32",
                "-n t-h-ams -6 route add blackhole fd00:200::1:1/128",
                "-n t-h-lhr -4 route add blackhole 10.200.0.10/32",
                "-n t-h-lhr -6 route add blackhole fd00:200::1:0/128",
            ]
        );
        assert_eq!(host_of("t-h-lhr"), "lhr");
    }
}
