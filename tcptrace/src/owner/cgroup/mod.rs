//! cgroup v2 id -> cgroup path -> container identity.
//!
//! `bpf_get_current_cgroup_id()` returns the id of the task's cgroup in the v2 hierarchy, the
//! kernfs node id (`cgroup_id()` in
//! <https://github.com/torvalds/linux/blob/v6.1/include/linux/cgroup.h>). On 64-bit kernels that
//! id is also the inode number of the cgroup's directory in any cgroup2 mount (`kernfs_ino()` in
//! <https://github.com/torvalds/linux/blob/v6.1/include/linux/kernfs.h>), so a directory walk
//! maps ids to paths. Ids are never reused while the kernel runs, so a cached id -> path entry
//! can go stale (the cgroup is removed) but never wrong.
//!
//! The v2 hierarchy is mounted at `/sys/fs/cgroup` on unified hosts and at
//! `/sys/fs/cgroup/unified` on hybrid ones; both are found through `/proc/self/mountinfo`.

use std::collections::HashMap;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where the cgroup v2 hierarchy is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup2Mount {
    pub mount_point: PathBuf,
    /// The cgroup the mount shows at its top, written as `/proc/PID/cgroup` writes paths: `/` on
    /// a host, the container's own cgroup inside a container without a cgroup namespace.
    pub root: String,
}

impl Cgroup2Mount {
    /// The cgroup2 mount of this mount namespace, preferring the standard places.
    pub fn find() -> Option<Cgroup2Mount> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        parse_mountinfo(&text)
    }

    /// The directory of the cgroup at `path` (as `/proc/PID/cgroup` writes it), if it lies under
    /// this mount.
    pub fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let rel = if self.root == "/" {
            path.strip_prefix('/')?
        } else {
            let rest = path.strip_prefix(self.root.as_str())?;
            if rest.is_empty() {
                rest
            } else {
                rest.strip_prefix('/')?
            }
        };
        // A cgroup outside our cgroup namespace shows as `/../..`: not reachable from here.
        if rel.split('/').any(|c| c == "..") {
            return None;
        }
        Some(self.mount_point.join(rel))
    }

    /// The cgroup v2 id of a process: its `0::` line in `/proc/PID/cgroup`, then the inode of
    /// that directory.
    pub fn cgroup_id_of_pid(&self, pid: u32) -> Option<u64> {
        let path = cgroup_path_of_pid(pid)?;
        Some(std::fs::metadata(self.dir_of(&path)?).ok()?.ino())
    }
}

/// The cgroup v2 id of a process, as `bpf_get_current_cgroup_id()` returns it in that process.
/// The mount is looked up once per program run.
pub fn cgroup_id_of_pid(pid: u32) -> Option<u64> {
    static MOUNT: OnceLock<Option<Cgroup2Mount>> = OnceLock::new();
    MOUNT
        .get_or_init(Cgroup2Mount::find)
        .as_ref()?
        .cgroup_id_of_pid(pid)
}

/// The process's v2 cgroup path: the `0::PATH` line of `/proc/PID/cgroup`.
pub fn cgroup_path_of_pid(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Picks the cgroup2 mount from `/proc/PID/mountinfo` text: `/sys/fs/cgroup` (unified), then
/// `/sys/fs/cgroup/unified` (hybrid), then the first one listed.
fn parse_mountinfo(text: &str) -> Option<Cgroup2Mount> {
    let mounts: Vec<Cgroup2Mount> = text
        .lines()
        .filter_map(|line| {
            // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|&f| f == "-")?;
            if sep < 5 || fields.get(sep + 1) != Some(&"cgroup2") {
                return None;
            }
            Some(Cgroup2Mount {
                mount_point: PathBuf::from(unescape_octal(fields[4])),
                root: unescape_octal(fields[3]),
            })
        })
        .collect();
    let rank = |m: &Cgroup2Mount| match m.mount_point.to_str() {
        Some("/sys/fs/cgroup") => 0,
        Some("/sys/fs/cgroup/unified") => 1,
        _ => 2,
    };
    mounts
        .into_iter()
        .enumerate()
        .min_by_key(|(i, m)| (rank(m), *i))
        .map(|(_, m)| m)
}

/// Undoes mountinfo's `\ooo` escapes (space, tab, newline, backslash).
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], code) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The container engine that named the cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
    /// A bare container id, as kubelet's cgroupfs driver lays it out
    /// (`/kubepods/<qos>/pod<uid>/<id>`): the path does not say which runtime made it.
    Unknown,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
            Runtime::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A container, as its cgroup path names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Container {
    pub runtime: Runtime,
    /// The full 64-hex-digit id.
    pub id: String,
    /// The Kubernetes pod's uid, with dashes (`0f1e2d3c-4b5a-...`), when the path is under
    /// kubepods.
    pub pod_uid: Option<String>,
}

impl Container {
    /// The 12-digit id `docker ps` and `crictl ps` show.
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }
}

/// A resolved cgroup: its path in the v2 hierarchy and the container it belongs to, if any.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CgroupInfo {
    /// As `/proc/PID/cgroup` writes it: `/system.slice/docker-<id>.scope`.
    pub path: String,
    pub container: Option<Container>,
}

impl CgroupInfo {
    pub fn new(path: String) -> CgroupInfo {
        let container = container_from_path(&path);
        CgroupInfo { path, container }
    }
}

/// Recognises the cgroup layouts of Docker, containerd, CRI-O and Podman, under systemd or
/// cgroupfs, with or without Kubernetes. The deepest container in the path wins (a container
/// may make cgroups of its own below its scope). Monitors (`crio-conmon-`, `libpod-conmon-`) are
/// not containers.
pub fn container_from_path(path: &str) -> Option<Container> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (at, runtime, id) = parts.iter().enumerate().rev().find_map(|(i, part)| {
        let parent = i.checked_sub(1).map(|j| parts[j]);
        container_in(part, parent).map(|(runtime, id)| (i, runtime, id))
    })?;
    let under_kubepods = parts[..at].iter().any(|p| p.starts_with("kubepods"));
    let pod_uid = if under_kubepods {
        parts[..at].iter().rev().find_map(|p| pod_uid_in(p))
    } else {
        None
    };
    Some(Container {
        runtime,
        id: id.to_owned(),
        pod_uid,
    })
}

/// One path component that names a container: `<prefix><id>[.scope]` or a bare id.
fn container_in<'a>(part: &'a str, parent: Option<&str>) -> Option<(Runtime, &'a str)> {
    const PREFIXES: [(&str, Runtime); 4] = [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
    ];
    let name = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix).filter(|id| is_container_id(id)) {
            return Some((runtime, id));
        }
    }
    if is_container_id(part) {
        // Docker's cgroupfs driver: `/docker/<id>`.
        let runtime = if parent == Some("docker") {
            Runtime::Docker
        } else {
            Runtime::Unknown
        };
        return Some((runtime, part));
    }
    None
}

/// A pod cgroup component: `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd driver;
/// systemd reserves `-` in unit names) or `pod<uid>` (cgroupfs driver).
fn pod_uid_in(part: &str) -> Option<String> {
    let raw = match part.strip_suffix(".slice") {
        Some(slice) => &slice[slice.rfind("-pod")? + 4..],
        None => part.strip_prefix("pod")?,
    };
    let uid = raw.replace('_', "-");
    is_uuid(&uid).then_some(uid)
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Maps cgroup ids (from `bpf_get_current_cgroup_id`) to paths and containers, with a bounded
/// cache. A miss walks the whole v2 hierarchy, at most once per `min_walk_interval`; misses in
/// between return `None`, so a stream of unknown ids cannot turn into a stream of walks.
pub struct CgroupResolver {
    mount: Option<Cgroup2Mount>,
    cache: HashMap<u64, CgroupInfo>,
    capacity: usize,
    min_walk_interval: Duration,
    last_walk: Option<Instant>,
    walks: u64,
}

impl CgroupResolver {
    pub const DEFAULT_CAPACITY: usize = 8192;
    pub const DEFAULT_WALK_INTERVAL: Duration = Duration::from_secs(1);

    /// A resolver for this host's cgroup2 mount. It resolves nothing if there is none.
    pub fn new() -> CgroupResolver {
        CgroupResolver::with_mount(
            Cgroup2Mount::find(),
            Self::DEFAULT_CAPACITY,
            Self::DEFAULT_WALK_INTERVAL,
        )
    }

    pub fn with_mount(
        mount: Option<Cgroup2Mount>,
        capacity: usize,
        min_walk_interval: Duration,
    ) -> CgroupResolver {
        CgroupResolver {
            mount,
            cache: HashMap::new(),
            capacity: capacity.max(1),
            min_walk_interval,
            last_walk: None,
            walks: 0,
        }
    }

    pub fn mount(&self) -> Option<&Cgroup2Mount> {
        self.mount.as_ref()
    }

    /// How many times the hierarchy has been walked.
    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// Cached entries; never more than the capacity.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    pub fn resolve(&mut self, id: u64) -> Option<CgroupInfo> {
        if let Some(info) = self.cache.get(&id) {
            return Some(info.clone());
        }
        let mount = self.mount.as_ref()?;
        if self
            .last_walk
            .is_some_and(|t| t.elapsed() < self.min_walk_interval)
        {
            return None;
        }
        self.last_walk = Some(Instant::now());
        self.walks += 1;
        let live = walk_hierarchy(mount);
        self.refill(id, live);
        self.cache.get(&id).cloned()
    }

    /// Rebuilds the cache after a walk, up to capacity, in order of worth: the id asked for,
    /// cached entries still alive, the rest of the hierarchy, then cached entries of removed
    /// cgroups (queued events may still name them).
    fn refill(&mut self, wanted: u64, mut live: HashMap<u64, String>) {
        let mut old = std::mem::take(&mut self.cache);
        let mut next = HashMap::with_capacity(self.capacity.min(live.len() + old.len()));
        if let Some(path) = live.remove(&wanted) {
            next.insert(wanted, CgroupInfo::new(path));
        }
        old.retain(|id, info| {
            if next.len() < self.capacity && live.remove(id).is_some() {
                next.insert(*id, info.clone());
                return false;
            }
            true
        });
        for (id, path) in live {
            if next.len() >= self.capacity {
                break;
            }
            next.insert(id, CgroupInfo::new(path));
        }
        for (id, info) in old {
            if next.len() >= self.capacity {
                break;
            }
            next.insert(id, info);
        }
        self.cache = next;
    }
}

impl Default for CgroupResolver {
    fn default() -> Self {
        CgroupResolver::new()
    }
}

/// Every cgroup under the mount: directory inode -> path. Directories that vanish during the
/// walk are skipped.
fn walk_hierarchy(mount: &Cgroup2Mount) -> HashMap<u64, String> {
    let mut found = HashMap::new();
    let Ok(top) = std::fs::metadata(&mount.mount_point) else {
        return found;
    };
    found.insert(top.ino(), mount.root.clone());
    let mut stack: Vec<(PathBuf, String)> = vec![(mount.mount_point.clone(), mount.root.clone())];
    while let Some((dir, path)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // Only directories are cgroups; the d_type from readdir needs no stat.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let child = if path == "/" {
                format!("/{name}")
            } else {
                format!("{path}/{name}")
            };
            // kernfs fills d_ino with the node id (`kernfs_fop_readdir`).
            found.insert(entry.ino(), child.clone());
            stack.push((entry.path(), child));
        }
    }
    found
}

#[cfg(test)]
mod tests;
