//! aloft-api
