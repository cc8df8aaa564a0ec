//! Generational slab: O(1) access by index, and an index that outlives its
//! entry is recognised as stale instead of reaching a newer one.

#[derive(Debug)]
struct Entry<T> {
    gen: u32,
    value: Option<T>,
}

#[derive(Debug)]
pub(crate) struct Slab<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// Inserts a value built from its (index, generation).
    pub(crate) fn insert_with(&mut self, f: impl FnOnce(u32, u32) -> T) -> u32 {
        self.len += 1;
        if let Some(idx) = self.free.pop() {
            let e = &mut self.entries[idx as usize];
            e.gen = e.gen.wrapping_add(1);
            e.value = Some(f(idx, e.gen));
            idx
        } else {
            let idx = self.entries.len() as u32;
            self.entries.push(Entry {
                gen: 0,
                value: Some(f(idx, 0)),
            });
            idx
        }
    }

    pub(crate) fn get(&self, idx: u32) -> Option<&T> {
        self.entries.get(idx as usize)?.value.as_ref()
    }

    pub(crate) fn get_mut(&mut self, idx: u32) -> Option<&mut T> {
        self.entries.get_mut(idx as usize)?.value.as_mut()
    }

    /// The entry at `idx` if it is still generation `gen`.
    pub(crate) fn get_gen_mut(&mut self, idx: u32, gen: u32) -> Option<&mut T> {
        let e = self.entries.get_mut(idx as usize)?;
        if e.gen != gen {
            return None;
        }
        e.value.as_mut()
    }

    pub(crate) fn remove(&mut self, idx: u32) -> Option<T> {
        let v = self.entries.get_mut(idx as usize)?.value.take()?;
        self.free.push(idx);
        self.len -= 1;
        Some(v)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_generation_is_not_found() {
        let mut s: Slab<&str> = Slab::default();
        let a = s.insert_with(|_, _| "a");
        s.remove(a);
        let b = s.insert_with(|_, _| "b");
        assert_eq!(a, b);
        assert_eq!(s.get_gen_mut(a, 0), None);
        assert_eq!(s.get_gen_mut(b, 1).copied(), Some("b"));
        assert_eq!(s.len(), 1);
    }
}
