//! What a walk leaves out: Pod-managed files, pseudo filesystem mount points (from
//! `/proc/self/mountinfo`) and user exclude patterns (restic's rules, `snapback-pattern`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use snapback_pattern::Filter;

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
    /// `--exclude` and `--iexclude` patterns.
    excludes: Filter,
}

impl SkipRules {
    /// Builds the rules for `roots` (absolute, normalised).
    pub(crate) fn new(
        roots: &[PathBuf],
        mounts: &[(PathBuf, String)],
        default_skips: bool,
        excludes: &[String],
        iexcludes: &[String],
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
        Ok(SkipRules {
            skip,
            excludes: Filter::new(excludes, iexcludes)?,
        })
    }

    /// Whether the absolute `path` is a default skip or a pseudo mount point.
    pub(crate) fn skip_reason(&self, path: &Path) -> Option<&SkipReason> {
        self.skip.get(path)
    }

    /// Whether the absolute `path` matches an exclude pattern.
    pub(crate) fn is_excluded(&self, path: &Path) -> bool {
        self.excludes.matches(path)
    }

    /// All skipped paths (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn skipped(&self) -> std::collections::BTreeSet<PathBuf> {
        self.skip.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/self/mountinfo` of a container in a Kubernetes Pod (containerd, cgroup v2), with a
    /// PVC mounted at `/data` and a path with a space in a config map volume.
    pub(crate) const POD_MOUNTINFO: &str = "\
1520 1391 0:345 / / rw,relatime master:445 - overlay overlay rw,lowerdir=/var/lib/containerd/l/A,upperdir=/var/lib/containerd/u,workdir=/var/lib/containerd/w
1521 1520 0:348 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1522 1520 0:349 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
1523 1522 0:350 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
1524 1522 0:344 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
1525 1520 0:351 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
1526 1525 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate,memory_recursiveprot
1527 1520 253:1 /var/lib/kubelet/pods/8f1c/volumes/kubernetes.io~csi/pvc-42/mount /data rw,relatime - ext4 /dev/rbd0 rw
1528 1520 253:1 /var/lib/kubelet/pods/8f1c/volumes/kubernetes.io~configmap/cfg /etc/app\\040config ro,relatime - ext4 /dev/vda1 rw
1529 1520 253:1 /var/lib/kubelet/pods/8f1c/etc-hosts /etc/hosts rw,relatime - ext4 /dev/vda1 rw
1530 1522 253:1 /var/lib/kubelet/pods/8f1c/containers/app/0d2e /dev/termination-log rw,relatime - ext4 /dev/vda1 rw
1531 1520 253:1 /var/lib/containerd/sandboxes/77/hostname /etc/hostname rw,relatime - ext4 /dev/vda1 rw
1532 1520 253:1 /var/lib/containerd/sandboxes/77/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda1 rw
1533 1522 0:343 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
1534 1520 0:340 / /var/run/secrets/kubernetes.io/serviceaccount ro,relatime - tmpfs tmpfs rw,size=7945412k
1535 1520 0:352 / /cache rw,relatime - tmpfs tmpfs rw,size=1048576k
1536 1521 0:348 /bus /proc/bus ro,nosuid,nodev,noexec,relatime - proc proc rw
";

    fn rules_for(roots: &[&str], mountinfo: &str) -> SkipRules {
        let roots: Vec<PathBuf> = roots.iter().map(PathBuf::from).collect();
        SkipRules::new(&roots, &pseudo_mounts(mountinfo), true, &[], &[]).unwrap()
    }

    #[test]
    fn pod_mountinfo_skips_runtime_mounts_and_keeps_data_volume() {
        let rules = rules_for(&["/"], POD_MOUNTINFO);
        let expected: std::collections::BTreeSet<PathBuf> = [
            // defaults
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
            // pseudo filesystems from the mountinfo
            "/dev/pts",
            "/dev/mqueue",
            "/sys/fs/cgroup",
            "/dev/shm",
            "/var/run/secrets/kubernetes.io/serviceaccount",
            "/cache",
            "/proc/bus",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(rules.skipped(), expected);
        assert_eq!(
            rules.skip_reason(Path::new("/cache")),
            Some(&SkipReason::PseudoMount("tmpfs".into()))
        );
        for kept in ["/data", "/etc/app config", "/etc", "/var/lib", "/"] {
            assert_eq!(rules.skip_reason(Path::new(kept)), None, "{kept}");
        }
    }

    #[test]
    fn mountinfo_octal_escapes_are_decoded() {
        let line = "1 0 0:1 / /mnt/with\\040space\\011tab\\134slash rw - tmpfs tmpfs rw\n";
        assert_eq!(
            pseudo_mounts(line),
            vec![(
                PathBuf::from("/mnt/with space\ttab\\slash"),
                "tmpfs".to_string()
            )]
        );
        // A backslash not followed by three octal digits stays as is.
        assert_eq!(unescape("/a\\9b\\04"), PathBuf::from("/a\\9b\\04"));
    }

    #[test]
    fn mountinfo_with_optional_fields_finds_fstype_after_separator() {
        let line = "36 35 98:0 / /x rw shared:1 master:2 - proc proc rw\n\
                    37 35 98:0 / /y rw - ext4 /dev/sda rw\n\
                    garbage line\n";
        assert_eq!(
            pseudo_mounts(line),
            vec![(PathBuf::from("/x"), "proc".into())]
        );
    }

    #[test]
    fn default_skips_apply_only_strictly_below_a_root() {
        // Backing up /tmp/x or /proc/x explicitly works: nothing above the root is skipped.
        assert!(rules_for(&["/tmp/x"], POD_MOUNTINFO).skipped().is_empty());
        assert!(rules_for(&["/tmp"], POD_MOUNTINFO).skipped().is_empty());
        let var = rules_for(&["/var"], POD_MOUNTINFO).skipped();
        let expected: std::collections::BTreeSet<PathBuf> = [
            "/var/lib/kubelet/pods",
            "/var/run/secrets/kubernetes.io",
            "/var/run/secrets/kubernetes.io/serviceaccount",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(var, expected);
        let etc = rules_for(&["/etc"], POD_MOUNTINFO).skipped();
        assert!(etc.contains(Path::new("/etc/hosts")));
        assert!(!etc.contains(Path::new("/etc/app config")));
    }

    #[test]
    fn default_skips_can_be_turned_off() {
        let rules = SkipRules::new(
            &[PathBuf::from("/")],
            &pseudo_mounts(POD_MOUNTINFO),
            false,
            &[],
            &[],
        )
        .unwrap();
        assert!(rules.skipped().is_empty());
    }

    #[test]
    fn exclude_globs_match_base_name_and_absolute_path() {
        let pats: Vec<String> = ["*.log", "/data/cache", "node_modules", "build/*.o"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rules = SkipRules::new(&[PathBuf::from("/data")], &[], true, &pats, &[]).unwrap();
        for hit in [
            "/data/app.log",
            "/data/deep/x/y.log",
            "/data/cache",
            "/data/a/node_modules",
            "/data/src/build/main.o",
        ] {
            assert!(rules.is_excluded(Path::new(hit)), "{hit}");
        }
        for miss in [
            "/data/app.log.gz",
            "/data/x/cache", // anchored pattern
            "/data/node_modules_keep",
            "/data/build/sub/main.o", // `*` does not cross `/`
        ] {
            assert!(!rules.is_excluded(Path::new(miss)), "{miss}");
        }
    }

    #[test]
    fn invalid_exclude_glob_is_a_pattern_error() {
        let err = SkipRules::new(&[], &[], true, &[], &["a[".to_string()]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Pattern(snapback_pattern::Error::Invalid { ref pattern, .. }) if pattern == "a["
            ),
            "{err}"
        );
    }
}
