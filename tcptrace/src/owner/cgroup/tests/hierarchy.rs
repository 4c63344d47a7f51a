//! The running host's cgroup2 hierarchy: cgroups made for each test, processes and sockets
//! moved into them, and the resolver's cache and walks.

use std::process::{Child, Command, Stdio};

use super::super::*;

/// The inode of a directory: its cgroup id when it is a cgroup.
fn dir_inode(dir: &std::path::Path) -> u64 {
    std::fs::metadata(dir).unwrap().ino()
}

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
