//! The rlimits a child gets, as plain (resource, value) pairs the pre-exec step can set
//! without allocating. Core dumps are always off: a dump would write the child's secrets to disk.

use reflow_crds::snapshot::EffectiveLimits;

/// `(resource, limit)`; `RLIM_INFINITY` entries are skipped.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits(pub(super) [(libc::__rlimit_resource_t, libc::rlim_t); 5]);

impl From<&EffectiveLimits> for Limits {
    fn from(l: &EffectiveLimits) -> Self {
        let or_inf = |v: Option<u32>, scale: u64| {
            v.map_or(libc::RLIM_INFINITY, |v| u64::from(v).saturating_mul(scale))
        };
        Self([
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_DATA, or_inf(l.memory_mib, 1024 * 1024)),
            (libc::RLIMIT_CPU, or_inf(l.cpu_seconds, 1)),
            (libc::RLIMIT_NPROC, or_inf(l.processes, 1)),
            (libc::RLIMIT_NOFILE, or_inf(l.open_files, 1)),
        ])
    }
}
