//! Turns what the user named into what the system has: `--netns` names into namespace paths
//! and inodes, `--pid` into the process and its descendants, `--user` into a user database
//! entry. The CLI only parses; everything that looks at the system to validate starts here,
//! before the command loads anything.
use std::path::PathBuf;

use crate::{
    cli::NatTargets,
    error::{Error, Result},
    kernel::{nat_watch::NatPlaces, netns, snapshot::Scope},
};

/// `--netns NAME|PATH` → (the namespace's path, its inode).
pub fn netns(spec: &str) -> Result<(PathBuf, u32)> {
    netns::resolve(spec)
}

/// Where a snapshot looks, and the namespace inode the kernel filters on (0: every one).
pub fn watch_scope(spec: Option<&str>) -> Result<(Scope, u32)> {
    match spec {
        Some(spec) => {
            let (path, inode) = netns(spec)?;
            Ok((Scope::One(path), inode))
        }
        None => Ok((Scope::All, 0)),
    }
}

/// `--nat-netns` / `--netns` of `nat`: each name with the path it resolves to.
pub fn nat_places(targets: &NatTargets) -> Result<NatPlaces> {
    Ok(match targets {
        NatTargets::Host => NatPlaces::Host,
        NatTargets::All => NatPlaces::All,
        NatTargets::Named(specs) => {
            let mut list = Vec::new();
            for spec in specs {
                let (path, _) = netns(spec)?;
                list.push((spec.clone(), path));
            }
            NatPlaces::Named(list)
        }
    })
}

/// Fails unless every process exists.
pub fn existing(pids: &[u32]) -> Result<()> {
    match pids
        .iter()
        .find(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    {
        Some(&pid) => Err(Error::NoSuchPid(pid)),
        None => Ok(()),
    }
}

/// The user a traced command runs as, from the user database (as `sudo -u` would).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: std::path::PathBuf,
    pub shell: std::path::PathBuf,
}

impl RunAs {
    fn from_user(user: nix::unistd::User) -> RunAs {
        RunAs {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
            shell: user.shell,
        }
    }

    /// `--user NAME` (or a numeric uid, as `sudo -u '#1000'` allows).
    pub fn named(spec: &str) -> Result<RunAs> {
        let no_such = || Error::Invalid(format!("--user {spec:?}: no such user"));
        let by_name = nix::unistd::User::from_name(spec).ok().flatten();
        let user = match by_name {
            Some(user) => user,
            None => {
                let uid = spec
                    .trim_start_matches('#')
                    .parse::<u32>()
                    .map_err(|_| no_such())?;
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .ok_or_else(no_such)?
            }
        };
        Ok(RunAs::from_user(user))
    }

    /// Without `--user`: the user behind sudo (`SUDO_UID`). Never root by accident: with no
    /// `SUDO_UID`, or `SUDO_UID=0`, root must be asked for by name.
    pub fn invoking(command: &str, sudo_uid: Option<&str>) -> Result<RunAs> {
        let euid = nix::unistd::geteuid();
        let uid = if euid.is_root() {
            match sudo_uid.and_then(|v| v.parse::<u32>().ok()) {
                Some(uid) if uid != 0 => uid,
                _ => return Err(Error::TraceAsRoot(command.to_string())),
            }
        } else {
            // Not root: tracer stops at its root check anyway; nothing runs as anyone else.
            euid.as_raw()
        };
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(RunAs::from_user)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "uid {uid} (SUDO_UID) has no entry in the user database: pass --user USER"
                ))
            })
    }
}

/// The given processes and every descendant they have now (later forks are followed in the
/// kernel).
pub fn with_descendants(roots: &[u32]) -> Result<Vec<u32>> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    if let Ok(all) = procfs::process::all_processes() {
        for proc in all.flatten() {
            if let Ok(stat) = proc.stat() {
                children
                    .entry(stat.ppid as u32)
                    .or_default()
                    .push(stat.pid as u32);
            }
        }
    }
    let mut out = Vec::new();
    for &root in roots {
        if !std::path::Path::new(&format!("/proc/{root}")).exists() {
            return Err(Error::NoSuchPid(root));
        }
        let mut stack = vec![root];
        while let Some(pid) = stack.pop() {
            if out.contains(&pid) {
                continue;
            }
            out.push(pid);
            stack.extend(children.get(&pid).into_iter().flatten().copied());
        }
    }
    Ok(out)
}
