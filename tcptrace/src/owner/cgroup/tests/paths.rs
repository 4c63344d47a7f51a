//! What cgroup paths and mount tables mean: container ids, pods and runtimes from paths,
//! the cgroup2 mount from mountinfo. No kernel involved.

use super::super::*;

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
    let c =
        container_from_path(&format!("/system.slice/docker-{ID}.scope/docker/{inner}")).unwrap();
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
