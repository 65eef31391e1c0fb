//! `--writers-group` and `--readers-group`: who may connect, and who may
//! write, decided from the connecting process's credentials (`SO_PEERCRED`
//! and `SO_PEERGROUPS`) at the handshake.
//!
//! | peer | may read | may write |
//! |---|---|---|
//! | the server's own user, or root | yes | yes |
//! | in `--writers-group` | yes | yes |
//! | in `--readers-group` | yes | no |
//! | anyone else | only when no `--readers-group` is given | no |
//!
//! (Without either flag, anyone who can open the socket may do everything.)
//!
//! A peer that may read but not write and asks for write access is refused
//! at the handshake (`STATUS_WRITE_REFUSED`: the client says to connect
//! read-only), so it never holds the writable descriptor; connected
//! read-only, every write request is refused (`ReadOnly`). A peer that may not
//! read is refused (`STATUS_ACCESS_REFUSED`). The socket's file mode still
//! decides who can connect at all: with either flag and no `--socket-mode`,
//! the socket is made `0666` and these checks are the gate.

/// A group named by a flag, and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
}

impl Group {
    /// A group name from /etc/group, or a numeric gid.
    pub fn resolve(s: &str) -> Result<Group, String> {
        if let Ok(gid) = s.parse::<u32>() {
            return Ok(Group {
                name: s.to_owned(),
                gid,
            });
        }
        let text = std::fs::read_to_string("/etc/group")
            .map_err(|e| format!("cannot read /etc/group to find group {s:?}: {e}"))?;
        group_in(&text, s).ok_or_else(|| {
            format!("no group {s:?} in /etc/group (give a group name or a numeric gid)")
        })
    }
}

fn group_in(etc_group: &str, name: &str) -> Option<Group> {
    etc_group.lines().find_map(|line| {
        let mut f = line.split(':');
        let n = f.next()?;
        let _password = f.next()?;
        let gid = f.next()?.parse().ok()?;
        (n == name).then(|| Group {
            name: n.to_owned(),
            gid,
        })
    })
}

/// The groups flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups {
    pub writers: Option<Group>,
    pub readers: Option<Group>,
}

/// What a peer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    Write,
    Read,
    Nothing,
}

impl Groups {
    pub fn is_set(&self) -> bool {
        self.writers.is_some() || self.readers.is_some()
    }

    /// What user `uid`, in `groups`, may do on a server run by `owner`.
    pub fn allowed(&self, uid: u32, groups: &[u32], owner: u32) -> Allowed {
        if uid == owner || uid == 0 {
            return Allowed::Write;
        }
        let member = |g: &Option<Group>| g.as_ref().map(|g| groups.contains(&g.gid));
        let writer = member(&self.writers).unwrap_or(false);
        let reader = writer || member(&self.readers).unwrap_or(true);
        if writer {
            Allowed::Write
        } else if reader {
            Allowed::Read
        } else {
            Allowed::Nothing
        }
    }

    /// Why `uid` was refused, for the log.
    pub fn refusal(&self, uid: u32, wanted_write: bool) -> String {
        let name = |g: &Option<Group>| {
            g.as_ref()
                .map_or_else(String::new, |g| format!("{} ({})", g.name, g.gid))
        };
        if wanted_write {
            match &self.writers {
                Some(_) => format!(
                    "write access refused to uid {uid}: not in --writers-group {}",
                    name(&self.writers)
                ),
                None => format!(
                    "write access refused to uid {uid}: with --readers-group and no \
                     --writers-group only the server's user writes"
                ),
            }
        } else {
            format!(
                "connection refused to uid {uid}: not in --readers-group {} or --writers-group {}",
                name(&self.readers),
                name(&self.writers)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(gid: u32) -> Option<Group> {
        Some(Group {
            name: format!("g{gid}"),
            gid,
        })
    }

    #[test]
    fn the_table_of_the_module_comment() {
        let both = Groups {
            writers: g(10),
            readers: g(20),
        };
        assert_eq!(both.allowed(1000, &[5], 1000), Allowed::Write); // owner
        assert_eq!(both.allowed(0, &[], 1000), Allowed::Write); // root
        assert_eq!(both.allowed(7, &[5, 10], 1000), Allowed::Write);
        assert_eq!(both.allowed(7, &[20], 1000), Allowed::Read);
        assert_eq!(both.allowed(7, &[30], 1000), Allowed::Nothing);
        let writers_only = Groups {
            writers: g(10),
            readers: None,
        };
        assert_eq!(writers_only.allowed(7, &[30], 1000), Allowed::Read);
        let readers_only = Groups {
            writers: None,
            readers: g(20),
        };
        assert_eq!(readers_only.allowed(7, &[20], 1000), Allowed::Read);
        assert_eq!(readers_only.allowed(1000, &[], 1000), Allowed::Write);
        assert_eq!(readers_only.allowed(7, &[30], 1000), Allowed::Nothing);
    }

    #[test]
    fn groups_by_name_or_number() {
        let etc = "root:x:0:\nanalysts:x:1234:ann,bob\nbad line\n";
        assert_eq!(group_in(etc, "analysts").unwrap().gid, 1234);
        assert!(group_in(etc, "nobody-here").is_none());
        assert_eq!(Group::resolve("4242").unwrap().gid, 4242);
        assert!(Group::resolve("no-such-group-xyz")
            .unwrap_err()
            .contains("no group"));
    }
}
