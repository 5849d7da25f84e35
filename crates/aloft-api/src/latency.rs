//! Round-trip times between regions: how `aloft dev` spaces its simulated regions, and how the
//! control plane's GeoDNS ranks regions when edges have not measured anything better.
//!
//! Figures are approximate round-trip times in milliseconds between data centres in these
//! cities, rounded to 5 ms, from public inter-city ping statistics (WonderNetwork's global ping
//! tables and the cloud providers' published inter-region latency matrices, 2023–2024). They
//! only need to be right in order of magnitude and in their ordering: they decide which region
//! is nearest, and how much a backhaul costs.

/// Regions the table knows, with Fly's codes.
pub const KNOWN: [&str; 16] = [
    "ams", "cdg", "fra", "lhr", "iad", "ord", "dfw", "lax", "sjc", "yyz", "gru", "nrt", "sin",
    "syd", "bom", "jnb",
];

/// Round trip used for a pair the table does not know.
pub const UNKNOWN_RTT_MS: u32 = 150;

/// Upper triangle of the RTT matrix, row by row in the order of [`KNOWN`].
const RTT_MS: &[(&str, &str, u32)] = &[
    ("ams", "cdg", 10),
    ("ams", "fra", 10),
    ("ams", "lhr", 5),
    ("ams", "iad", 85),
    ("ams", "ord", 100),
    ("ams", "dfw", 120),
    ("ams", "lax", 145),
    ("ams", "sjc", 145),
    ("ams", "yyz", 90),
    ("ams", "gru", 190),
    ("ams", "nrt", 235),
    ("ams", "sin", 160),
    ("ams", "syd", 280),
    ("ams", "bom", 115),
    ("ams", "jnb", 165),
    ("cdg", "fra", 10),
    ("cdg", "lhr", 10),
    ("cdg", "iad", 80),
    ("cdg", "ord", 95),
    ("cdg", "dfw", 115),
    ("cdg", "lax", 140),
    ("cdg", "sjc", 145),
    ("cdg", "yyz", 90),
    ("cdg", "gru", 190),
    ("cdg", "nrt", 230),
    ("cdg", "sin", 155),
    ("cdg", "syd", 280),
    ("cdg", "bom", 110),
    ("cdg", "jnb", 160),
    ("fra", "lhr", 15),
    ("fra", "iad", 90),
    ("fra", "ord", 105),
    ("fra", "dfw", 125),
    ("fra", "lax", 150),
    ("fra", "sjc", 150),
    ("fra", "yyz", 95),
    ("fra", "gru", 200),
    ("fra", "nrt", 230),
    ("fra", "sin", 160),
    ("fra", "syd", 285),
    ("fra", "bom", 110),
    ("fra", "jnb", 170),
    ("lhr", "iad", 75),
    ("lhr", "ord", 90),
    ("lhr", "dfw", 110),
    ("lhr", "lax", 135),
    ("lhr", "sjc", 140),
    ("lhr", "yyz", 85),
    ("lhr", "gru", 185),
    ("lhr", "nrt", 225),
    ("lhr", "sin", 165),
    ("lhr", "syd", 270),
    ("lhr", "bom", 115),
    ("lhr", "jnb", 160),
    ("iad", "ord", 20),
    ("iad", "dfw", 35),
    ("iad", "lax", 60),
    ("iad", "sjc", 65),
    ("iad", "yyz", 20),
    ("iad", "gru", 115),
    ("iad", "nrt", 150),
    ("iad", "sin", 220),
    ("iad", "syd", 200),
    ("iad", "bom", 200),
    ("iad", "jnb", 230),
    ("ord", "dfw", 25),
    ("ord", "lax", 50),
    ("ord", "sjc", 50),
    ("ord", "yyz", 15),
    ("ord", "gru", 135),
    ("ord", "nrt", 135),
    ("ord", "sin", 215),
    ("ord", "syd", 185),
    ("ord", "bom", 215),
    ("ord", "jnb", 245),
    ("dfw", "lax", 35),
    ("dfw", "sjc", 40),
    ("dfw", "yyz", 40),
    ("dfw", "gru", 140),
    ("dfw", "nrt", 135),
    ("dfw", "sin", 210),
    ("dfw", "syd", 175),
    ("dfw", "bom", 230),
    ("dfw", "jnb", 250),
    ("lax", "sjc", 10),
    ("lax", "yyz", 65),
    ("lax", "gru", 160),
    ("lax", "nrt", 105),
    ("lax", "sin", 170),
    ("lax", "syd", 140),
    ("lax", "bom", 240),
    ("lax", "jnb", 280),
    ("sjc", "yyz", 70),
    ("sjc", "gru", 170),
    ("sjc", "nrt", 105),
    ("sjc", "sin", 170),
    ("sjc", "syd", 145),
    ("sjc", "bom", 230),
    ("sjc", "jnb", 280),
    ("yyz", "gru", 130),
    ("yyz", "nrt", 160),
    ("yyz", "sin", 230),
    ("yyz", "syd", 205),
    ("yyz", "bom", 200),
    ("yyz", "jnb", 240),
    ("gru", "nrt", 260),
    ("gru", "sin", 330),
    ("gru", "syd", 310),
    ("gru", "bom", 300),
    ("gru", "jnb", 180),
    ("nrt", "sin", 70),
    ("nrt", "syd", 110),
    ("nrt", "bom", 130),
    ("nrt", "jnb", 280),
    ("sin", "syd", 95),
    ("sin", "bom", 60),
    ("sin", "jnb", 210),
    ("syd", "bom", 150),
    ("syd", "jnb", 280),
    ("bom", "jnb", 130),
];

/// The round trip between two regions in milliseconds (0 within a region; [`UNKNOWN_RTT_MS`]
/// for a pair the table does not know).
pub fn rtt_ms(a: &str, b: &str) -> u32 {
    if a == b {
        return 0;
    }
    RTT_MS
        .iter()
        .find(|(x, y, _)| (*x == a && *y == b) || (*x == b && *y == a))
        .map_or(UNKNOWN_RTT_MS, |(_, _, ms)| *ms)
}

/// The one-way delay a host in `from` adds to what it sends to `to` (half the round trip).
pub fn one_way_ms(from: &str, to: &str) -> u32 {
    rtt_ms(from, to) / 2
}

/// `candidates` ordered nearest first as seen from `from` (ties by name, for stable output).
pub fn nearest_first<'a>(
    from: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    let mut v: Vec<&str> = candidates.into_iter().collect();
    v.sort_by_key(|r| (rtt_ms(from, r), r.to_string()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_of_known_regions_has_a_figure() {
        for (i, a) in KNOWN.iter().enumerate() {
            for b in &KNOWN[i + 1..] {
                let n = RTT_MS
                    .iter()
                    .filter(|(x, y, _)| (x == a && y == b) || (x == b && y == a))
                    .count();
                assert_eq!(n, 1, "{a}-{b}");
            }
        }
        assert_eq!(RTT_MS.len(), KNOWN.len() * (KNOWN.len() - 1) / 2);
    }

    #[test]
    fn the_table_is_symmetric_and_orders_neighbours() {
        assert_eq!(rtt_ms("syd", "ams"), rtt_ms("ams", "syd"));
        assert_eq!(rtt_ms("ams", "ams"), 0);
        assert_eq!(one_way_ms("ams", "iad"), 42);
        assert_eq!(nearest_first("syd", ["ams", "iad"]), ["iad", "ams"]);
        assert_eq!(nearest_first("ams", ["syd", "iad"]), ["iad", "syd"]);
        assert_eq!(rtt_ms("ams", "xyz"), UNKNOWN_RTT_MS);
    }
}
