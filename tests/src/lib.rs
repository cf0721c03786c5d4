//! Workloads and helpers for the end-to-end tests.
