#!/bin/sh
# A test router in three network namespaces, for watching NAT with `tracer nat`:
#
#   LAN 192.0.2.0/24, 2001:db8:1::/64        ROUTER                     WAN 203.0.113.0/24,
#   ${P}lan: lan0 192.0.2.10  <-> rlan 192.0.2.1 | rwan 203.0.113.1 <-> wan0 203.0.113.10
#            2001:db8:1::10          2001:db8:1::1 | 2001:db8:2::1         2001:db8:2::10
#                                                                        198.51.100.10 (server)
#
#   nat-router.sh up   [PREFIX] [MODE]   MODE: masquerade (default), pool4, pool4-legacy, snat,
#                                         dnat, all
#   nat-router.sh down [PREFIX]
#
# masquerade: LAN → WAN leaves as 203.0.113.1 with source ports forced into 61000-61099
#             (and IPv6 as 2001:db8:2::1, ports 62000-62099): SNAT with port translation.
# snat:       192.0.2.10 → 203.0.113.7, one address to one, ports kept (static NAT).
# dnat:       WAN → 203.0.113.1:8080 is forwarded to the LAN server 192.0.2.10:80.
# pool4:      TCP masquerade with a pool of four ports (61000-61003): the fifth connection
#             held at once gets no translation and is dropped (conntrack's insert_failed).
# pool4-legacy: the same rule made with iptables-legacy instead of nft.
# all:        masquerade and dnat.
set -eu
cmd=${1:-}
P=${2:-tr}
MODE=${3:-masquerade}
LAN=${P}lan ROUTER=${P}router WAN=${P}wan

down() {
    for ns in "$LAN" "$ROUTER" "$WAN"; do
        ip netns del "$ns" 2>/dev/null || true
    done
}

up() {
    down
    for ns in "$LAN" "$ROUTER" "$WAN"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip link add "${P}l0" type veth peer name "${P}rl"
    ip link set "${P}l0" netns "$LAN"
    ip link set "${P}rl" netns "$ROUTER"
    ip -n "$LAN" link set "${P}l0" name lan0
    ip -n "$ROUTER" link set "${P}rl" name rlan
    ip link add "${P}w0" type veth peer name "${P}rw"
    ip link set "${P}w0" netns "$WAN"
    ip link set "${P}rw" netns "$ROUTER"
    ip -n "$WAN" link set "${P}w0" name wan0
    ip -n "$ROUTER" link set "${P}rw" name rwan

    ip -n "$LAN" addr add 192.0.2.10/24 dev lan0
    ip -n "$LAN" addr add 2001:db8:1::10/64 dev lan0 nodad
    ip -n "$LAN" link set lan0 up
    ip -n "$LAN" route add default via 192.0.2.1
    ip -n "$LAN" -6 route add default via 2001:db8:1::1

    ip -n "$ROUTER" addr add 192.0.2.1/24 dev rlan
    ip -n "$ROUTER" addr add 2001:db8:1::1/64 dev rlan nodad
    ip -n "$ROUTER" addr add 203.0.113.1/24 dev rwan
    ip -n "$ROUTER" addr add 203.0.113.7/24 dev rwan
    ip -n "$ROUTER" addr add 2001:db8:2::1/64 dev rwan nodad
    ip -n "$ROUTER" link set rlan up
    ip -n "$ROUTER" link set rwan up
    ip -n "$ROUTER" route add 198.51.100.0/24 via 203.0.113.10
    ip netns exec "$ROUTER" sysctl -qw net.ipv4.ip_forward=1
    ip netns exec "$ROUTER" sysctl -qw net.ipv6.conf.all.forwarding=1

    ip -n "$WAN" addr add 203.0.113.10/24 dev wan0
    ip -n "$WAN" addr add 198.51.100.10/24 dev wan0
    ip -n "$WAN" addr add 2001:db8:2::10/64 dev wan0 nodad
    ip -n "$WAN" link set wan0 up

    masq='table ip nat {
        chain post { type nat hook postrouting priority srcnat; oifname "rwan" meta l4proto { tcp, udp } masquerade to :61000-61099; oifname "rwan" masquerade; }
    }
    table ip6 nat {
        chain post { type nat hook postrouting priority srcnat; oifname "rwan" meta l4proto { tcp, udp } masquerade to :62000-62099; oifname "rwan" masquerade; }
    }'
    snat='table ip nat {
        chain post { type nat hook postrouting priority srcnat; ip saddr 192.0.2.10 oifname "rwan" snat to 203.0.113.7; }
    }'
    dnat='table ip nat {
        chain pre { type nat hook prerouting priority dstnat; iifname "rwan" tcp dport 8080 dnat to 192.0.2.10:80; }
    }'
    # A masquerade pool of four ports (TCP): a fifth connection at once finds none.
    pool4='table ip nat {
        chain post { type nat hook postrouting priority srcnat; oifname "rwan" meta l4proto tcp masquerade to :61000-61003; }
    }'
    if [ "$MODE" = pool4-legacy ]; then
        ip netns exec "$ROUTER" iptables-legacy -t nat -A POSTROUTING -o rwan -p tcp \
            -j MASQUERADE --to-ports 61000-61003
        echo "router up: netns $LAN, $ROUTER, $WAN ($MODE)"
        return
    fi
    case "$MODE" in
        masquerade) rules=$masq ;;
        pool4) rules=$pool4 ;;
        snat) rules=$snat ;;
        dnat) rules=$dnat ;;
        all) rules="$masq
$dnat" ;;
        *) echo "unknown mode $MODE (masquerade, pool4, pool4-legacy, snat, dnat, all)" >&2; down; exit 2 ;;
    esac
    printf '%s\n' "$rules" | ip netns exec "$ROUTER" nft -f -
    echo "router up: netns $LAN, $ROUTER, $WAN ($MODE)"
}

case "$cmd" in
    up) up ;;
    down) down; echo "router down: $LAN $ROUTER $WAN removed" ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
esac
