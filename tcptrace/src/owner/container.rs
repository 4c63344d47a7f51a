//! Which container a process runs in, for the views: by the cgroup id the kernel reported when
//! there is one, else by the process's own `/proc/PID/cgroup` (owners learned from the fd scan
//! carry no cgroup id).

use super::cgroup::{CgroupResolver, Container, cgroup_path_of_pid, container_from_path};

/// Names containers with a bounded cache of cgroup ids (see [`CgroupResolver`]).
pub struct ContainerNames {
    resolver: CgroupResolver,
}

impl ContainerNames {
    pub fn new() -> ContainerNames {
        ContainerNames {
            resolver: CgroupResolver::new(),
        }
    }

    pub fn with_resolver(resolver: CgroupResolver) -> ContainerNames {
        ContainerNames { resolver }
    }

    /// The container of process `pid`, whose cgroup v2 id is `cgroup_id` (0: unknown). None for
    /// processes outside containers, and for processes gone whose cgroup is unknown.
    pub fn of(&mut self, pid: u32, cgroup_id: u64) -> Option<Container> {
        if cgroup_id != 0
            && let Some(info) = self.resolver.resolve(cgroup_id)
        {
            return info.container;
        }
        container_from_path(&cgroup_path_of_pid(pid)?)
    }
}

impl Default for ContainerNames {
    fn default() -> Self {
        ContainerNames::new()
    }
}
