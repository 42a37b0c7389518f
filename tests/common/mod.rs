//! The shared harness, as every test file has always named it: `mod common; use common::*;`. It lives in the
//! `mqtt-lb-testkit` crate (tests/support), compiled once rather than into each test binary; see its docs.

pub use mqtt_lb_testkit::*;
