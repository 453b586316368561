//! Replaying the journal to a reconnecting client, a bounded page at a time.

use bytes::Bytes;
use relay_store::Store;

/// Journal lines read per replay page.
const REPLAY_PAGE: usize = 5000;
/// Payload bytes of one replay page at most: what a replaying client holds in the relay's memory
/// beyond its socket's buffers.
const REPLAY_PAGE_BYTES: usize = 1024 * 1024;

/// Pages of journaled payloads for a reconnecting client.
#[derive(Debug)]
pub struct Replay {
    store: Store,
    session_id: String,
    after: u64,
    upto: u64,
}

impl Replay {
    pub(crate) fn new(store: Store, session_id: String, after: u64, upto: u64) -> Replay {
        Replay {
            store,
            session_id,
            after,
            upto,
        }
    }

    /// The next page of payloads, or `None` when done.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Bytes>>, relay_store::StoreError> {
        if self.after >= self.upto {
            return Ok(None);
        }
        let rows = self
            .store
            .events(
                &self.session_id,
                self.after,
                self.upto,
                REPLAY_PAGE,
                REPLAY_PAGE_BYTES,
            )
            .await?;
        let Some(last) = rows.last() else {
            // A gap at the end (should not happen): stop rather than loop.
            self.after = self.upto;
            return Ok(None);
        };
        self.after = last.seq;
        Ok(Some(
            rows.into_iter().map(|r| Bytes::from(r.payload)).collect(),
        ))
    }
}
