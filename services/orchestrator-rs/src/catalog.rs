//! The task catalog: what the zygote reported its app's tasks look like (`ZygoteCatalog`),
//! kept as bytes and handed to clients that ask (`DescribeTasks` → `TaskCatalog`, SPEC.md §4.2).
//!
//! The orchestrator never decodes the catalog payload: it is the SDK's msgpack, forwarded byte
//! for byte. A restarted zygote sends a new one, which replaces the old; until then the old one
//! is served (the app module is the same).

use neutrino_protocol::TaskCatalog;

/// What the zygote sent: the task names it describes and the msgpack payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogBytes {
    pub tasks: Vec<String>,
    pub payload: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct Catalog {
    current: Option<CatalogBytes>,
}

impl Catalog {
    /// Stores the zygote's latest catalog, replacing any earlier one.
    pub fn set(&mut self, catalog: CatalogBytes) {
        self.current = Some(catalog);
    }

    /// The answer to `DescribeTasks{nonce}`: not ready, without a payload, until a catalog arrived.
    pub fn reply(&self, nonce: u64) -> (TaskCatalog, Option<&[u8]>) {
        match &self.current {
            Some(c) => (TaskCatalog { nonce, ready: true, tasks: c.tasks.clone() }, Some(&c.payload)),
            None => (TaskCatalog { nonce, ready: false, tasks: Vec::new() }, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use neutrino_protocol::{decode_frames, encode_meta, header, Message};

    use super::*;

    fn bytes(tasks: &[&str], payload: &[u8]) -> CatalogBytes {
        CatalogBytes { tasks: tasks.iter().map(|t| t.to_string()).collect(), payload: payload.to_vec() }
    }

    #[test]
    fn not_ready_until_the_zygote_reports() {
        let catalog = Catalog::default();
        let (msg, payload) = catalog.reply(7);
        assert_eq!(msg, TaskCatalog { nonce: 7, ready: false, tasks: vec![] });
        assert!(payload.is_none() && !msg.has_payload());
    }

    #[test]
    fn the_payload_is_forwarded_byte_for_byte() {
        let mut catalog = Catalog::default();
        // Not even valid msgpack: the orchestrator must not look inside.
        catalog.set(bytes(&["add", "noop"], b"\x82\xc1 opaque"));
        let (msg, payload) = catalog.reply(8);
        assert_eq!(msg, TaskCatalog { nonce: 8, ready: true, tasks: vec!["add".into(), "noop".into()] });
        assert_eq!(payload, Some(&b"\x82\xc1 opaque"[..]));
        // and the frames a client gets decode as a TaskCatalog with that payload
        let frames = [header(TaskCatalog::TYPE).to_vec(), encode_meta(&msg), payload.unwrap().to_vec()];
        let (decoded, got) = decode_frames::<TaskCatalog, _>(&frames).unwrap();
        assert_eq!((decoded, got), (msg, Some(&b"\x82\xc1 opaque"[..])));
    }

    #[test]
    fn a_restarted_zygotes_catalog_replaces_the_old_one() {
        let mut catalog = Catalog::default();
        catalog.set(bytes(&["add"], b"\x81"));
        catalog.set(bytes(&["add", "mul"], b"\x82"));
        let (msg, payload) = catalog.reply(1);
        assert_eq!((msg.tasks.len(), payload), (2, Some(&b"\x82"[..])));
    }
}
