//! Memory the core needs per connection, measured by opening many
//! connections in a `Hub` (no sockets) and reading this process's RSS.
//!
//! ```sh
//! cargo run --release -p hubbub-core --example memory -- 1000000 100
//! ```
//! Arguments: connections (default 1,000,000), members per room (default
//! 100; 0 = all on the relay). Prints one line per layout and a JSON line.
#![allow(clippy::unwrap_used)]
// A measurement driver, not the core: it may read the clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use hubbub_core::{Config, ConnId, Hub, Input, Name, Route, Timestamp};

mod rss;
use rss::rss_bytes;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let per_room: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let config = Config {
        max_connections: usize::try_from(n).unwrap(),
        ..Config::default()
    };
    // Names are built before the baseline so only the hub's own memory counts.
    let routes: Vec<Route> = (0..n)
        .map(|c| match c.checked_div(per_room) {
            None => Route::Relay,
            Some(room) => Route::Room {
                room: Name::new(&format!("room{room}")).unwrap(),
                username: Name::new(&format!("user{c}")).unwrap(),
                history: 0,
            },
        })
        .collect();
    let names_rss = rss_bytes();
    let mut hub = Hub::new(config);
    let start = std::time::Instant::now();
    for (c, route) in routes.iter().enumerate() {
        let route = route.clone(); // shares the names' allocations
        hub.handle_input(
            Timestamp::ZERO,
            Input::Open {
                conn: ConnId(c as u64),
                route,
            },
        );
        while hub.poll_output().is_some() {}
    }
    let elapsed = start.elapsed();
    let after = rss_bytes();
    let per_conn = after.saturating_sub(names_rss) as f64 / n as f64;
    println!(
        "core: {n} connections, {} per room: {:.0} bytes/connection on top of their names ({} MiB total RSS), opened in {:.2?}",
        if per_room == 0 { "relay".to_owned() } else { per_room.to_string() },
        per_conn,
        after / (1 << 20),
        elapsed
    );
    println!(
        "{{\"connections\":{n},\"per_room\":{per_room},\"core_bytes_per_connection\":{per_conn:.0},\"rss_bytes\":{after}}}"
    );
    assert_eq!(hub.connection_count() as u64, n);
    drop(routes);
}
