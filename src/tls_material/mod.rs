//! TLS material read from files: a listener's certificate chains, keys and client CA turned into the rustls server
//! configuration ([`certificates`]), the certificate chosen by SNI ([`sni`]), OCSP staples ([`ocsp`]), client
//! certificate revocation lists ([`revocation`]), and the session-ticket keys shared by the instances of a pair
//! ([`ticket_keys`]). Read when the configuration is loaded, by `check`, `run` and a reload alike, so a bad file is
//! refused before it is used; never on a connection's path. Kept apart from [`crate::transport`] so that the
//! configuration can load it without depending on the connection path that depends on the configuration.

pub mod certificates;
pub mod ocsp;
pub mod revocation;
pub mod sni;
pub mod ticket_keys;
