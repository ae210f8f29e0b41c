//! Test-only fault seams, compiled in only with the `fault-injection` feature (the test suite
//! turns it on; release builds never have it). Each seam is a named point on the real request
//! path where a test can make the gateway fail as a bug or a broken peer would — not a mock of
//! Postgres: everything around the seam runs for real.

/// The header that asks for a fault; its value names the fault.
pub const HEADER: &str = "x-sluice-fault";

/// Whether the request asks for `fault` at this seam.
pub fn requested(headers: &crate::api::head::Headers, fault: &str) -> bool {
    headers
        .get_all(&http::HeaderName::from_static(HEADER))
        .any(|value| value == fault.as_bytes())
}
