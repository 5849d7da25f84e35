//! aloft-registry
