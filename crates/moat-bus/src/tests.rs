use std::sync::Mutex;

use moat_core::authz::Subject;
use moat_core::message::{
    Aggregate, Bucket, ContentType, MessageQuery, Protocol, RecordQuery, Stored, StoredRecord,
};
use moat_core::{DeviceId, MessageId, TenantId};

use super::*;

/// A store that keeps messages in memory: the bus's own logic under test.
#[derive(Default)]
struct Memory(Mutex<Vec<Arc<Message>>>);

#[async_trait]
impl MessageStore for Memory {
    async fn append(&self, m: Vec<Arc<Message>>) -> Result<Vec<i64>, StoreError> {
        let mut v = self.0.lock().unwrap();
        let start = v.len() as i64;
        v.extend(m.iter().cloned());
        Ok((start..v.len() as i64).collect())
    }
    async fn messages(&self, _: &MessageQuery) -> Result<Vec<Stored>, StoreError> {
        Ok(Vec::new())
    }
    async fn records(&self, _: &RecordQuery) -> Result<Vec<StoredRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn aggregate(
        &self,
        _: &RecordQuery,
        _: Aggregate,
        _: i64,
    ) -> Result<Vec<Bucket>, StoreError> {
        Ok(Vec::new())
    }
    async fn expire(&self, _: ChannelId, _: i64) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn stored_channels(&self) -> Result<Vec<ChannelId>, StoreError> {
        Ok(Vec::new())
    }
}

fn message(channel: ChannelId, subtopic: &str) -> Arc<Message> {
    Arc::new(Message {
        id: MessageId::new(),
        tenant_id: TenantId::new(),
        channel_id: channel,
        subtopic: subtopic.into(),
        publisher: Subject::Device(DeviceId::new()),
        protocol: Protocol::Http,
        content_type: ContentType::OctetStream,
        payload: b"x".to_vec(),
        received_at: 0,
        records: Vec::new(),
    })
}

#[tokio::test]
async fn stored_first_then_delivered_by_filter() {
    let store = Arc::new(Memory::default());
    let bus = LocalBus::new(store.clone());
    let (a, b) = (ChannelId::new(), ChannelId::new());
    let mut all = bus.subscribe(
        Filter {
            channel: a,
            subtopic: None,
        },
        8,
    );
    let mut rooms = bus.subscribe(
        Filter {
            channel: a,
            subtopic: Some("room/+".into()),
        },
        8,
    );
    let seqs = bus
        .publish(vec![
            message(a, "room/1"),
            message(a, "hall"),
            message(b, ""),
        ])
        .await
        .unwrap();
    assert_eq!(seqs, [0, 1, 2]);
    assert_eq!(store.0.lock().unwrap().len(), 3);
    assert_eq!(all.recv().await.unwrap().subtopic, "room/1");
    assert_eq!(all.recv().await.unwrap().subtopic, "hall");
    assert_eq!(rooms.recv().await.unwrap().subtopic, "room/1");
    drop(all);
    drop(rooms);
    assert_eq!(bus.subscribers(), 0, "dropping unsubscribes");
}

#[tokio::test]
async fn a_slow_subscriber_is_cut_off_and_the_others_carry_on() {
    let bus = LocalBus::new(Arc::new(Memory::default()));
    let c = ChannelId::new();
    let filter = Filter {
        channel: c,
        subtopic: None,
    };
    let mut slow = bus.subscribe(filter.clone(), 2);
    let mut fast = bus.subscribe(filter, 100);
    for _ in 0..5 {
        bus.publish(vec![message(c, "")]).await.unwrap();
        assert!(fast.recv().await.is_some());
    }
    assert!(slow.cut_off());
    assert!(slow.recv().await.is_none(), "no silent gap: it ends");
    assert_eq!(bus.subscribers(), 1);
}

#[tokio::test]
async fn a_subscriber_to_every_channel_gets_them_all_and_leaves_on_drop() {
    let bus = LocalBus::new(Arc::new(Memory::default()));
    let (a, b) = (ChannelId::new(), ChannelId::new());
    let mut all = bus.subscribe_all(8, Some(Protocol::Mqtt));
    let mut only_a = bus.subscribe(
        Filter {
            channel: a,
            subtopic: None,
        },
        8,
    );
    let mut own = message(b, "mine");
    Arc::make_mut(&mut own).protocol = Protocol::Mqtt;
    bus.publish(vec![message(a, "x"), own, message(b, "y")])
        .await
        .unwrap();
    // The skipped protocol's message is not offered.
    assert_eq!(all.recv().await.unwrap().channel_id, a);
    assert_eq!(all.recv().await.unwrap().channel_id, b);
    assert_eq!(only_a.recv().await.unwrap().channel_id, a);
    assert_eq!(bus.subscribers(), 2);
    drop(all);
    assert_eq!(bus.subscribers(), 1);
}

#[tokio::test]
async fn a_full_subscriber_to_every_channel_is_cut_off() {
    let bus = LocalBus::new(Arc::new(Memory::default()));
    let mut all = bus.subscribe_all(1, None);
    let c = ChannelId::new();
    bus.publish(vec![message(c, "1"), message(c, "2")])
        .await
        .unwrap();
    assert!(all.recv().await.is_none());
    assert!(all.cut_off());
    assert_eq!(bus.subscribers(), 0);
}
