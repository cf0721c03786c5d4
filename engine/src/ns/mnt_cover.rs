//! Which mount of a table hides the path to which: the restore makes a mount another one
//! covers first (see `mnt::plan_with`).

use std::collections::HashMap;

use super::mnt::MountInfo;

/// Which mount hides the path to which, in a table (see `mnt::plan_with`).
pub(super) struct Covering<'a> {
    parent_of: HashMap<u32, u32>,
    by_id: HashMap<u32, &'a MountInfo>,
}

impl<'a> Covering<'a> {
    pub(super) fn new(table: &'a [MountInfo]) -> Self {
        Covering {
            parent_of: table.iter().map(|m| (m.id, m.parent)).collect(),
            by_id: table.iter().map(|m| (m.id, m)).collect(),
        }
    }

    fn is_ancestor(&self, a: u32, mut of: u32) -> bool {
        while let Some(&p) = self.parent_of.get(&of) {
            if p == a {
                return true;
            }
            if p == of {
                break;
            }
            of = p;
        }
        false
    }

    /// x is reached through another branch than y's: a mount of x's chain that holds y's
    /// mountpoint without being y's ancestor is stacked over y's (zdtm's mntns_remap: a tmpfs
    /// moved onto a bind, with copies of the bind's children on both).
    fn other_branch(&self, y: &MountInfo, x: &MountInfo) -> bool {
        let mut of = x.id;
        while let Some(&p) = self.parent_of.get(&of) {
            if p == of {
                break;
            }
            match self.by_id.get(&p) {
                Some(z) if z.id != y.id => {
                    if super::propagation::holds(&z.mountpoint, &y.mountpoint)
                        && !self.is_ancestor(z.id, y.id)
                    {
                        return true;
                    }
                }
                Some(_) => {}
                None => break,
            }
            of = p;
        }
        false
    }

    /// A mount whose path y covers without being its ancestor (propagation left a copy under
    /// a bind stacked later: zdtm's overmount_with_shared_parent) can only be reached before y
    /// is made.
    pub(super) fn covers(&self, y: &MountInfo, x: &MountInfo) -> bool {
        y.id != x.id
            && y.mountpoint != x.mountpoint
            && super::propagation::holds(&y.mountpoint, &x.mountpoint)
            && !self.is_ancestor(y.id, x.id)
            && !self.other_branch(y, x)
    }
}
