//! Per-machine networking on a host.
