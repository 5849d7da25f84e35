//! The `fly-replay` / `aloft-replay` response header: an app asking the edge to send the same
//! request somewhere else.

/// What a machine asked for in its replay header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// Regions to try, in order.
    pub regions: Vec<String>,
    /// Exactly this machine.
    pub instance: Option<String>,
    /// This machine if it can take the request, else any.
    pub prefer_instance: Option<String>,
    /// Any machine but the one that answered.
    pub elsewhere: bool,
    /// Another app (of the same organization) takes the request.
    pub app: Option<String>,
    /// Opaque state handed to the next machine in `fly-replay-src`.
    pub state: Option<String>,
}

/// Response header names that ask for a replay, in order of precedence.
pub const REPLAY_HEADERS: [&str; 2] = ["fly-replay", "aloft-replay"];

impl Replay {
    /// Parses `region=ams,fra;instance=...;prefer_instance=...;app=...;elsewhere=true;state=...`.
    /// Unknown fields are ignored; a header asking for nothing yields `None`.
    pub fn parse(value: &str) -> Option<Replay> {
        let mut r = Replay::default();
        for part in value.split(';') {
            let Some((key, val)) = part.split_once('=') else {
                continue;
            };
            let val = val.trim();
            match key.trim().to_ascii_lowercase().as_str() {
                "region" => r.regions.extend(
                    val.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from),
                ),
                "instance" => r.instance = Some(val.to_string()).filter(|s| !s.is_empty()),
                "prefer_instance" => {
                    r.prefer_instance = Some(val.to_string()).filter(|s| !s.is_empty())
                }
                "elsewhere" => r.elsewhere = val.eq_ignore_ascii_case("true"),
                "app" => r.app = Some(val.to_string()).filter(|s| !s.is_empty()),
                "state" => r.state = Some(val.to_string()),
                _ => {}
            }
        }
        let empty = r.regions.is_empty()
            && r.instance.is_none()
            && r.prefer_instance.is_none()
            && r.app.is_none()
            && !r.elsewhere;
        (!empty).then_some(r)
    }

    /// The `fly-replay-src` value telling the next machine where the request was replayed from.
    pub fn source(&self, instance: &str, region: &str) -> String {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let mut s = format!("instance={instance};region={region};t={t}");
        if let Some(state) = &self.state {
            s.push_str(";state=");
            s.push_str(state);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_fields() {
        let r = Replay::parse(
            "region=ams, fra;instance=m1;prefer_instance=m2;elsewhere=true;state=abc=1;foo=bar",
        )
        .unwrap();
        assert_eq!(r.regions, ["ams", "fra"]);
        assert_eq!(r.instance.as_deref(), Some("m1"));
        assert_eq!(r.prefer_instance.as_deref(), Some("m2"));
        assert!(r.elsewhere);
        assert_eq!(r.state.as_deref(), Some("abc=1"));
        assert_eq!(
            Replay::parse("app=other").unwrap().app.as_deref(),
            Some("other")
        );
        let src = r.source("m9", "ord");
        assert!(src.starts_with("instance=m9;region=ord;t="), "{src}");
        assert!(src.ends_with(";state=abc=1"), "{src}");
    }

    #[test]
    fn empty_or_state_only_headers_are_no_replay() {
        assert_eq!(Replay::parse(""), None);
        assert_eq!(Replay::parse("state=x;elsewhere=false"), None);
    }
}
