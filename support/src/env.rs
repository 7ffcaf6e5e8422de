//! The one place where environment variables are read. Code takes an
//! [`Env`] so that tests inject their own values instead of mutating the
//! process environment (which is racy across test threads).

use std::collections::HashMap;

/// A source of environment variables.
pub trait Env: Send + Sync {
    /// The value of `key`, if set and valid UTF-8.
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

/// A fixed map of variables, for tests and embedding.
#[derive(Debug, Clone, Default)]
pub struct MapEnv(pub HashMap<String, String>);

impl MapEnv {
    /// An environment with the given pairs.
    pub fn from_pairs<const N: usize>(pairs: [(&str, &str); N]) -> Self {
        MapEnv(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

impl Env for MapEnv {
    fn var(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

/// The rule every test tier that needs something from the machine follows
/// (root, a system package, a PostgreSQL server): when `unavailable` gives a
/// reason the tier cannot run, print `SKIPPED <test>: <reason>` and return
/// true, or panic when `CI` is `true` (read through `env`), where a skipped
/// tier would hide a regression. `tier` names it in the panic.
pub fn skip_tier(test: &str, tier: &str, env: &dyn Env, unavailable: Option<String>) -> bool {
    let Some(reason) = unavailable else {
        return false;
    };
    if env.var("CI").as_deref() == Some("true") {
        panic!("{test}: the {tier} tier cannot run under CI=true: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
    true
}
