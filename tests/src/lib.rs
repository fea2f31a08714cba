//! Shared helpers for the integration tests that boot real guests.
