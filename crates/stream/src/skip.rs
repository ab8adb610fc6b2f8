//! What a walk leaves out: Pod-managed files, pseudo filesystem mount points (from
//! `/proc/self/mountinfo`) and user exclude globs.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::Error;

/// Paths skipped by default when they lie strictly below a walked root: kernel and runtime
/// trees, and the files kubelet injects into every container (restoring them would be wrong).
pub const DEFAULT_SKIPS: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/tmp",
    "/run",
    "/var/lib/kubelet/pods",
    "/var/run/secrets/kubernetes.io",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/dev/termination-log",
];

/// Filesystem types whose mount points are never backed up: their content is synthesised by
/// the kernel or lives in memory only.
pub const PSEUDO_FILESYSTEMS: &[&str] = &[
    "proc",
    "sysfs",
    "tmpfs",
    "devtmpfs",
    "devpts",
    "mqueue",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "bpf",
    "pstore",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "nsfs",
];

/// Why a path is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SkipReason {
    /// One of [`DEFAULT_SKIPS`].
    Default,
    /// Mount point of a pseudo filesystem of this type.
    PseudoMount(String),
}

/// The mount points of pseudo filesystems listed in a mountinfo text, with their fs type.
pub(crate) fn pseudo_mounts(mountinfo: &str) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        // Fields: id parent major:minor root mount-point options [optional...] - fstype source
        let Some(sep) = fields.iter().skip(6).position(|f| *f == "-").map(|i| i + 6) else {
            continue;
        };
        let (Some(mount), Some(fstype)) = (fields.get(4), fields.get(sep + 1)) else {
            continue;
        };
        if PSEUDO_FILESYSTEMS.contains(fstype) {
            out.push((unescape(mount), (*fstype).to_string()));
        }
    }
    out
}

/// Decodes mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` `\`).
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// True when `path` is strictly below `root` (or `root` is `/` and `path` is not `/`).
fn strictly_below(path: &Path, root: &Path) -> bool {
    path != root && path.starts_with(root)
}

/// The compiled skip rules of one walk.
#[derive(Debug)]
pub(crate) struct SkipRules {
    /// Absolute paths to skip, each strictly below some root.
    skip: HashMap<PathBuf, SkipReason>,
    excludes: GlobSet,
    /// Patterns given without a `/`, matched against the base name too.
    excludes_raw: GlobSet,
}

impl SkipRules {
    /// Builds the rules for `roots` (absolute, normalised).
    pub(crate) fn new(
        roots: &[PathBuf],
        mounts: &[(PathBuf, String)],
        default_skips: bool,
        excludes: &[String],
    ) -> Result<Self, Error> {
        let mut skip = HashMap::new();
        let below_a_root = |p: &Path| roots.iter().any(|r| strictly_below(p, r));
        if default_skips {
            for p in DEFAULT_SKIPS.iter().map(PathBuf::from) {
                if below_a_root(&p) {
                    skip.insert(p, SkipReason::Default);
                }
            }
            for (p, fstype) in mounts {
                if below_a_root(p) {
                    skip.entry(p.clone())
                        .or_insert_with(|| SkipReason::PseudoMount(fstype.clone()));
                }
            }
        }
        let mut full = GlobSetBuilder::new();
        let mut base = GlobSetBuilder::new();
        for pattern in excludes {
            let p = pattern.trim_end_matches('/');
            if p.is_empty() {
                continue;
            }
            let glob = |text: &str| {
                GlobBuilder::new(text)
                    .literal_separator(true)
                    .build()
                    .map_err(|source| Error::Pattern {
                        pattern: pattern.clone(),
                        source,
                    })
            };
            if p.starts_with('/') {
                full.add(glob(p)?);
            } else {
                // Like restic: a relative pattern matches at any depth.
                full.add(glob(&format!("**/{p}"))?);
                base.add(glob(p)?);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build().map_err(|source| Error::Pattern {
                pattern: excludes.join(" "),
                source,
            })
        };
        Ok(SkipRules {
            skip,
            excludes: build(full)?,
            excludes_raw: build(base)?,
        })
    }

    /// Whether the absolute `path` is a default skip or a pseudo mount point.
    pub(crate) fn skip_reason(&self, path: &Path) -> Option<&SkipReason> {
        self.skip.get(path)
    }

    /// Whether the absolute `path` matches an exclude pattern.
    pub(crate) fn is_excluded(&self, path: &Path) -> bool {
        self.excludes.is_match(path)
            || path
                .file_name()
                .is_some_and(|name| self.excludes_raw.is_match(Path::new(name)))
    }

    /// All skipped paths (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn skipped(&self) -> std::collections::BTreeSet<PathBuf> {
        self.skip.keys().cloned().collect()
    }
}
