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

/// The inode of a directory: its cgroup id when it is a cgroup. For tests here and in
/// `source::sock_diag`.
#[cfg(test)]
pub(crate) fn dir_inode(dir: &std::path::Path) -> u64 {
    std::fs::metadata(dir).unwrap().ino()
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};

    use super::*;

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    const UID_: &str = "0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0";

    fn container(path: &str) -> Option<(Runtime, String, Option<String>)> {
        container_from_path(path).map(|c| (c.runtime, c.id, c.pod_uid))
    }

    fn some(runtime: Runtime, pod: Option<&str>) -> Option<(Runtime, String, Option<String>)> {
        Some((runtime, ID.to_string(), pod.map(str::to_string)))
    }

    #[test]
    fn docker_under_systemd_and_cgroupfs() {
        assert_eq!(
            container(&format!("/system.slice/docker-{ID}.scope")),
            some(Runtime::Docker, None)
        );
        assert_eq!(
            container(&format!("/docker/{ID}")),
            some(Runtime::Docker, None)
        );
        let c = container_from_path(&format!("/docker/{ID}")).unwrap();
        assert_eq!(c.short_id(), "3f4e5d6c7b8a");
    }

    #[test]
    fn kubernetes_systemd_driver_names_runtime_and_pod() {
        let pod =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        assert_eq!(
            container(&format!("{pod}/cri-containerd-{ID}.scope")),
            some(Runtime::Containerd, Some(UID))
        );
        assert_eq!(
            container(&format!("{pod}/crio-{ID}.scope")),
            some(Runtime::CriO, Some(UID))
        );
        assert_eq!(
            container(&format!("{pod}/docker-{ID}.scope")),
            some(Runtime::Docker, Some(UID))
        );
        // Guaranteed QoS pods sit directly under kubepods.slice.
        assert_eq!(
            container(&format!(
                "/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope"
            )),
            some(Runtime::CriO, Some(UID))
        );
        // The pod's own cgroup is not a container, nor is CRI-O's monitor.
        assert_eq!(container(&pod), None);
        assert_eq!(container(&format!("{pod}/crio-conmon-{ID}.scope")), None);
    }

    #[test]
    fn kubernetes_cgroupfs_driver_gives_id_and_pod_but_no_runtime() {
        assert_eq!(
            container(&format!("/kubepods/burstable/pod{UID}/{ID}")),
            some(Runtime::Unknown, Some(UID))
        );
        assert_eq!(
            container(&format!("/kubepods/pod{UID}/{ID}")),
            some(Runtime::Unknown, Some(UID))
        );
        assert_eq!(
            container(&format!("/kubepods/besteffort/pod{UID}/crio-{ID}")),
            some(Runtime::CriO, Some(UID))
        );
    }

    #[test]
    fn podman_scopes_rootful_and_rootless() {
        assert_eq!(
            container(&format!("/machine.slice/libpod-{ID}.scope")),
            some(Runtime::Podman, None)
        );
        // Podman puts the container's processes one level down when it runs systemd inside.
        assert_eq!(
            container(&format!("/machine.slice/libpod-{ID}.scope/container")),
            some(Runtime::Podman, None)
        );
        assert_eq!(
            container(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
            )),
            some(Runtime::Podman, None)
        );
        assert_eq!(
            container(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
        assert_eq!(
            container(&format!("/libpod_parent/libpod-{ID}")),
            some(Runtime::Podman, None)
        );
    }

    #[test]
    fn the_deepest_container_wins() {
        let inner = "a".repeat(64);
        let c = container_from_path(&format!("/system.slice/docker-{ID}.scope/docker/{inner}"))
            .unwrap();
        assert_eq!((c.runtime, c.id), (Runtime::Docker, inner));
    }

    #[test]
    fn ordinary_paths_and_bad_ids_are_not_containers() {
        for path in [
            "",
            "/",
            "/system.slice/sshd.service",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/docker.service",
            &format!("/system.slice/docker-{}.scope", &ID[..63]),
            &format!("/system.slice/docker-{}.scope", ID.to_uppercase()),
            &format!("/system.slice/docker-{ID}0.scope"),
        ] {
            assert_eq!(container(path), None, "{path}");
        }
        // A pod-looking component outside kubepods is not a pod.
        assert_eq!(
            container(&format!("/pod{UID}/docker/{ID}")),
            some(Runtime::Docker, None)
        );
    }

    #[test]
    fn mountinfo_unified_hybrid_and_escaped() {
        let unified = "\
24 1 0:22 / / rw - ext4 /dev/sda1 rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";
        assert_eq!(
            parse_mountinfo(unified),
            Some(Cgroup2Mount {
                mount_point: "/sys/fs/cgroup".into(),
                root: "/".into()
            })
        );
        let hybrid = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_mountinfo(hybrid).unwrap().mount_point,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        // A second mount elsewhere (a container's bind) loses to the standard place.
        let two = "\
50 24 0:26 /kubepods.slice /var/lib/x\\040y rw - cgroup2 cgroup2 rw
30 24 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_mountinfo(two).unwrap().mount_point,
            PathBuf::from("/sys/fs/cgroup")
        );
        let only_odd = parse_mountinfo(two.lines().next().unwrap()).unwrap();
        assert_eq!(only_odd.mount_point, PathBuf::from("/var/lib/x y"));
        assert_eq!(only_odd.root, "/kubepods.slice");
        assert_eq!(
            parse_mountinfo("30 24 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw"),
            None
        );
        assert_eq!(parse_mountinfo("garbage\n- cgroup2\n"), None);
    }

    #[test]
    fn dir_of_respects_the_mount_root() {
        let host = Cgroup2Mount {
            mount_point: "/sys/fs/cgroup".into(),
            root: "/".into(),
        };
        assert_eq!(host.dir_of("/"), Some("/sys/fs/cgroup/".into()));
        assert_eq!(host.dir_of("/a/b"), Some("/sys/fs/cgroup/a/b".into()));
        assert_eq!(host.dir_of("/../other"), None);
        let inside = Cgroup2Mount {
            mount_point: "/sys/fs/cgroup".into(),
            root: "/k8s/pod".into(),
        };
        assert_eq!(
            inside.dir_of("/k8s/pod/app"),
            Some("/sys/fs/cgroup/app".into())
        );
        assert_eq!(inside.dir_of("/k8s/pod"), Some("/sys/fs/cgroup/".into()));
        assert_eq!(inside.dir_of("/k8s/podx"), None);
        assert_eq!(inside.dir_of("/elsewhere"), None);
    }

    // ---- the live hierarchy ----

    /// `statfs` magic of a cgroup2 file system.
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

    fn live_mount() -> Cgroup2Mount {
        let mount = Cgroup2Mount::find().expect("this host has a cgroup2 mount");
        let path = std::ffi::CString::new(mount.mount_point.to_str().unwrap()).unwrap();
        // SAFETY: statfs writes into the zeroed struct we own.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statfs(path.as_ptr(), &mut st) }, 0);
        assert_eq!(
            st.f_type as i64, CGROUP2_SUPER_MAGIC,
            "{mount:?} is not cgroup2"
        );
        mount
    }

    /// A cgroup made for one test, removed (with its processes moved back) on drop.
    struct TestCgroup {
        dir: PathBuf,
        path: String,
        home: Option<PathBuf>,
        child: Option<Child>,
    }

    impl TestCgroup {
        fn new(mount: &Cgroup2Mount, name: &str) -> TestCgroup {
            let dir = mount.mount_point.join(name);
            std::fs::create_dir(&dir).unwrap();
            let path = if mount.root == "/" {
                format!("/{name}")
            } else {
                format!("{}/{name}", mount.root)
            };
            TestCgroup {
                dir,
                path,
                home: None,
                child: None,
            }
        }

        /// Starts a `sleep` and moves it into this cgroup.
        fn with_child(self, mount: &Cgroup2Mount) -> TestCgroup {
            let child = Command::new("sleep")
                .arg("30")
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            self.adopt(mount, child)
        }

        /// Moves `child` into this cgroup; on drop it goes back home and is killed.
        fn adopt(mut self, mount: &Cgroup2Mount, child: Child) -> TestCgroup {
            let home = mount
                .dir_of(&cgroup_path_of_pid(child.id()).unwrap())
                .unwrap();
            self.home = Some(home);
            let pid = child.id();
            self.child = Some(child);
            std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
            self
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            if let (Some(child), Some(home)) = (&mut self.child, &self.home) {
                let _ = std::fs::write(home.join("cgroup.procs"), child.id().to_string());
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir(&self.dir);
        }
    }

    /// 64 random hex digits: a fresh container-like id per test.
    fn unique_hex() -> String {
        let mut bytes = [0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").unwrap(),
            &mut bytes,
        )
        .unwrap();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_socket_made_inside_a_container_scope_names_that_container() {
        use std::io::{BufRead, BufReader, Write};

        let mount = live_mount();
        let hex = unique_hex();
        let scope = TestCgroup::new(&mount, &format!("cri-containerd-{hex}.scope"));
        // The shell waits for a line, by which time it is in the scope, then becomes a perl
        // listener (perl-base ships IO::Socket) that prints its port.
        let child = Command::new("sh")
            .args([
                "-c",
                "read go; exec perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(\
                 Listen => 1, LocalAddr => q(127.0.0.1), LocalPort => 0) or die; \
                 $| = 1; print $s->sockport, qq(\\n); sleep 30'",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut scope = scope.adopt(&mount, child);
        let child = scope.child.as_mut().unwrap();
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("child said {line:?}"));

        let netns = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let rows = crate::source::sock_diag::dump_tcp(netns).unwrap();
        let row = rows
            .iter()
            .find(|s| s.local.port() == port && s.state == tcptrace_common::TcpState::Listen)
            .expect("the child's listener is in the dump");
        assert_eq!(row.cgroup_id, dir_inode(&scope.dir));

        let info = CgroupResolver::new().resolve(row.cgroup_id).unwrap();
        let c = info.container.unwrap();
        assert_eq!((c.runtime, c.id), (Runtime::Containerd, hex));
    }

    #[test]
    fn own_cgroup_id_matches_the_directory_inode() {
        let mount = live_mount();
        let me = std::process::id();
        let path = cgroup_path_of_pid(me).unwrap();
        let id = cgroup_id_of_pid(me).unwrap();
        assert_eq!(id, dir_inode(&mount.dir_of(&path).unwrap()));
        let mut resolver = CgroupResolver::new();
        assert_eq!(resolver.resolve(id).map(|i| i.path), Some(path));
    }

    #[test]
    fn a_process_moved_into_a_docker_scope_resolves_to_that_container() {
        let mount = live_mount();
        let hex = unique_hex();
        let cg = TestCgroup::new(&mount, &format!("docker-{hex}.scope")).with_child(&mount);
        let pid = cg.child.as_ref().unwrap().id();

        assert_eq!(cgroup_path_of_pid(pid).as_deref(), Some(cg.path.as_str()));
        let id = cgroup_id_of_pid(pid).unwrap();
        assert_eq!(id, dir_inode(&cg.dir));
        assert_ne!(Some(id), cgroup_id_of_pid(std::process::id()));

        let mut resolver = CgroupResolver::new();
        let info = resolver.resolve(id).expect("the new cgroup resolves");
        assert_eq!(info.path, cg.path);
        let c = info.container.expect("a docker scope is a container");
        assert_eq!(
            (c.runtime, c.id.as_str(), c.pod_uid.as_deref()),
            (Runtime::Docker, hex.as_str(), None)
        );
        assert_eq!(c.short_id(), &hex[..12]);
        drop(cg);
        assert!(
            !mount
                .mount_point
                .join(format!("docker-{hex}.scope"))
                .exists()
        );
    }

    #[test]
    fn misses_walk_at_most_once_per_interval() {
        let mount = live_mount();
        let mut resolver =
            CgroupResolver::with_mount(Some(mount.clone()), 1024, Duration::from_secs(3600));
        let a = TestCgroup::new(&mount, &format!("tcptrace-test-{}", &unique_hex()[..16]));
        let a_id = dir_inode(&a.dir);
        assert_eq!(resolver.resolve(a_id).map(|i| i.path), Some(a.path.clone()));
        assert_eq!(resolver.walks(), 1);

        // Made after the walk: unknown until the next walk is allowed.
        let b = TestCgroup::new(&mount, &format!("tcptrace-test-{}", &unique_hex()[..16]));
        assert_eq!(resolver.resolve(dir_inode(&b.dir)), None);
        assert_eq!(resolver.resolve(u64::MAX), None);
        assert_eq!(resolver.walks(), 1);
        // Hits need no walk.
        assert!(resolver.resolve(a_id).is_some());
        assert_eq!(resolver.walks(), 1);

        let mut eager = CgroupResolver::with_mount(Some(mount), 1024, Duration::ZERO);
        assert_eq!(
            eager.resolve(dir_inode(&b.dir)).map(|i| i.path),
            Some(b.path.clone())
        );
    }

    #[test]
    fn the_cache_stays_within_capacity_and_keeps_what_was_asked() {
        let mount = live_mount();
        let cgs: Vec<TestCgroup> = (0..4)
            .map(|_| TestCgroup::new(&mount, &format!("tcptrace-test-{}", &unique_hex()[..16])))
            .collect();
        let mut resolver = CgroupResolver::with_mount(Some(mount), 2, Duration::ZERO);
        for cg in &cgs {
            let id = dir_inode(&cg.dir);
            assert_eq!(resolver.resolve(id).map(|i| i.path), Some(cg.path.clone()));
            assert!(resolver.len() <= 2);
            // Just resolved: a hit now, no walk.
            let walks = resolver.walks();
            assert!(resolver.resolve(id).is_some());
            assert_eq!(resolver.walks(), walks);
        }
    }

    #[test]
    fn no_mount_resolves_nothing() {
        let mut resolver = CgroupResolver::with_mount(None, 16, Duration::ZERO);
        assert_eq!(resolver.resolve(1), None);
        assert_eq!(resolver.walks(), 0);
    }
}
