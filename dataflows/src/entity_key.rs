//! The key of a ride or a driver in the supply dataflow: the id with its 64-bit hash,
//! computed once where the record is split, so that neither the exchange to the entity's
//! worker (the live view's and `latest_state`'s) nor `latest_state`'s maps hash the id again.

use std::hash::{BuildHasher, Hash, Hasher};

use serde::{Deserialize, Serialize};

/// A ride or driver id and its hash.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EntityKey {
    /// foldhash of `id` with a fixed seed: the same in every process of a cluster.
    hash: u64,
    /// The id itself.
    id: String,
}

impl EntityKey {
    /// The key of `id`.
    pub(crate) fn new(id: &str) -> EntityKey {
        EntityKey {
            hash: foldhash::fast::FixedState::default().hash_one(id),
            id: id.to_owned(),
        }
    }

    /// Its hash: the exchange key of everything keyed by this entity.
    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }
}

impl PartialEq for EntityKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.id == other.id
    }
}

impl Eq for EntityKey {}

impl Hash for EntityKey {
    /// The stored hash alone (equal keys have equal hashes), so a map keyed by entity costs
    /// no pass over the id.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_equal_exactly_when_their_ids_are() {
        let a = EntityKey::new("ride-1-791556");
        assert_eq!(a, EntityKey::new("ride-1-791556"));
        assert_ne!(a, EntityKey::new("ride-1-791557"));
        // A forged collision still keeps two ids apart.
        let forged = EntityKey {
            hash: a.hash,
            id: "ride-1-000000".to_owned(),
        };
        assert_ne!(a, forged);
    }
}
