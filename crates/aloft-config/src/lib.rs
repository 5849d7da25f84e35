//! aloft-config
