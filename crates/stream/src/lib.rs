//! The entry stream of snapback: where backup entries come from and where a tar stream goes.
//!
//! * [`walk::Walker`] walks one or more filesystem roots (skipping the pseudo filesystems and
//!   Kubernetes-managed files of a Pod) and yields [`Entry`]s lazily.
//! * [`tar_read::TarSource`] yields the entries of any GNU / PAX / ustar tar stream.
//! * [`command::stream_source`] turns standard input or a producer command's output
//!   ([`command::CommandPipe`], gated on its exit status by [`command::CommandGate`]) into a
//!   tar source or a [`command::SingleFile`], read ahead on a thread of its own
//!   ([`read_ahead::ReadAhead`]).
//! * [`tar_write::write_tar`] turns any [`EntrySource`] into a deterministic PAX tar stream.
//!
//! Every source implements [`EntrySource`], a lending iterator: a regular file's content is a
//! reader borrowed from the source until the next entry is requested, so memory never grows with
//! file sizes.

#![warn(missing_docs)]

pub mod command;
pub mod entry;
mod error;
mod listing;
mod names;
mod pax;
pub mod pending_links;
pub mod read_ahead;
mod skip;
pub mod tar_read;
pub mod tar_write;
pub mod walk;

pub use command::{stream_source, widen_pipe, CommandGate, CommandPipe, SingleFile, StreamMode};
pub use entry::{Entry, EntryKind, EntrySource, Metadata, Timestamp, Warning, Xattr};
pub use error::Error;
pub use tar_read::{looks_like_tar, TarSource};
pub use tar_write::{write_tar, write_tar_with, Summary, TarOptions};
pub use walk::{read_exclude_file, WalkOptions, Walker};
