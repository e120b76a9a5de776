//! TCP health counters: retransmits, resets and dropped packets, kept up with the kernel's
//! `HEALTH` counters (and the agent's own, under a process filter). Labels are bounded by
//! the kernel's enums: TCP states, two directions, the drop reasons this kernel has (at most
//! 256 slots, the last one "other"), three protocols and families.
use prometheus::{IntCounterVec, Registry};
use tracer_common::{health, tcp_state_name};

use super::{catch_up, counter_vec, FAMILY_NAMES, PROTO_NAMES};

pub struct HealthSeries {
    retransmits: IntCounterVec,
    resets: IntCounterVec,
    drops: IntCounterVec,
    skipped: prometheus::IntCounter,
}

impl HealthSeries {
    pub fn new(r: &Registry) -> Self {
        HealthSeries {
            retransmits: counter_vec(
                r,
                "tracer_tcp_retransmits_total",
                "TCP segments sent again, by what (syn: a connect's SYN, synack: a listener's SYN-ACK, data: anything later), the socket's state and family.",
                &["kind", "state", "family"],
            ),
            resets: counter_vec(
                r,
                "tracer_tcp_resets_total",
                "TCP resets sent and received, by direction, the socket's state (CLOSE where no socket: a segment for a port nobody listens on) and family.",
                &["direction", "state", "family"],
            ),
            drops: counter_vec(
                r,
                "tracer_packet_drops_total",
                "TCP and UDP packets the kernel dropped (skb:kfree_skb), by its drop reason (its enum skb_drop_reason, SKB_DROP_REASON_ prefix removed), protocol and family.",
                &["reason", "proto", "family"],
            ),
            skipped: super::counter(
                r,
                "tracer_health_runs_skipped_total",
                "Runs of the retransmit, reset and drop hooks the kernel skipped because the same program was running on that CPU already (kfree_skb nests in itself on busy hosts): each a retransmit, reset or drop perhaps not counted. Socket events lost are tracer_events_lost_total.",
            ),
        }
    }

    /// Raises each series to its total, `totals` keyed as `tracer_common::health::key`.
    pub fn update(&self, totals: &[(u32, u64)], skipped: u64) {
        catch_up(&self.skipped, skipped);
        for &(key, total) in totals {
            let (class, a, b, c) = health::parts(key);
            let family = FAMILY_NAMES.get(c as usize).copied().unwrap_or("other");
            let counter = match class {
                health::RETRANSMIT => {
                    let what = if b == 1 || a == tracer_common::tcp_state::SYN_RECV {
                        "synack"
                    } else if a == tracer_common::tcp_state::SYN_SENT {
                        "syn"
                    } else {
                        "data"
                    };
                    self.retransmits
                        .with_label_values(&[what, state_label(a), family])
                }
                health::RESET => {
                    let direction = if a == 1 { "received" } else { "sent" };
                    self.resets
                        .with_label_values(&[direction, state_label(b), family])
                }
                health::DROP => {
                    let reason = if a == u8::MAX {
                        "other".into()
                    } else {
                        crate::model::health::drop_reason(a.into())
                    };
                    let proto = PROTO_NAMES.get(b as usize).copied().unwrap_or("other");
                    self.drops.with_label_values(&[&reason, proto, family])
                }
                _ => continue,
            };
            catch_up(&counter, total);
        }
    }
}

/// A state's name; no socket (0) is CLOSE, as the kernel reports it.
fn state_label(state: u8) -> &'static str {
    if state == 0 {
        "CLOSE"
    } else {
        tcp_state_name(state)
    }
}
