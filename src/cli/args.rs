//! Argument groups several commands share, declared once and `#[command(flatten)]`-ed into
//! each, so that a flag means the same (name, default, help) wherever it appears.

use std::path::PathBuf;

use anyhow::bail;
use snapback_archive::sink::SinkOptions;
use snapback_stream::{read_exclude_file, StreamMode};

/// How a backup packs and uploads: `backup` and `sidecar`.
#[derive(Debug, Clone, clap::Args)]
pub struct TuningArgs {
    /// Compression: auto, off, max, or a zstd level 1-22.
    #[arg(long, default_value = "auto")]
    pub compression: String,
    /// Pack size in MiB.
    #[arg(long, default_value_t = 8)]
    pub pack_size: usize,
    /// Packs uploading at once.
    #[arg(long, default_value_t = 2)]
    pub uploads: usize,
    /// MiB of file data in memory at once, from being read to the end of its pack's upload
    /// (raised to at least pack size + 8).
    #[arg(long, default_value_t = 24)]
    pub blob_memory: usize,
    /// MiB the listings of the directories being archived may hold together (a directory of
    /// a million entries takes ~40); past it the backup fails rather than grow without bound.
    #[arg(long, default_value_t = snapback_archive::archiver::MAX_LISTING_BYTES >> 20)]
    pub listing_memory: usize,
}

impl TuningArgs {
    /// The sink options these arguments ask for (pack size 1-128 MiB, at least one upload);
    /// an error for a `--compression` that is none of auto, off, max, 1-22.
    pub fn sink_options(&self) -> anyhow::Result<SinkOptions> {
        Ok(SinkOptions {
            pack_size: self.pack_size.clamp(1, 128) * 1024 * 1024,
            max_uploads: self.uploads.max(1),
            blob_bytes: self.blob_memory.saturating_mul(1024 * 1024),
            zstd_level: zstd_level(&self.compression)?,
            ..SinkOptions::default()
        })
    }

    /// `--listing-memory` in bytes.
    pub fn listing_bytes(&self) -> usize {
        self.listing_memory.saturating_mul(1024 * 1024)
    }
}

fn zstd_level(spec: &str) -> anyhow::Result<Option<i32>> {
    Ok(match spec {
        "auto" => Some(snapback_repo::repository::DEFAULT_ZSTD_LEVEL),
        "off" => None,
        "max" => Some(19),
        n => match n.parse::<i32>() {
            Ok(l) if (1..=22).contains(&l) => Some(l),
            _ => bail!("--compression must be auto, off, max or 1-22, not {n:?}"),
        },
    })
}

/// How `--stdin-tar` and `--stdin-raw` (`backup`, `sidecar`) read a stream: tar wins, as the
/// two conflict anyway; neither means detect.
pub fn stream_mode(tar: bool, raw: bool) -> StreamMode {
    match (tar, raw) {
        (true, _) => StreamMode::Tar,
        (_, true) => StreamMode::Raw,
        _ => StreamMode::Auto,
    }
}

/// Which paths a walk leaves out: `backup`, `sidecar` and `tar`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExcludeArgs {
    /// Exclude paths matching this pattern (repeatable; restic's rules).
    #[arg(short = 'e', long = "exclude", value_name = "PATTERN")]
    pub excludes: Vec<String>,
    /// Read exclude patterns from this file (repeatable; `#` comments, `$VAR` expanded).
    #[arg(long = "exclude-file", value_name = "FILE")]
    pub exclude_files: Vec<PathBuf>,
    /// Like `--exclude`, ignoring case (repeatable).
    #[arg(long = "iexclude", value_name = "PATTERN")]
    pub iexcludes: Vec<String>,
    /// Like `--exclude-file`, ignoring case (repeatable).
    #[arg(long = "iexclude-file", value_name = "FILE")]
    pub iexclude_files: Vec<PathBuf>,
}

impl ExcludeArgs {
    /// The case-sensitive and the case-insensitive patterns: those given, then those of the
    /// files, in order.
    pub fn patterns(&self) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let mut excludes = self.excludes.clone();
        for f in &self.exclude_files {
            excludes.extend(read_exclude_file(f)?);
        }
        let mut iexcludes = self.iexcludes.clone();
        for f in &self.iexclude_files {
            iexcludes.extend(read_exclude_file(f)?);
        }
        Ok((excludes, iexcludes))
    }
}
