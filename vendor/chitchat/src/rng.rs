//! Where chitchat's random choices come from (lbmesh patch).
//!
//! By default, as upstream: the thread's random generator. A deterministic
//! simulation running every node on one thread calls [`seed_thread`] first;
//! then every choice (gossip targets, delta order) follows from the seed.

use std::cell::RefCell;

use rand::SeedableRng;
use rand::rngs::SmallRng;

thread_local! {
    static SEEDED: RefCell<Option<SmallRng>> = const { RefCell::new(None) };
}

/// Makes chitchat's random choices on this thread follow `seed`.
pub fn seed_thread(seed: u64) {
    SEEDED.with(|s| *s.borrow_mut() = Some(SmallRng::seed_from_u64(seed)));
}

/// Goes back to the thread's random generator.
pub fn unseed_thread() {
    SEEDED.with(|s| *s.borrow_mut() = None);
}

/// A generator: derived from the seeded one if this thread has it.
pub(crate) fn generator() -> SmallRng {
    SEEDED.with(|s| match s.borrow_mut().as_mut() {
        Some(seeded) => SmallRng::from_rng(seeded),
        None => SmallRng::from_rng(&mut rand::rng()),
    })
}
