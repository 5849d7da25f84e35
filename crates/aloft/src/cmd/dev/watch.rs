//! What `aloft dev` does when a host dies by itself (its agent crashed or was killed, not only
//! through `aloft dev kill`): the host is down, and every city that reached it is routed to
//! its nearest live region, as a withdrawn anycast route would on real servers.

use std::collections::{BTreeMap, BTreeSet};

use super::bgp;
use super::latency;
use super::topology::Topology;

/// The hosts found down so far, and where the cities of down hosts were routed.
#[derive(Debug, Default)]
pub struct HostWatch {
    down: BTreeSet<String>,
    routed: BTreeMap<String, String>,
}

impl HostWatch {
    /// The agent of `region` exited: its host is down. Routes the cities that reached it to
    /// their nearest live region; returns the lines to print. Telling it twice changes nothing.
    pub fn host_died(&mut self, topo: &Topology, region: &str) -> anyhow::Result<Vec<String>> {
        if !self.down.insert(region.to_string()) {
            return Ok(Vec::new());
        }
        if bgp::active(topo) {
            // The host's BGP sessions time out and the cities' routers move them.
            return Ok(vec![format!(
                "host of {region} is down; its cities' routers move them by BGP"
            )]);
        }
        let live: Vec<String> = topo
            .live_regions()
            .into_iter()
            .filter(|r| !self.down.contains(r))
            .collect();
        let mut lines = Vec::new();
        for (city, to) in self.plan(topo, &live) {
            topo.route_city(&city, &to)?;
            self.routed.insert(city.clone(), to.clone());
            lines.push(if city == region {
                format!("host of {region} is down; city {city} now reaches {to}")
            } else {
                format!("city {city} now reaches {to}")
            });
        }
        if lines.is_empty() {
            lines.push(match live.is_empty() {
                true => format!("host of {region} is down; no live region is left"),
                false => format!("host of {region} is down"),
            });
        }
        Ok(lines)
    }

    /// `(city, region)` for every city whose own host is not live and that is not already
    /// routed to its nearest live region.
    fn plan(&self, topo: &Topology, live: &[String]) -> Vec<(String, String)> {
        topo.regions
            .iter()
            .filter(|city| !live.contains(city))
            .filter_map(|city| {
                let to = latency::nearest_first(city, live.iter().map(String::as_str))
                    .first()?
                    .to_string();
                (self.routed.get(city) != Some(&to)).then(|| (city.clone(), to))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cities_of_down_hosts_go_to_their_nearest_live_region_once() {
        let topo = Topology {
            prefix: "t".into(),
            regions: vec!["ams".into(), "lhr".into(), "iad".into(), "syd".into()],
        };
        let mut watch = HostWatch::default();
        let all: Vec<String> = topo.regions.clone();
        let live = |down: &[&str]| -> Vec<String> {
            all.iter()
                .filter(|r| !down.contains(&r.as_str()))
                .cloned()
                .collect()
        };
        assert!(watch.plan(&topo, &live(&[])).is_empty());
        let plan = watch.plan(&topo, &live(&["lhr"]));
        assert_eq!(plan, [("lhr".to_string(), "ams".to_string())]);
        watch.routed.extend(plan);
        // Already routed: nothing to do; then ams dies too and lhr moves on with it.
        assert!(watch.plan(&topo, &live(&["lhr"])).is_empty());
        let plan = watch.plan(&topo, &live(&["lhr", "ams"]));
        assert_eq!(
            plan,
            [
                ("ams".to_string(), "iad".to_string()),
                ("lhr".to_string(), "iad".to_string())
            ]
        );
        assert!(watch.plan(&topo, &[]).is_empty());
    }
}
