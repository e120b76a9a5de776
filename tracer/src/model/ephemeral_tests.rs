use super::*;

const LO: [u8; 16] = [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&a);
    out
}

fn dest(rport: u16) -> Option<Dest> {
    Some(Dest {
        family: 2,
        laddr: LO,
        raddr: LO,
        rport,
    })
}

const EXCLUSIVE: UsageKey = (1, 6, None);

fn of(report: &[Usage], rport: Option<u16>) -> &Usage {
    report.iter().find(|u| u.rport == rport).unwrap()
}

#[test]
fn usage_peak_and_one_warning_per_crossing() {
    let mut u = EphemeralUsage::default();
    u.set_range(1, (40000, 40004));
    for port in 40000..40004 {
        u.add(EXCLUSIVE, port, "srv");
    }
    u.add(EXCLUSIVE, 8080, "srv"); // outside the range: not counted
    let r = &u.report()[0];
    assert_eq!((r.in_use, r.range_size, r.percent), (4, 5, 80.0));
    assert_eq!((r.scope, r.headroom), ("exclusive", 1));
    let warned = u.take_warnings();
    assert_eq!(warned.len(), 1, "crossing 80% warns once");
    assert_eq!(warned[0].in_use, 4);
    u.add(EXCLUSIVE, 40004, "srv");
    assert!(u.take_warnings().is_empty(), "still above: no repeat");
    assert_eq!(u.report()[0].percent, 100.0);
    u.remove(EXCLUSIVE, 40004);
    u.remove(EXCLUSIVE, 40003);
    u.remove(EXCLUSIVE, 40002);
    assert_eq!(u.report()[0].in_use, 2);
    assert_eq!(u.report()[0].peak, 5);
    u.add(EXCLUSIVE, 40002, "srv");
    u.add(EXCLUSIVE, 40003, "srv");
    assert_eq!(u.take_warnings().len(), 1, "a new crossing warns again");
}

/// The two-server case: a range of 8 ports gives 8 connections to each server (connect()
/// reuses a port for another destination); the first server full does not make the second
/// look full; exclusive ports count against both.
#[test]
fn connect_ports_count_per_destination_and_exclusive_ones_against_all() {
    let mut u = EphemeralUsage::default();
    u.set_range(1, (40000, 40007));
    for port in 40000..40008 {
        u.add((1, 6, dest(8001)), port, "client-a");
    }
    let warned = u.take_warnings();
    assert_eq!(warned.len(), 1);
    assert_eq!(warned[0].rport, Some(8001));
    assert_eq!(warned[0].in_use, 7, "warned at the crossing: 7 of 8");
    let report = u.report();
    let a = of(&report, Some(8001));
    assert_eq!((a.in_use, a.peak, a.headroom, a.percent), (8, 8, 0, 100.0));
    assert_eq!(a.processes, vec!["client-a"]);
    assert_eq!(a.scope_label(), "to 127.0.0.1:8001 from 127.0.0.1");
    // The same ports again, to the second server.
    for port in 40000..40006 {
        u.add((1, 6, dest(8002)), port, "client-b");
    }
    assert!(u.take_warnings().is_empty(), "6 of 8 to the second server");
    let b = of(&u.report(), Some(8002)).clone();
    assert_eq!((b.in_use, b.headroom), (6, 2));
    // One port bound exclusively: it is gone for every destination.
    u.add(EXCLUSIVE, 40007, "binder");
    let report = u.report();
    let b = of(&report, Some(8002));
    assert_eq!((b.exclusive, b.headroom), (1, 1));
    let x = of(&report, None);
    assert_eq!(
        (x.in_use, x.headroom),
        (1, 0),
        "bind(0) passes over connected ports too"
    );
    // The connections to the first server go: the second's figures are untouched.
    for port in 40000..40008 {
        u.remove((1, 6, dest(8001)), port);
    }
    assert_eq!(of(&u.report(), Some(8002)).headroom, 1);
    assert_eq!(of(&u.report(), None).headroom, 1);
}

#[test]
fn a_failed_connect_is_counted_against_its_destination_and_warns() {
    let mut u = EphemeralUsage::default();
    u.set_range(1, (40000, 40001));
    u.add((1, 6, dest(8001)), 40000, "client");
    u.add((1, 6, dest(8001)), 40001, "client");
    u.take_warnings();
    // The kernel gave up before it settled the local address.
    let unsettled = Dest {
        laddr: [0; 16],
        ..dest(8001).unwrap()
    };
    u.failed_connect(1, 6, unsettled, "client");
    u.failed_connect(1, 6, unsettled, "client");
    let warned = u.take_warnings();
    assert_eq!(warned.len(), 2, "each failure is reported");
    assert_eq!((warned[1].rport, warned[1].failed), (Some(8001), 2));
    let report = u.report();
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(report[0].failed, 2);
    // A destination never connected to: its own line.
    let other = Dest {
        family: 2,
        laddr: [0; 16],
        raddr: v4([192, 0, 2, 1]),
        rport: 53,
    };
    u.failed_connect(1, 6, other, "dig");
    let report = u.report();
    let line = of(&report, Some(53));
    assert_eq!((line.in_use, line.failed), (0, 1));
    assert_eq!(line.scope_label(), "to 192.0.2.1:53");
}

#[test]
fn dead_namespaces_are_forgotten_unless_a_port_is_held() {
    let mut u = EphemeralUsage::default();
    for ns in 1..=3 {
        u.set_range(ns, (40000, 40010));
        u.add((ns, 6, None), 40001, "x");
    }
    u.remove((1, 6, None), 40001);
    u.remove((2, 6, None), 40001);
    // 1 is gone and idle; 2 is alive; 3 is gone but a socket still holds a port there.
    assert_eq!(u.retain_namespaces(|ns| ns == 2), 1);
    assert_eq!(u.namespaces(), vec![2, 3]);
    assert_eq!(u.range(1), None);
    assert!(u.range(3).is_some());
}

#[test]
fn idle_keys_make_room_past_the_cap() {
    let mut u = EphemeralUsage::default();
    let key = |i: usize| {
        let mut d = dest(1000).unwrap();
        d.raddr[..4].copy_from_slice(&(i as u32).to_be_bytes());
        (1, 6, Some(d))
    };
    for i in 0..MAX_KEYS + 10 {
        u.add(key(i), 1000, "x");
        if i >= 10 {
            u.remove(key(i), 1000);
        }
    }
    assert!(u.keys.len() < MAX_KEYS, "{}", u.keys.len());
    assert!(u.evicted() > 0);
    assert_eq!(
        u.keys
            .iter()
            .filter(|(k, h)| k.2.is_some() && !h.ports.is_empty())
            .count(),
        10
    );
}

#[test]
fn shared_ports_count_once_and_ranges_recount() {
    let mut u = EphemeralUsage::default();
    u.add(EXCLUSIVE, 33000, "srv");
    u.add(EXCLUSIVE, 33000, "srv");
    u.add((1, 6, dest(80)), 33001, "c");
    assert!(u.report().is_empty(), "range unknown yet");
    u.set_range(1, (32768, 60999));
    let r = of(&u.report(), None).clone();
    assert_eq!((r.in_use, r.headroom), (1, 28232 - 2));
    assert_eq!(r.range_size, 28232);
    assert_eq!(r.below_iana_dynamic, 49152 - 32768);
    assert_eq!(of(&u.report(), Some(80)).headroom, 28232 - 2);
    u.remove(EXCLUSIVE, 33000);
    assert_eq!(of(&u.report(), None).in_use, 1, "the other holder remains");
    u.set_range(1, (49152, 65535));
    assert_eq!(of(&u.report(), None).in_use, 0);
    assert_eq!(of(&u.report(), None).headroom, 16384);
    assert_eq!(of(&u.report(), None).below_iana_dynamic, 0);
}

#[test]
fn processes_are_few_and_latest_first() {
    let mut u = EphemeralUsage::default();
    u.set_range(1, (40000, 40100));
    for (i, comm) in ["a", "b", "c", "d", "e", "b"].iter().enumerate() {
        u.add((1, 6, dest(80)), 40000 + i as u16, comm);
    }
    assert_eq!(
        of(&u.report(), Some(80)).processes,
        vec!["b", "e", "d", "c"]
    );
}
