//! Hostile users: every action here runs as an unprivileged user (`setpriv`, `unshare -r`)
//! against a tracer running as root, and checks that tracer neither crashes, nor writes their
//! bytes raw to the operator's terminal, nor grows without bound, nor runs anything as root for
//! them. One module per concern.
mod metrics;
mod privileges;
mod resources;
mod serve;
mod text;
