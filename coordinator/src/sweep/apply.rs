//! `vantage sweep apply FILE` as a plan (DESIGN §6): what must be created,
//! updated and deleted so that the stored sweeps match the file's, decided
//! before anything changes, so that `--dry-run` prints exactly what a real
//! apply would do and a file with a duplicate name changes nothing.
//!
//! The plan is generic over the sweep definition: any type that can say
//! whether two definitions are the same. Parsing the file and storing the
//! result are the CLI's and the store's.

use std::collections::{BTreeMap, BTreeSet};

/// The file names one sweep twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sweep {0:?} is defined more than once")]
pub struct DuplicateName(pub String);

/// What an apply does, by sweep name (each list sorted by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyPlan<T> {
    /// In the file, not stored: create.
    pub create: Vec<(String, T)>,
    /// In both, with another definition: update to the file's.
    pub update: Vec<(String, T)>,
    /// In both, the same: nothing to do.
    pub unchanged: Vec<String>,
    /// Stored, not in the file: delete.
    pub delete: Vec<String>,
}

impl<T> ApplyPlan<T> {
    /// Whether applying changes nothing.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }

    /// One line per change, as `--dry-run` prints them: `+ NAME` (create),
    /// `~ NAME` (update), `- NAME` (delete), then a count line.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        out.extend(self.create.iter().map(|(name, _)| format!("+ {name}")));
        out.extend(self.update.iter().map(|(name, _)| format!("~ {name}")));
        out.extend(self.delete.iter().map(|name| format!("- {name}")));
        out.push(format!(
            "{} to create, {} to update, {} to delete, {} unchanged",
            self.create.len(),
            self.update.len(),
            self.delete.len(),
            self.unchanged.len()
        ));
        out
    }
}

/// The plan that makes `stored` match `wanted`.
pub fn plan<T: PartialEq + Clone>(
    stored: &[(String, T)],
    wanted: &[(String, T)],
) -> Result<ApplyPlan<T>, DuplicateName> {
    let mut seen = BTreeSet::new();
    for (name, _) in wanted {
        if !seen.insert(name.as_str()) {
            return Err(DuplicateName(name.clone()));
        }
    }
    let stored: BTreeMap<&str, &T> = stored.iter().map(|(n, d)| (n.as_str(), d)).collect();
    let wanted_by_name: BTreeMap<&str, &T> = wanted.iter().map(|(n, d)| (n.as_str(), d)).collect();
    let mut plan = ApplyPlan {
        create: Vec::new(),
        update: Vec::new(),
        unchanged: Vec::new(),
        delete: Vec::new(),
    };
    for (name, definition) in &wanted_by_name {
        match stored.get(name) {
            None => plan.create.push((name.to_string(), (*definition).clone())),
            Some(current) if *current == *definition => plan.unchanged.push(name.to_string()),
            Some(_) => plan.update.push((name.to_string(), (*definition).clone())),
        }
    }
    plan.delete = stored
        .keys()
        .filter(|name| !wanted_by_name.contains_key(*name))
        .map(|name| name.to_string())
        .collect();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs(items: &[(&str, u32)]) -> Vec<(String, u32)> {
        items.iter().map(|(n, d)| (n.to_string(), *d)).collect()
    }

    #[test]
    fn the_plan_creates_updates_and_deletes_by_name() {
        let stored = defs(&[("a", 1), ("b", 2), ("c", 3)]);
        let wanted = defs(&[("d", 4), ("b", 20), ("a", 1)]);
        let plan = plan(&stored, &wanted).unwrap();
        assert_eq!(plan.create, defs(&[("d", 4)]));
        assert_eq!(plan.update, defs(&[("b", 20)]));
        assert_eq!(plan.unchanged, ["a"]);
        assert_eq!(plan.delete, ["c"]);
        assert!(!plan.is_empty());
        assert_eq!(
            plan.lines(),
            [
                "+ d",
                "~ b",
                "- c",
                "1 to create, 1 to update, 1 to delete, 1 unchanged"
            ]
        );
    }

    #[test]
    fn applying_the_stored_set_changes_nothing() {
        let stored = defs(&[("a", 1), ("b", 2)]);
        let plan = plan(&stored, &stored).unwrap();
        assert!(plan.is_empty());
        assert_eq!(plan.unchanged, ["a", "b"]);
    }

    #[test]
    fn a_duplicate_name_refuses_the_whole_file() {
        let err = plan(&defs(&[("a", 1)]), &defs(&[("x", 1), ("x", 2)])).unwrap_err();
        assert_eq!(err, DuplicateName("x".into()));
        assert_eq!(err.to_string(), "sweep \"x\" is defined more than once");
    }

    #[test]
    fn an_empty_file_deletes_every_sweep() {
        let plan = plan(&defs(&[("a", 1), ("b", 2)]), &[]).unwrap();
        assert_eq!(plan.delete, ["a", "b"]);
    }
}
