//! aloft-agent
