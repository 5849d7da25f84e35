//! aloft-image
