//! Test-only fault seams, compiled in only with the `fault-injection` feature (the test suite
//! turns it on; release builds never have it). Each seam is a named point on the real request
//! path where a test can make the gateway fail as a bug or a broken peer would — not a mock of
//! Postgres: everything around the seam runs for real.

/// The header that asks for a fault; its value names the fault.
pub const HEADER: http::HeaderName = http::HeaderName::from_static("x-sluice-fault");

/// Whether the request, whose [`HEADER`] values are `values`, asks for `fault` at this seam.
pub fn requested<'v>(values: impl IntoIterator<Item = &'v [u8]>, fault: &str) -> bool {
    values.into_iter().any(|value| value == fault.as_bytes())
}
