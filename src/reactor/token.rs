//! Typed connection ids: a slab key plus a generation, packed into one mio `Token`.
//!
//! `slab` hands out the most recently freed key first, and events already in the current
//! batch still arrive after a deregister. A token that carried only the key would deliver
//! those stale events to whichever connection took the slot next; the generation makes them
//! miss.

#[cfg(not(target_pointer_width = "64"))]
compile_error!("socklab packs a 32-bit generation beside the slab key in a 64-bit mio Token");

use mio::Token;
use slab::Slab;

/// The token of the signal pipe: outside every key the slab can hand out (keys are < 2^32 - 3).
pub const SIGNAL: Token = Token(usize::MAX);

/// The token of the disk thread's waker, likewise outside the slab's keys.
pub const WAKER: Token = Token(usize::MAX - 1);

/// The token of the alarm (the timerfd of the reactor's deadlines), likewise.
pub const ALARM: Token = Token(usize::MAX - 2);

/// The token of the control socket (`handover/control.rs`), likewise.
pub const CONTROL: Token = Token(usize::MAX - 3);

/// The token of control connection 0; connection `i` has `CONTROL_CONNS - i` (a few of them).
pub const CONTROL_CONNS: Token = Token(usize::MAX - 4);

/// The token of the chat bus's connection to Redis (`bus.rs`), below the control
/// connections' (`handover::control::MAX_CONNS` of them).
pub const BUS: Token = Token(usize::MAX - 12);

/// The token the status page's once-a-second sample of the counters gathers for
/// (`history.rs`): no connection, the answer goes into the history.
pub const HISTORY: Token = Token(usize::MAX - 13);

/// Keys at the top of the key space kept for the tokens above.
const RESERVED_KEYS: usize = 16;

/// Key bits of a token; the generation takes the bits above them.
const KEY_BITS: u32 = 32;
const KEY_MASK: usize = (1 << KEY_BITS) - 1;

/// One occupied slot: the generation it was filled in, and what it holds.
#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: T,
}

/// A slab whose entries are addressed by generation-checked tokens.
#[derive(Debug)]
pub struct Sources<T> {
    /// The entries themselves.
    slab: Slab<Slot<T>>,
    /// Bumped at every insert; a slot's token carries the value it got then.
    next_generation: u32,
    /// Where each key's slot is in memory, as a number (0: never filled), for `prefetch`: eight
    /// bytes a key, so the table stays in the cache while the slots it points at do not.
    places: Vec<usize>,
}

impl<T> Default for Sources<T> {
    fn default() -> Self {
        Sources {
            slab: Slab::new(),
            next_generation: 0,
            places: Vec::new(),
        }
    }
}

/// Notes where `key`'s slot is, for `Sources::prefetch`.
fn remember_place<T>(places: &mut Vec<usize>, key: usize, slot: &Slot<T>) {
    if places.len() <= key {
        places.resize(key + 1, 0);
    }
    if let Some(p) = places.get_mut(key) {
        *p = std::ptr::from_ref(slot).addr();
    }
}

fn split(token: Token) -> (usize, u32) {
    let generation = u32::try_from(token.0 >> KEY_BITS).unwrap_or(u32::MAX);
    (token.0 & KEY_MASK, generation)
}

impl<T> Sources<T> {
    /// Stores `value` and returns the token that names it for its whole life. `None` when
    /// the slab is full (2^32 - 3 entries), which only a misconfiguration could reach.
    pub fn insert(&mut self, value: T) -> Option<Token> {
        let capacity = self.slab.capacity();
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        // The top keys belong to SIGNAL, WAKER, ALARM, CONTROL and the control connections.
        if key >= KEY_MASK - RESERVED_KEYS {
            return None;
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        entry.insert(Slot { generation, value });
        if self.slab.capacity() == capacity {
            if let Some(slot) = self.slab.get(key) {
                remember_place(&mut self.places, key, slot);
            }
        } else {
            // The slots moved with the slab's storage: every place is new.
            self.places.clear();
            for (k, slot) in self.slab.iter() {
                remember_place(&mut self.places, k, slot);
            }
        }
        Some(Token(((generation as usize) << KEY_BITS) | key))
    }

    /// Asks for the slot `token` names to be brought into the cache, from its remembered place:
    /// nothing of the slot is read (a freed or reused slot is fetched all the same, harmlessly).
    pub fn prefetch(&self, token: Token) {
        let (key, _) = split(token);
        if let Some(&place) = self.places.get(key).filter(|p| **p != 0) {
            super::prefetch::place(place, size_of::<Slot<T>>());
        }
    }

    /// The entry `token` names, unless it has been removed (even if its slot was reused).
    pub fn get(&self, token: Token) -> Option<&T> {
        let (key, generation) = split(token);
        self.slab
            .get(key)
            .filter(|s| s.generation == generation)
            .map(|s| &s.value)
    }

    /// Mutable access, as `get`.
    pub fn get_mut(&mut self, token: Token) -> Option<&mut T> {
        let (key, generation) = split(token);
        self.slab
            .get_mut(key)
            .filter(|s| s.generation == generation)
            .map(|s| &mut s.value)
    }

    /// Removes the entry `token` names, if it is still there.
    pub fn remove(&mut self, token: Token) -> Option<T> {
        let (key, generation) = split(token);
        match self.slab.get(key) {
            Some(s) if s.generation == generation => Some(self.slab.remove(key).value),
            _ => None,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Every (token, entry) pair, for the rare whole-table walks (shutdown).
    pub fn iter(&self) -> impl Iterator<Item = (Token, &T)> {
        self.slab
            .iter()
            .map(|(key, s)| (Token(((s.generation as usize) << KEY_BITS) | key), &s.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_slot_does_not_answer_to_its_predecessors_token() {
        let mut s = Sources::default();
        let a = s.insert("a").unwrap();
        let b = s.insert("b").unwrap();
        assert_eq!(s.remove(a), Some("a"));
        // slab reuses the freed key at once...
        let c = s.insert("c").unwrap();
        assert_eq!(c.0 & KEY_MASK, a.0 & KEY_MASK, "the slot is reused");
        assert_ne!(c, a);
        // ...but a stale event for `a` finds nothing, and cannot remove `c`.
        assert_eq!(s.get(a), None);
        assert_eq!(s.get_mut(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get(c), Some(&"c"));
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn tokens_never_collide_with_the_signal_token() {
        let mut s = Sources::default();
        for i in 0..1000 {
            let t = s.insert(i).unwrap();
            assert_ne!(t, SIGNAL);
            assert_ne!(t, WAKER);
            assert_ne!(t, ALARM);
            assert_ne!(t, CONTROL);
            assert!(t.0 > CONTROL_CONNS.0 || t.0 < CONTROL_CONNS.0 - RESERVED_KEYS);
            assert_eq!(s.get(SIGNAL), None);
            assert_eq!(s.get(WAKER), None);
            assert_eq!(s.get(ALARM), None);
            if i % 2 == 0 {
                s.remove(t);
            }
        }
        assert_eq!(s.iter().count(), s.len());
        for (t, v) in s.iter() {
            assert_eq!(s.get(t), Some(v));
        }
    }

    #[test]
    fn generations_wrap_without_panicking() {
        let mut s = Sources {
            slab: Slab::new(),
            next_generation: u32::MAX,
            places: Vec::new(),
        };
        let a = s.insert(1).unwrap();
        let b = s.insert(2).unwrap();
        assert_eq!(s.get(a), Some(&1));
        assert_eq!(s.get(b), Some(&2));
    }

    #[test]
    fn remembered_places_follow_the_slots_when_the_slab_grows_and_reuses_keys() {
        let mut s = Sources::default();
        let mut tokens = Vec::new();
        for i in 0..1000u64 {
            tokens.push(s.insert(i).unwrap());
            if i % 3 == 0 {
                let t = tokens.swap_remove(tokens.len() / 2);
                s.remove(t);
            }
        }
        assert!(!tokens.is_empty());
        for (key, slot) in s.slab.iter() {
            assert_eq!(
                s.places.get(key).copied(),
                Some(std::ptr::from_ref(slot).addr()),
                "key {key}"
            );
        }
        // A hint for a token never handed out, or for a removed slot, is harmless.
        s.prefetch(Token(usize::MAX >> 1));
        s.prefetch(tokens[0]);
    }
}
