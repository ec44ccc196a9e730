//! Name reservations: a `RunPodSandbox` or `CreateContainer` holds its name while it works, so
//! two racing requests for one name cannot both create it, while requests for different names
//! run in parallel. A reservation ends with its guard — on success (the row then holds the name)
//! and on failure alike (rolled back), so a retry never finds the name taken by a failed try.

use std::collections::HashSet;
use std::sync::Mutex;

/// The set of names being created.
#[derive(Debug, Default)]
pub struct Reservations(Mutex<HashSet<String>>);

/// Holds one name until dropped.
#[derive(Debug)]
pub struct Reserved<'a> {
    set: &'a Reservations,
    key: String,
}

impl Reservations {
    /// Reserves `key`; `None` when another request holds it.
    pub fn try_reserve(&self, key: String) -> Option<Reserved<'_>> {
        let inserted = {
            let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
            set.insert(key.clone())
        };
        // not `then_some`: it would build (and drop, releasing the name) a guard on refusal
        if inserted {
            Some(Reserved { set: self, key })
        } else {
            None
        }
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let mut set = self.set.0.lock().unwrap_or_else(|p| p.into_inner());
        set.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_held_until_its_guard_drops() {
        let r = Reservations::default();
        let a = r.try_reserve("a".into()).expect("first");
        assert!(r.try_reserve("a".into()).is_none());
        let b = r.try_reserve("b".into()).expect("other name");
        drop(a);
        assert!(r.try_reserve("a".into()).is_some());
        drop(b);
    }
}
