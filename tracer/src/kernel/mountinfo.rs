//! `/proc/self/mountinfo` read as bytes. Any user who can mount (FUSE, a user namespace) names
//! mount points and sources with bytes that need not be UTF-8; a reader that wants text
//! (procfs's, `BufRead::lines`) fails on the whole file, and tracer would then not find cgroup
//! v2 or the namespace files it needs — one unprivileged `mount` would stop it from starting.
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One mount: what of its file system (`root`: `/`, or `net:[INODE]` for a namespace file),
/// where, and of what file-system type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub root: Vec<u8>,
    pub mount_point: PathBuf,
    pub fs_type: Vec<u8>,
    /// The super block's options (after the source): a cgroup v1 mount's controllers.
    pub super_options: Vec<u8>,
}

/// The mounts of the calling thread's mount namespace.
pub fn mounts() -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read("/proc/self/mountinfo")?))
}

/// Parses mountinfo lines (`proc(5)`): the fifth field is the mount point, the first field
/// after the ` - ` separator the file-system type. Lines that do not have that shape are
/// skipped, never an error.
pub fn parse(text: &[u8]) -> Vec<Mount> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let separator = fields.iter().position(|f| *f == b"-")?;
            let mount_point = *fields.get(4).filter(|_| separator > 4)?;
            let fs_type = *fields.get(separator + 1)?;
            Some(Mount {
                root: unescape(fields[3]),
                mount_point: PathBuf::from(OsString::from_vec(unescape(mount_point))),
                fs_type: fs_type.to_vec(),
                super_options: fields.get(separator + 3).map_or(Vec::new(), |o| o.to_vec()),
            })
        })
        .collect()
}

/// The kernel writes space, tab, newline and backslash in a path as `\NNN` (octal).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn a_mount_point_that_is_not_utf8_spoils_nothing() {
        let text = b"29 1 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
            40 29 0:40 / /home/u/\xff\\040x rw shared:1 - fuse.evil \xfe rw\n\
            garbage\n\
            41 29 0:4 net:[4026532281] /run/netns/a rw - nsfs nsfs rw\n";
        let mounts = parse(text);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].fs_type, b"cgroup2");
        assert_eq!(
            mounts[0].mount_point,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        assert_eq!(
            mounts[1].mount_point.as_os_str().as_bytes(),
            b"/home/u/\xff x"
        );
        assert_eq!(mounts[2].fs_type, b"nsfs");
    }

    #[test]
    fn this_machine_has_mounts() {
        assert!(!mounts().unwrap().is_empty());
    }
}
