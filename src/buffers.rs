//! Buffers handed back for reuse, so that a pipeline's steady state allocates no
//! memory and faults in no fresh pages: the source reader's batches, the point
//! reader's units.
//!
//! Ground floor. Imports nothing of the crate.

use std::sync::Mutex;

/// Byte buffers handed back by the last stage of a pipeline, for its first stage.
#[derive(Debug)]
pub struct BufferPool {
    buffers: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

impl BufferPool {
    /// A pool that keeps at most `keep` buffers (as many as a pipeline holds at once).
    pub fn new(keep: usize) -> Self {
        BufferPool {
            buffers: Mutex::new(Vec::new()),
            keep,
        }
    }

    /// A buffer of the pool, or a new empty one. Its length and bytes are what its
    /// last user left: the caller clears or overwrites them.
    pub fn take(&self) -> Vec<u8> {
        self.buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    /// Hands a buffer back (dropped when the pool is full).
    pub fn give(&self, buf: Vec<u8>) {
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        if buffers.len() < self.keep {
            buffers.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BufferPool;

    #[test]
    fn a_buffer_given_back_is_taken_again_up_to_keep() {
        let pool = BufferPool::new(1);
        pool.give(vec![1; 10]);
        pool.give(vec![2; 20]);
        assert_eq!(pool.take(), vec![1; 10]);
        assert!(pool.take().is_empty());
    }
}
