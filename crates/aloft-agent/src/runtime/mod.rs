//! Sandbox runtime driver.
