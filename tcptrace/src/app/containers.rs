//! Names the container of each process row of a summary. The engine does not read the host;
//! the commands do, through one long-lived [`ContainerNames`] so the cgroup cache is reused.

use crate::{aggregate::Summary, filter::Filters, owner::container::ContainerNames};

/// Fills `container` in every `by_pid` row, and keeps only the rows `--container` asks for.
pub fn name_containers(s: &mut Summary, names: &mut ContainerNames, filters: &Filters) {
    for r in &mut s.by_pid {
        r.container = names.of(r.pid, r.cgroup_id);
    }
    s.by_pid
        .retain(|r| filters.matches_container(r.container.as_ref()));
}
