//! A Pod's lifecycle around the repository, as a library: what the initContainer does before
//! the application starts, and the jobs the sidecar daemon runs while it lives.
//!
//! * [`create`]: create the repository (and its bucket), or open it when another Pod won the
//!   race to create it, and check that its index is readable.
//! * [`warm_key`]: seal the master key to this Pod, so that the sidecar opens the repository
//!   without the password or the key derivation.
//! * [`restore_if_empty`]: restore the latest snapshot into an empty data directory, starting
//!   over after an interrupted attempt.
//! * [`jobs`]: the sidecar's backup job and verification drill, the `snapback_sidecar::Job`
//!   and drill implementations its daemon schedules (`snapback-sidecar` itself knows nothing of
//!   repositories).
//!
//! The binary parses arguments into the options of these modules and prints their outcomes;
//! errors here are typed.

#![warn(missing_docs)]

pub mod create;
pub mod jobs;
pub mod restore_if_empty;
pub mod warm_key;
