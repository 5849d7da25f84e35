//! Round-trip times between cities, so the simulated regions are as far apart as real ones
//! (the table lives in `aloft_api::latency`, which the control plane's GeoDNS shares).

pub use aloft_api::latency::*;
