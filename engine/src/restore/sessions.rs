//! The order a tree is forked in so that every task comes back in its dumped session.
//!
//! A task's session is fixed when it is forked (its parent's, at that moment); afterwards only
//! setsid(2) changes it, to a new session the caller leads. So a session comes back only if
//! each of its members is forked by a task that is in it at that moment. Two cases need more
//! than "fork the children, each leader calls setsid" (CRIU solves them the same way):
//! - A parent forked a child and only then called setsid (or an ancestor did): the child is in
//!   an older session than its parent. That parent is "born" in the child's session and forks
//!   such children before its own setsid; every task between the child and its session's
//!   leader likewise.
//! - A task whose parent died was reparented to the init of its pid namespace (or to a child
//!   subreaper), whose session it need not share. A short-lived helper forks it instead and
//!   exits, so that it is reparented again, as before: a helper forked by the session's leader
//!   when that leader is in the tree, else a helper with the dead leader's pid that leads the
//!   session again.
//!
//! Sessions led from outside the tree (the shell's a tree was started from) are all taken as
//! one: the restorer's own, which the root is forked in.

use std::collections::{HashMap, HashSet};

/// What the plan needs of one task (index 0 is the root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub pid: u32,
    pub ppid: u32,
    pub sid: u32,
    /// Shares its parent's fd table (forked with CLONE_FILES).
    pub shares_parent_files: bool,
}

/// A task forked only to make a session and fork members of it; it exits once they are forked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helper {
    /// The dead session leader's pid (the helper calls setsid and leads the session again);
    /// None: any free pid (it is forked by the living leader, in its session).
    pub pid: Option<u32>,
    /// The index of the task that forks it.
    pub forker: usize,
    /// The session it is in, and forks its children in.
    pub sid: u32,
    /// Forked with CLONE_FILES: its children share their real parent's fd table through it.
    pub clone_files: bool,
}

/// Where each task is forked from and when.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionPlan {
    /// Per task: the session it is in while it forks the children born there, before its own
    /// setsid (None: it forks all its children after).
    pub born_sid: Vec<Option<u32>>,
    pub helpers: Vec<Helper>,
    /// Per task: the helper that forks it (instead of its parent).
    pub via_helper: Vec<Option<usize>>,
}

/// Who forks a task or a helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forker {
    Task(usize),
    Helper(usize),
}

/// A child in its forker's fork order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    Task(usize),
    Helper(usize),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error(
        "task {pid} has children born in two sessions ({first} and {second}): no order of its \
         forks and setsid gives both"
    )]
    TwoBirthSessions { pid: u32, first: u32, second: u32 },
    #[error(
        "task {pid} is in session {sid}, whose leader is not among its ancestors: it cannot \
         be forked into that session"
    )]
    NoLeaderAbove { pid: u32, sid: u32 },
    #[error(
        "task {pid} was reparented to the root and shares the root's fd table, but must be \
         forked by session {sid}'s leader to come back in that session"
    )]
    SharedTableAcrossSessions { pid: u32, sid: u32 },
}

/// Sessions outside the tree (none of its tasks or helpers leads them) read as this one.
pub const OUTSIDE: u32 = 0;

/// What the root is to orphans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    /// Its children are its own.
    Plain,
    /// A child subreaper: its children include orphans reparented to it. A session no task
    /// of the tree leads may be the shell's, outside: taken as the restorer's.
    Subreaper,
    /// The init of the tree's own pid namespace: its children include orphans, and a session
    /// of the namespace that no task leads had a leader that died (its id is free there).
    PidNsInit,
}

/// Plans the forks of `tasks` (index 0 the root).
pub fn plan(tasks: &[Member], root: RootKind) -> Result<SessionPlan, SessionError> {
    let n = tasks.len();
    let index_of = |pid: u32| tasks.iter().position(|t| t.pid == pid);
    let mut plan = SessionPlan {
        born_sid: vec![None; n],
        helpers: Vec::new(),
        via_helper: vec![None; n],
    };
    let Some(first) = tasks.first() else {
        return Ok(plan);
    };
    // 1. Orphans of the root in another session than the root's: forked by a helper.
    if root != RootKind::Plain {
        for (i, t) in tasks.iter().enumerate().skip(1) {
            if t.ppid != first.pid || t.sid == first.sid || t.sid == t.pid || t.sid == OUTSIDE {
                continue;
            }
            let leader = index_of(t.sid);
            if leader.is_none() && root != RootKind::PidNsInit {
                continue;
            }
            let h = match plan.helpers.iter().position(|h| h.sid == t.sid) {
                Some(h) => h,
                None => {
                    plan.helpers.push(Helper {
                        pid: leader.is_none().then_some(t.sid),
                        forker: leader.unwrap_or(0),
                        sid: t.sid,
                        clone_files: false,
                    });
                    plan.helpers.len() - 1
                }
            };
            if t.shares_parent_files {
                if plan.helpers[h].forker != 0 {
                    return Err(SessionError::SharedTableAcrossSessions {
                        pid: t.pid,
                        sid: t.sid,
                    });
                }
                plan.helpers[h].clone_files = true;
            }
            plan.via_helper[i] = Some(h);
        }
    }
    let led = led_sids(tasks, &plan);
    let norm = |sid: u32| normalize(&led, sid);
    let parents = fork_parents(tasks, &plan);
    let sid_of = |f: Option<Forker>| match f {
        Some(Forker::Task(p)) => norm(tasks[p].sid),
        Some(Forker::Helper(h)) => plan.helpers[h].sid,
        // The root's forker: the restorer, in a session outside the tree.
        None => OUTSIDE,
    };
    // 2. Tasks forked in an older session than their parent's: the parent, and every task
    // up to that session's leader, forks before its setsid.
    let mut born_sid: Vec<Option<u32>> = vec![None; n];
    for (i, t) in tasks.iter().enumerate().skip(1) {
        let sid = norm(t.sid);
        let parent = parents[i];
        if t.sid == t.pid || sid_of(parent) == sid {
            continue;
        }
        let mut at = parent;
        loop {
            match at {
                Some(Forker::Task(p)) if tasks[p].pid == sid => break,
                Some(Forker::Task(p)) => {
                    match born_sid[p] {
                        Some(b) if b != sid => {
                            return Err(SessionError::TwoBirthSessions {
                                pid: tasks[p].pid,
                                first: b,
                                second: sid,
                            })
                        }
                        _ => born_sid[p] = Some(sid),
                    }
                    at = parents[p];
                }
                // Past the root: the restorer's session, which the root is forked in.
                None if sid == OUTSIDE => break,
                Some(Forker::Helper(_)) | None => {
                    return Err(SessionError::NoLeaderAbove {
                        pid: t.pid,
                        sid: t.sid,
                    })
                }
            }
        }
    }
    // A task born in one session that is in another it does not lead never left the first.
    for (t, b) in tasks.iter().zip(&born_sid) {
        if let Some(b) = *b {
            if t.sid != t.pid && norm(t.sid) != b {
                return Err(SessionError::NoLeaderAbove { pid: t.pid, sid: b });
            }
        }
    }
    plan.born_sid = born_sid;
    Ok(plan)
}

/// The sessions a task or a helper of the plan leads.
fn led_sids(tasks: &[Member], plan: &SessionPlan) -> HashSet<u32> {
    tasks
        .iter()
        .map(|t| t.pid)
        .chain(plan.helpers.iter().filter_map(|h| h.pid))
        .collect()
}

/// `sid`, or [`OUTSIDE`] when neither a task nor a helper leads it.
fn normalize(led: &HashSet<u32>, sid: u32) -> u32 {
    if led.contains(&sid) {
        sid
    } else {
        OUTSIDE
    }
}

/// Per task, the task or helper that forks it (None for the root).
pub fn fork_parents(tasks: &[Member], plan: &SessionPlan) -> Vec<Option<Forker>> {
    let index: HashMap<u32, usize> = tasks.iter().enumerate().map(|(i, t)| (t.pid, i)).collect();
    (0..tasks.len())
        .map(|i| {
            if i == 0 {
                return None;
            }
            if let Some(h) = plan.via_helper.get(i).copied().flatten() {
                return Some(Forker::Helper(h));
            }
            index
                .get(&tasks[i].ppid)
                .copied()
                .filter(|&p| p != i)
                .map(Forker::Task)
        })
        .collect()
}

/// Per task, the task whose memory it is forked with: its forker, or the forker of the helper
/// that forks it (the helper forks nothing of its own in between).
pub fn memory_parents(tasks: &[Member], plan: &SessionPlan) -> Vec<Option<usize>> {
    fork_parents(tasks, plan)
        .into_iter()
        .map(|f| match f? {
            Forker::Task(p) => Some(p),
            Forker::Helper(h) => plan.helpers.get(h).map(|h| h.forker),
        })
        .collect()
}

/// Each forker's children in fork order, and how many of the first are forked before its
/// setsid.
#[derive(Debug, Default)]
pub struct ForkOrders {
    tasks: Vec<(Vec<Child>, usize)>,
    helpers: Vec<(Vec<Child>, usize)>,
}

impl ForkOrders {
    pub fn of(&self, forker: Forker) -> &(Vec<Child>, usize) {
        const NONE: &(Vec<Child>, usize) = &(Vec::new(), 0);
        match forker {
            Forker::Task(i) => self.tasks.get(i),
            Forker::Helper(h) => self.helpers.get(h),
        }
        .unwrap_or(NONE)
    }
}

/// Every forker's children, in one pass: those born in its earlier session first (see
/// [`SessionPlan::born_sid`]), then, within each, group leaders (`leads_group(i)`: a sibling
/// forked next may join the group), then image order; a task's helpers last.
pub fn fork_orders(
    tasks: &[Member],
    plan: &SessionPlan,
    leads_group: impl Fn(usize) -> bool,
) -> ForkOrders {
    let led = led_sids(tasks, plan);
    type Kid = (bool, bool, Child);
    let mut by_task: Vec<Vec<Kid>> = vec![Vec::new(); tasks.len()];
    let mut by_helper: Vec<Vec<Kid>> = vec![Vec::new(); plan.helpers.len()];
    for (i, parent) in fork_parents(tasks, plan).into_iter().enumerate() {
        let Some(parent) = parent else {
            continue;
        };
        let csid = plan
            .born_sid
            .get(i)
            .copied()
            .flatten()
            .unwrap_or_else(|| normalize(&led, tasks[i].sid));
        let (bucket, born) = match parent {
            Forker::Task(p) => (&mut by_task[p], plan.born_sid[p]),
            Forker::Helper(h) => (&mut by_helper[h], None),
        };
        let before = born == Some(csid);
        bucket.push((!before, !leads_group(i), Child::Task(i)));
    }
    for (h, helper) in plan.helpers.iter().enumerate() {
        // A helper is in its forker's session after its setsid (or leads its own).
        by_task[helper.forker].push((true, true, Child::Helper(h)));
    }
    let order = |mut kids: Vec<Kid>| {
        // Stable: image order within each class.
        kids.sort_by_key(|k| (k.0, k.1));
        let before = kids.iter().filter(|k| !k.0).count();
        (kids.into_iter().map(|k| k.2).collect(), before)
    };
    ForkOrders {
        tasks: by_task.into_iter().map(order).collect(),
        helpers: by_helper.into_iter().map(order).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pid: u32, ppid: u32, sid: u32) -> Member {
        Member {
            pid,
            ppid,
            sid,
            shares_parent_files: false,
        }
    }

    fn order(tasks: &[Member], plan: &SessionPlan, f: Forker) -> (Vec<Child>, usize) {
        fork_orders(tasks, plan, |_| false).of(f).clone()
    }

    #[test]
    fn a_plain_tree_needs_no_helper_and_no_early_fork() {
        let tasks = [m(10, 1, 10), m(11, 10, 10), m(12, 11, 12), m(13, 12, 12)];
        let p = plan(&tasks, RootKind::Plain).unwrap();
        assert!(p.helpers.is_empty());
        assert_eq!(p.born_sid, vec![None; 4]);
        assert_eq!(
            order(&tasks, &p, Forker::Task(0)),
            (vec![Child::Task(1)], 0)
        );
    }

    #[test]
    fn a_child_forked_before_its_parents_setsid_is_forked_first() {
        // zdtm session00: 8 leads its session, its child 9 stayed in the root's (2); 10 and
        // 11 lead theirs, 12 stayed in 2.
        let tasks = [
            m(2, 1, 2),
            m(8, 2, 8),
            m(9, 8, 2),
            m(10, 2, 10),
            m(11, 10, 11),
            m(12, 11, 2),
            m(4, 2, 4),
        ];
        let p = plan(&tasks, RootKind::PidNsInit).unwrap();
        assert!(p.helpers.is_empty());
        assert_eq!(p.born_sid[1], Some(2));
        assert_eq!(p.born_sid[3], Some(2));
        assert_eq!(p.born_sid[4], Some(2));
        assert_eq!(p.born_sid[0], None);
        assert_eq!(
            order(&tasks, &p, Forker::Task(1)),
            (vec![Child::Task(2)], 1)
        );
        // 10 forks 11 in session 2, then calls setsid; 11 forks 12, then its own setsid.
        assert_eq!(
            order(&tasks, &p, Forker::Task(3)),
            (vec![Child::Task(4)], 1)
        );
        assert_eq!(
            order(&tasks, &p, Forker::Task(4)),
            (vec![Child::Task(5)], 1)
        );
    }

    #[test]
    fn orphans_come_back_through_helpers() {
        // zdtm session01 in a pid namespace: 14 (session 6, whose leader died) and 3 (session
        // 2, led by a live task) were reparented to the init.
        let tasks = [
            m(1, 0, 1),
            m(2, 1, 2),
            m(5, 2, 2),
            m(3, 1, 2),
            m(14, 1, 6),
            m(16, 1, 6),
        ];
        let p = plan(&tasks, RootKind::PidNsInit).unwrap();
        assert_eq!(
            p.helpers,
            vec![
                Helper {
                    pid: None,
                    forker: 1,
                    sid: 2,
                    clone_files: false
                },
                Helper {
                    pid: Some(6),
                    forker: 0,
                    sid: 6,
                    clone_files: false
                },
            ]
        );
        assert_eq!(
            p.via_helper,
            vec![None, None, None, Some(0), Some(1), Some(1)]
        );
        assert_eq!(
            memory_parents(&tasks, &p),
            vec![None, Some(0), Some(1), Some(1), Some(0), Some(0)]
        );
        assert_eq!(
            order(&tasks, &p, Forker::Task(0)),
            (vec![Child::Task(1), Child::Helper(1)], 0)
        );
        assert_eq!(
            order(&tasks, &p, Forker::Task(1)),
            (vec![Child::Task(2), Child::Helper(0)], 0)
        );
        assert_eq!(
            order(&tasks, &p, Forker::Helper(1)),
            (vec![Child::Task(4), Child::Task(5)], 0)
        );
        // Without a reaping root, its children are its own: no helper.
        let p = plan(&tasks, RootKind::Plain);
        assert!(matches!(
            p,
            Err(SessionError::NoLeaderAbove { pid: 3, sid: 2 })
        ));
    }

    #[test]
    fn a_zombie_leader_forks_the_helper_of_its_orphaned_member() {
        // zdtm zombie_leader: 2 led session 2 and died; 3, its child, went to the init.
        let tasks = [m(1, 0, 1), m(2, 1, 2), m(3, 1, 2)];
        let p = plan(&tasks, RootKind::PidNsInit).unwrap();
        assert_eq!(p.helpers[0].forker, 1);
        assert_eq!(p.helpers[0].pid, None);
        assert_eq!(
            order(&tasks, &p, Forker::Helper(0)),
            (vec![Child::Task(2)], 0)
        );
    }

    #[test]
    fn the_shells_session_is_kept_by_forking_before_the_roots_setsid() {
        // Started from a shell (session 500), the root forked 11 and then called setsid.
        let tasks = [m(10, 400, 10), m(11, 10, 500), m(12, 10, 10)];
        let p = plan(&tasks, RootKind::Plain).unwrap();
        assert_eq!(p.born_sid[0], Some(OUTSIDE));
        assert_eq!(
            order(&tasks, &p, Forker::Task(0)),
            (vec![Child::Task(1), Child::Task(2)], 1)
        );
        // A root that stayed in the shell's session: nothing to order.
        let tasks = [m(10, 400, 500), m(11, 10, 500), m(12, 10, 12)];
        let p = plan(&tasks, RootKind::Plain).unwrap();
        assert_eq!(p.born_sid, vec![None; 3]);
    }

    #[test]
    fn children_born_in_two_sessions_are_refused() {
        // 20 leads session 20 and has children in sessions 10 and 500 (outside): it cannot
        // have been in both before its setsid.
        let tasks = [
            m(10, 1, 10),
            m(20, 10, 20),
            m(21, 20, 10),
            m(22, 20, 500),
            m(11, 10, 11),
        ];
        assert!(matches!(
            plan(&tasks, RootKind::Plain),
            Err(SessionError::TwoBirthSessions { pid: 20, .. })
        ));
    }

    #[test]
    fn a_helper_shares_the_roots_table_for_orphans_that_do() {
        let mut o = m(3, 1, 6);
        o.shares_parent_files = true;
        let tasks = [m(1, 0, 1), o];
        let p = plan(&tasks, RootKind::PidNsInit).unwrap();
        assert!(p.helpers[0].clone_files);
        let mut o = m(3, 1, 2);
        o.shares_parent_files = true;
        let tasks = [m(1, 0, 1), m(2, 1, 2), o];
        assert!(matches!(
            plan(&tasks, RootKind::PidNsInit),
            Err(SessionError::SharedTableAcrossSessions { pid: 3, sid: 2 })
        ));
    }
}
