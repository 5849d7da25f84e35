//! aloft-control
