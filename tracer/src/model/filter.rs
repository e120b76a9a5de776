//! Filters applied in user space: the ones the kernel cannot apply (event names, and owner
//! filters for TCP transitions that ran in softirq), on top of what the kernel already dropped.
//! They look only at the raw record and its attribution, so a dropped event costs no enrichment.
use tracer_common::SockEvent;

use super::event::event_kind;
use super::table::Attribution;

#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Bit `kind` set: show events of that kind. 0: all.
    kinds: u32,
    /// A process filter (--pid, --comm) is active: events with no known owner are dropped.
    needs_owner: bool,
    /// Only owners with this command name (NUL-padded as the kernel keeps it).
    comm: Option<[u8; 16]>,
    /// `--who`: only sockets with this endpoint at either end.
    who: Option<super::nat::who::Who>,
    /// `--container` / `--pod`.
    container: Option<ContainerWant>,
}

/// Which container's processes to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerWant {
    /// A name, an id (4 digits or more), or `host`.
    Container(String),
    /// NAMESPACE/NAME or a pod UID.
    Pod(String),
}

impl Filter {
    /// `events`: event names, as validated by the CLI (empty: all). `comm`: at most 15 bytes.
    pub fn new(events: &[String], process_filter: bool, comm: Option<&str>) -> Self {
        let kinds = events
            .iter()
            .filter_map(|name| event_kind(name))
            .fold(0u32, |bits, kind| bits | 1 << kind);
        let comm = comm.map(|c| {
            let mut bytes = [0u8; 16];
            let n = c.len().min(15);
            bytes[..n].copy_from_slice(&c.as_bytes()[..n]);
            bytes
        });
        Filter {
            kinds,
            needs_owner: process_filter || comm.is_some(),
            comm,
            who: None,
            container: None,
        }
    }

    /// Only processes in this container or pod (events no owner is known for are dropped).
    pub fn with_container(mut self, want: Option<ContainerWant>) -> Self {
        if want.is_some() {
            self.needs_owner = true;
        }
        self.container = want;
        self
    }

    /// Whether events need their owner's container to be filtered.
    pub fn wants_container(&self) -> bool {
        self.container.is_some()
    }

    /// The container filter, once the owner's container is known (None: not known, which
    /// a container filter does not select).
    pub fn allows_container(&self, container: Option<&super::container::Container>) -> bool {
        match (&self.container, container) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(ContainerWant::Container(want)), Some(c)) => c.matches(want),
            (Some(ContainerWant::Pod(want)), Some(c)) => c.in_pod(want),
        }
    }

    /// What the kernel may be told about the cgroup of a process in `container`: whether it is
    /// selected, once that cannot change any more (a name its runtime gave, the host, a user's
    /// own cgroup); None while the filter is off, the container unknown, or its runtime may
    /// still name it (a name or pod that would select it).
    pub fn container_verdict(
        &self,
        container: Option<&super::container::Container>,
    ) -> Option<bool> {
        self.container.as_ref()?;
        let c = container?;
        let selected = self.allows_container(Some(c));
        (selected || !c.nameable()).then_some(selected)
    }

    /// Only sockets with this endpoint at either end.
    pub fn with_who(mut self, who: Option<super::nat::who::Who>) -> Self {
        self.who = who;
        self
    }

    pub fn allows(&self, raw: &SockEvent, attribution: &Attribution) -> bool {
        if self.kinds != 0 && self.kinds & (1 << raw.kind) == 0 {
            return false;
        }
        if let Some(who) = &self.who {
            let ip = |bytes| super::event::ip(raw.family, bytes);
            if !who.names(ip(&raw.laddr), raw.lport) && !who.names(ip(&raw.raddr), raw.rport) {
                return false;
            }
        }
        match (&attribution.owner, &self.comm) {
            (None, _) if self.needs_owner => false,
            (Some(owner), Some(comm)) => owner.comm == *comm,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Owner;
    use tracer_common::kind;

    fn owned_by(comm: &[u8]) -> Attribution {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm);
        Attribution {
            owner: Some(Owner {
                pid: 1,
                tid: 1,
                uid: 0,
                comm: c,
                thread: c,
                cgroup: 0,
            }),
            ..Default::default()
        }
    }

    fn of_kind(k: u16) -> SockEvent {
        SockEvent {
            kind: k,
            ..Default::default()
        }
    }

    #[test]
    fn who_keeps_sockets_with_that_endpoint_at_either_end() {
        let f = Filter::new(&[], false, None).with_who(Some("203.0.113.1:61000".parse().unwrap()));
        let mut ev = of_kind(kind::ACCEPT);
        ev.family = tracer_common::AF_INET;
        ev.laddr[..4].copy_from_slice(&[198, 51, 100, 10]);
        ev.lport = 80;
        ev.raddr[..4].copy_from_slice(&[203, 0, 113, 1]);
        ev.rport = 61000;
        assert!(f.allows(&ev, &Attribution::default()), "the peer");
        ev.rport = 61001;
        assert!(!f.allows(&ev, &Attribution::default()), "another port");
        // An IPv6 socket talking IPv4 (v4-mapped) is the same endpoint.
        let mut v6 = of_kind(kind::CONNECT);
        v6.family = tracer_common::AF_INET6;
        v6.laddr[10..12].copy_from_slice(&[0xff, 0xff]);
        v6.laddr[12..].copy_from_slice(&[203, 0, 113, 1]);
        v6.lport = 61000;
        assert!(f.allows(&v6, &Attribution::default()), "v4-mapped");
    }

    #[test]
    fn event_names_select_kinds() {
        let f = Filter::new(&["bind".into(), "state".into()], false, None);
        let anyone = owned_by(b"x");
        assert!(f.allows(&of_kind(kind::BIND), &anyone));
        assert!(f.allows(&of_kind(kind::STATE), &anyone));
        assert!(!f.allows(&of_kind(kind::CONNECT), &anyone));
        assert!(Filter::default().allows(&of_kind(kind::CONNECT), &anyone));
    }

    #[test]
    fn a_cgroup_is_judged_once_its_container_is_known_for_good() {
        use crate::model::container::{from_path, Container};
        const ID: &str = "aef52339d617485564dd9b8adda0ab64bc899e4e338a29cb55cc9574eb93a913";
        let f = Filter::new(&[], false, None)
            .with_container(Some(ContainerWant::Container("web".into())));
        let mut web = Container::from_ref(from_path(&format!("/docker/{ID}")));
        // Docker has not named it yet: it may still be "web".
        assert_eq!(f.container_verdict(Some(&web)), None);
        assert_eq!(f.container_verdict(None), None);
        web.name = Some("web".into());
        assert_eq!(f.container_verdict(Some(&web)), Some(true));
        web.name = Some("db".into());
        assert_eq!(f.container_verdict(Some(&web)), Some(false));
        assert_eq!(f.container_verdict(Some(&Container::host())), Some(false));
        // By id: selected before any name.
        let by_id = Filter::new(&[], false, None)
            .with_container(Some(ContainerWant::Container(ID[..12].into())));
        let unnamed = Container::from_ref(from_path(&format!("/docker/{ID}")));
        assert_eq!(by_id.container_verdict(Some(&unnamed)), Some(true));
        // No container filter: nothing to tell the kernel.
        assert_eq!(
            Filter::new(&[], false, None).container_verdict(Some(&web)),
            None
        );
    }

    #[test]
    fn process_filters_need_a_known_owner() {
        let unknown = Attribution::default();
        assert!(Filter::default().allows(&of_kind(kind::STATE), &unknown));
        assert!(!Filter::new(&[], true, None).allows(&of_kind(kind::STATE), &unknown));
        let f = Filter::new(&[], false, Some("curl"));
        assert!(!f.allows(&of_kind(kind::STATE), &unknown));
        assert!(f.allows(&of_kind(kind::STATE), &owned_by(b"curl")));
        assert!(!f.allows(&of_kind(kind::STATE), &owned_by(b"curly")));
    }
}
