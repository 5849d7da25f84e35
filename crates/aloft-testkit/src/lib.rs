//! aloft-testkit
