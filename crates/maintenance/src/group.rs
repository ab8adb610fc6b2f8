//! Selecting snapshots (`--host`, `--tag`, `--path`) and grouping them (`--group-by`), as
//! restic does before applying a keep policy.

use std::str::FromStr;

use snapback_repo::file::SnapshotFile;
use snapback_repo::Id;

use crate::policy::TagList;
use crate::{Error, Result};

/// Which snapshots an operation looks at; empty fields select everything.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    /// Any of these hosts.
    pub hosts: Vec<String>,
    /// All tags of any of these lists.
    pub tags: Vec<TagList>,
    /// All of these paths (restic's `HasPaths`).
    pub paths: Vec<String>,
    /// None of these tags: such snapshots are neither counted nor removed (the sidecar's
    /// on-demand snapshots; restic has no such flag).
    pub exclude_tags: Vec<String>,
}

impl SnapshotFilter {
    /// Whether `s` is selected.
    pub fn matches(&self, s: &SnapshotFile) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&s.hostname))
            && (self.tags.is_empty() || self.tags.iter().any(|t| t.matches(s)))
            && self.paths.iter().all(|p| s.paths.contains(p))
            && !s.tags.iter().any(|t| self.exclude_tags.contains(t))
    }
}

/// The fields snapshots are grouped by (restic's default: host and paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    /// Same host name.
    pub host: bool,
    /// Same set of paths.
    pub paths: bool,
    /// Same set of tags.
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

impl FromStr for GroupBy {
    type Err = Error;

    /// `host,paths`, `tags`, ... or an empty string for one group of everything.
    fn from_str(s: &str) -> Result<Self> {
        let mut g = GroupBy {
            host: false,
            paths: false,
            tags: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" => g.paths = true,
                "tags" => g.tags = true,
                other => {
                    return Err(Error::InvalidOption {
                        what: "group-by",
                        value: other.to_string(),
                        reason: "use host, paths and/or tags".into(),
                    })
                }
            }
        }
        Ok(g)
    }
}

/// What a group's snapshots have in common; the fields not grouped by are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    /// Host name.
    pub host: String,
    /// Paths, sorted.
    pub paths: Vec<String>,
    /// Tags, sorted.
    pub tags: Vec<String>,
}

impl GroupKey {
    /// The key of snapshot `s` under `by`.
    pub fn of(s: &SnapshotFile, by: GroupBy) -> Self {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        GroupKey {
            host: if by.host {
                s.hostname.clone()
            } else {
                String::new()
            },
            paths: if by.paths { sorted(&s.paths) } else { vec![] },
            tags: if by.tags { sorted(&s.tags) } else { vec![] },
        }
    }

    /// restic's heading, e.g. `host [h], paths [/data]`.
    pub fn describe(&self, by: GroupBy) -> String {
        let mut parts = Vec::new();
        if by.host {
            parts.push(format!("host [{}]", self.host));
        }
        if by.tags {
            parts.push(format!("tags [{}]", self.tags.join(", ")));
        }
        if by.paths {
            parts.push(format!("paths [{}]", self.paths.join(", ")));
        }
        parts.join(", ")
    }
}

/// The selected snapshots in groups, ordered by key.
pub fn group(
    snapshots: Vec<(Id, SnapshotFile)>,
    filter: &SnapshotFilter,
    by: GroupBy,
) -> Vec<(GroupKey, Vec<(Id, SnapshotFile)>)> {
    let mut groups: std::collections::BTreeMap<GroupKey, Vec<(Id, SnapshotFile)>> =
        Default::default();
    for (id, s) in snapshots.into_iter().filter(|(_, s)| filter.matches(s)) {
        groups
            .entry(GroupKey::of(&s, by))
            .or_default()
            .push((id, s));
    }
    groups.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(host: &str, paths: &[&str], tags: &[&str]) -> (Id, SnapshotFile) {
        let file = SnapshotFile {
            time: chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").unwrap(),
            parent: None,
            tree: Id::hash(b"t"),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            hostname: host.into(),
            username: String::new(),
            uid: 0,
            gid: 0,
            excludes: vec![],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            original: None,
            program_version: None,
        };
        (
            Id::hash(format!("{host}{paths:?}{tags:?}").as_bytes()),
            file,
        )
    }

    #[test]
    fn groups_by_host_and_path_set_and_filters_by_tag_lists() {
        let snaps = vec![
            snap("a", &["/x", "/y"], &["t1"]),
            snap("a", &["/y", "/x"], &["t2"]),
            snap("b", &["/x", "/y"], &["t1", "t2"]),
        ];
        let groups = group(
            snaps.clone(),
            &SnapshotFilter::default(),
            GroupBy::default(),
        );
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].1.len(), 2);
        assert_eq!(
            groups[0].0.describe(GroupBy::default()),
            "host [a], paths [/x, /y]"
        );

        let f = SnapshotFilter {
            tags: vec!["t1,t2".parse().unwrap(), "t2".parse().unwrap()],
            ..Default::default()
        };
        let by: GroupBy = "".parse().unwrap();
        let groups = group(snaps.clone(), &f, by);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].1.len(), 2);

        let f = SnapshotFilter {
            hosts: vec!["b".into()],
            paths: vec!["/y".into()],
            ..Default::default()
        };
        assert_eq!(group(snaps.clone(), &f, "tags".parse().unwrap()).len(), 1);

        // An excluded tag hides its snapshots whatever else matches.
        let f = SnapshotFilter {
            exclude_tags: vec!["t2".into()],
            ..Default::default()
        };
        let groups = group(snaps, &f, by);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].1.len(), 1);
        assert_eq!(groups[0].1[0].1.tags, vec!["t1".to_string()]);
        assert!("host,colour".parse::<GroupBy>().is_err());
    }
}
