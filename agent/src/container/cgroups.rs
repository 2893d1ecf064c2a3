//! cgroup id → cgroup path, for the cgroup2 hierarchy: the id every kernel record carries is
//! the inode number of the process's cgroup2 directory.
//!
//! Seeded by walking the cgroup2 mount at start-up, kept live from the kernel's
//! `cgroup_mkdir`/`cgroup_rmdir` records. A removed cgroup is kept for a grace period: records
//! made before the rmdir can still be in the ring behind it.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::Arc,
};

use super::path::{self, ContainerRef};

/// Depth and entries bounds of the start-up walk (a node has a few thousand cgroups).
const SEED_MAX_DEPTH: usize = 16;
const SEED_MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone)]
pub struct CgroupEntry {
    pub path: Arc<str>,
    pub container: Option<Arc<ContainerRef>>,
    /// Boot-time ns of the rmdir; evicted a grace period after it.
    removed_ns: Option<u64>,
}

pub struct CgroupMap {
    /// Looked up for every event: foldhash, not std's SipHash (~2 % of the agent's CPU under an
    /// exec storm, for a key the kernel gives, not one a process picks).
    entries: HashMap<u64, CgroupEntry, foldhash::fast::RandomState>,
    grace_ns: u64,
}

impl CgroupMap {
    pub fn new(grace_ns: u64) -> Self {
        Self { entries: HashMap::default(), grace_ns }
    }

    /// Walks the cgroup2 hierarchy at `mount`; returns how many cgroups were recorded.
    /// Unreadable directories are skipped (a cgroup can vanish during the walk).
    pub fn seed(&mut self, mount: &Path) -> usize {
        let mut stack = vec![(mount.to_path_buf(), 0usize)];
        let mut seen = 0;
        while let Some((dir, depth)) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else { continue };
            let rel = dir.strip_prefix(mount).map(|p| format!("/{}", p.display())).unwrap_or_default();
            self.insert(meta.ino(), &rel);
            seen += 1;
            if seen >= SEED_MAX_ENTRIES {
                tracing::warn!(limit = SEED_MAX_ENTRIES, "cgroup walk stopped at its bound; the rest resolve on mkdir only");
                break;
            }
            if depth >= SEED_MAX_DEPTH {
                continue;
            }
            let Ok(children) = std::fs::read_dir(&dir) else { continue };
            for child in children.flatten() {
                if child.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((child.path(), depth + 1));
                }
            }
        }
        seen
    }

    /// Records a cgroup; returns its container when the path names one.
    pub fn insert(&mut self, id: u64, path: &str) -> Option<Arc<ContainerRef>> {
        let path = if path.is_empty() { "/" } else { path };
        let container = path::parse(path).map(Arc::new);
        self.entries.insert(id, CgroupEntry { path: Arc::from(path), container: container.clone(), removed_ns: None });
        container
    }

    pub fn remove(&mut self, id: u64, now_ns: u64) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.removed_ns = Some(now_ns);
        }
    }

    pub fn get(&self, id: u64) -> Option<&CgroupEntry> {
        self.entries.get(&id)
    }

    /// Forgets cgroups removed more than the grace period ago.
    pub fn sweep(&mut self, now_ns: u64) {
        let grace = self.grace_ns;
        self.entries.retain(|_, e| e.removed_ns.is_none_or(|t| now_ns.saturating_sub(t) < grace));
    }

    /// The cgroup path and reference of the container with this id, if its cgroup is known.
    pub fn container(&self, id: &str) -> Option<(Arc<str>, Arc<ContainerRef>)> {
        self.containers().find(|(_, c)| c.id == id).map(|(p, c)| (p.clone(), c.clone()))
    }

    /// Containers known now (for resolving those that ran before the agent started).
    pub fn containers(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<ContainerRef>)> {
        self.entries.values().filter_map(|e| e.container.as_ref().map(|c| (&e.path, c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_cgroups_stay_for_the_grace_period() {
        let mut map = CgroupMap::new(1_000);
        let id64 = "a".repeat(64);
        let c = map.insert(7, &format!("/kubepods/podx/{id64}"));
        assert_eq!(c.map(|c| c.id.clone()), Some(id64));
        map.remove(7, 5_000);
        map.sweep(5_999);
        assert!(map.get(7).is_some());
        map.sweep(6_000);
        assert!(map.get(7).is_none());
    }

    #[test]
    fn seed_walks_a_tree_and_keys_by_inode() {
        let root = std::env::temp_dir().join(format!("peregrine-cgseed-{}", std::process::id()));
        let leaf = root.join("kubepods/besteffort/pod123").join("b".repeat(64));
        std::fs::create_dir_all(&leaf).unwrap_or_else(|e| panic!("{e}"));
        let mut map = CgroupMap::new(0);
        let n = map.seed(&root);
        let ino = std::fs::metadata(&leaf).map(|m| m.ino()).unwrap_or_default();
        let entry = map.get(ino).cloned();
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(n, 5);
        let entry = entry.unwrap_or_else(|| panic!("leaf not seeded"));
        assert_eq!(&*entry.path, format!("/kubepods/besteffort/pod123/{}", "b".repeat(64)));
        assert_eq!(entry.container.map(|c| c.pod_uid.clone()), Some(Some("123".into())));
    }
}
