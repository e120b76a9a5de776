//! Filters applied in user space: the ones the kernel cannot apply (event names, and owner
//! filters for TCP transitions that ran in softirq), on top of what the kernel already dropped.
use super::event::Event;

#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Event names to show; empty: all.
    pub events: Vec<String>,
    /// A process filter (--pid, --comm) is active: events with no known owner are dropped.
    pub needs_owner: bool,
    pub comm: Option<String>,
}

impl Filter {
    pub fn allows(&self, event: &Event) -> bool {
        if !self.events.is_empty() && !self.events.iter().any(|e| e == event.event) {
            return false;
        }
        if self.needs_owner && event.pid.is_none() {
            return false;
        }
        if let Some(comm) = &self.comm {
            if event.comm.as_deref() != Some(comm.as_str()) {
                return false;
            }
        }
        true
    }
}
