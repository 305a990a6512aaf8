//! Memory a channel's home needs per member on another node (a delivering
//! engine such as Redis reports them), measured by feeding remote joins to
//! a `Hub` (no sockets) and reading this process's RSS.
//!
//! ```sh
//! cargo run --release -p hubbub-core --example remote_members -- 10000 76
//! ```
//! Arguments: rooms (default 10,000), remote members per room (default 76:
//! a node of five with 19 local members per room keeps 4 × 19 others).
//! Each room has one local seed member, so the home follows it. Members are
//! anonymous (no user), as the idle cluster benchmark's clients are.
#![allow(clippy::unwrap_used)]
// A measurement driver, not the core: it may read the clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use hubbub_core::{
    ChannelName, ClientId, Config, ConnId, Hub, Input, MemoryStore, Name, RemoteMember, Route,
    StoreEvent, Timestamp,
};

mod rss;
use rss::rss_bytes;

/// Runs the hub's store requests on `store` and drops its outputs.
fn settle(hub: &mut Hub, store: &mut MemoryStore) {
    loop {
        while hub.poll_output().is_some() {}
        while hub.poll_follow().is_some() {}
        let Some(request) = hub.poll_store() else {
            return;
        };
        let event = store.execute(request);
        hub.handle_store(Timestamp::ZERO, event);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rooms: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let per_room: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(76);
    let mut hub = Hub::with_delivering_store(Config {
        max_connections: usize::try_from(rooms).unwrap(),
        idle_streams: 0,
        ..Config::default()
    });
    let mut store = MemoryStore::new(usize::try_from(rooms).unwrap());
    for r in 0..rooms {
        hub.handle_input(
            Timestamp::ZERO,
            Input::Open {
                conn: ConnId(r),
                route: Route::Room {
                    room: Name::new(&format!("room{r}")).unwrap(),
                    username: Name::new(&format!("user{r}")).unwrap(),
                    history: 0,
                },
            },
        );
        settle(&mut hub, &mut store);
    }
    let channels: Vec<ChannelName> = (0..rooms)
        .map(|r| ChannelName::new(&format!("room{r}")))
        .collect();
    // Client ids as a node derives them: spread over the whole u128.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let before = rss_bytes();
    let start = std::time::Instant::now();
    for member in 0..per_room {
        for channel in &channels {
            let client = ClientId(u128::from(next()) << 64 | u128::from(next()));
            hub.handle_store(
                Timestamp::ZERO,
                StoreEvent::RemoteJoined {
                    channel: channel.clone(),
                    member: RemoteMember {
                        node: 1 + member % 4,
                        client,
                        user: None,
                        infos: None,
                    },
                },
            );
            while hub.poll_output().is_some() {}
        }
    }
    let elapsed = start.elapsed();
    let after = rss_bytes();
    let members = rooms * per_room;
    let per_member = after.saturating_sub(before) as f64 / members as f64;
    assert_eq!(
        hub.remote_members("room0").count() as u64,
        per_room,
        "every remote join was kept"
    );
    println!(
        "core: {rooms} rooms, {per_room} remote members each: {per_member:.0} bytes/remote member ({} MiB total RSS), joined in {elapsed:.2?}",
        after / (1 << 20),
    );
    println!(
        "{{\"rooms\":{rooms},\"per_room\":{per_room},\"core_bytes_per_remote_member\":{per_member:.0},\"rss_bytes\":{after}}}"
    );
}
