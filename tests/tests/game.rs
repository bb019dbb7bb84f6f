//! The game backend as a cluster: a real `redis-server` on a free port,
//! three `backend --redis` processes, and the balancer in front. Players
//! on different processes play together; processes die, drain and lose
//! Redis without players losing their game; the cluster-wide job runs once
//! per period.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use tests::game::{login, position, Cluster, Ended, Player, FAST};
use tests::http::{get, h1};
use tests::{Redis, DEADLINE};

/// Two players on different processes of the cluster, in one room.
async fn two_players(c: &Cluster, room: &str) -> (Player, Player) {
    let (ta, _) = login(c.addr(), "Ada").await;
    let (tb, _) = login(c.addr(), "Bob").await;
    let mut a = Player::connect(c.addr(), &ta).await;
    let mut b = Player::connect_avoiding(c.addr(), &tb, &[&a.process]).await;
    assert_ne!(a.process, b.process);
    a.join(room).await;
    let snap = b.join(room).await;
    assert!(
        position(&snap, &a.id).is_some(),
        "b sees a in the room: {snap}"
    );
    a.wait_for("joined", |v| v["player"]["id"] == b.id.as_str())
        .await;
    (a, b)
}

/// Moves `p` one step (right, or left at the right edge) and returns the
/// expected new position.
async fn step(p: &mut Player, from: (u64, u64), tag: &str) -> (u64, u64) {
    let (dir, to) = if from.0 < 15 {
        ("right", (from.0 + 1, from.1))
    } else {
        ("left", (from.0 - 1, from.1))
    };
    p.send(json!({"v": 1, "t": "move", "dir": dir, "ref": tag}))
        .await;
    to
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_on_different_processes_see_moves_and_chat() {
    let c = Cluster::start(3);
    let (mut a, mut b) = two_players(&c, "lobby").await;
    let snap = b.join("lobby").await;
    let from = position(&snap, &a.id).unwrap();

    let to = step(&mut a, from, "m1").await;
    let seen = b.wait_for("moved", |v| v["ref"] == "m1").await;
    assert_eq!(seen["player"], a.id.as_str());
    assert_eq!(
        (seen["x"].as_u64().unwrap(), seen["y"].as_u64().unwrap()),
        to
    );
    // The mover sees its own move through the same channel.
    a.wait_for("moved", |v| v["ref"] == "m1").await;

    b.send(json!({"v": 1, "t": "chat", "text": "  hello from the other process ", "ref": "c1"}))
        .await;
    let chat = a.wait_for("chat", |v| v["ref"] == "c1").await;
    assert_eq!(chat["text"], "hello from the other process");
    assert_eq!(chat["player"], b.id.as_str());
    assert_eq!(chat["name"], "Bob");

    // The state is in Redis, not in a process: a fresh snapshot has the move.
    let snap = b.join("lobby").await;
    assert_eq!(position(&snap, &a.id), Some(to));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_invalid_actions_and_keeps_the_socket() {
    let c = Cluster::start(1);
    let (token, _) = login(c.addr(), "Eve").await;
    let mut p = Player::connect(c.addr(), &token).await;
    let cases = [
        (json!("not an object"), "bad_message"),
        (json!({"v": 2, "t": "ping"}), "unsupported_version"),
        (json!({"v": 1, "t": "teleport", "x": 3}), "bad_message"),
        (json!({"v": 1, "t": "move", "dir": "up"}), "not_in_room"),
        (json!({"v": 1, "t": "join", "room": "Bad Room"}), "bad_room"),
        (json!({"v": 1, "t": "chat", "text": "hi"}), "not_in_room"),
        (
            json!({"v": 1, "t": "queue", "skill": 99999, "region": "eu"}),
            "bad_skill",
        ),
        (
            json!({"v": 1, "t": "hello", "token": token}),
            "already_authenticated",
        ),
    ];
    for (msg, code) in cases {
        p.send(msg.clone()).await;
        let e = p.wait_for("error", |_| true).await;
        assert_eq!(e["code"], code, "{msg}: {e}");
    }
    // Still served after all that.
    p.send(json!({"v": 1, "t": "ping", "ref": "still-here"}))
        .await;
    p.wait_for("pong", |v| v["ref"] == "still-here").await;

    // Off the board: walk to the top edge, then one more step up.
    let snap = p.join("edge").await;
    let (_, y) = position(&snap, &p.id).unwrap();
    for i in 0..y {
        p.send(json!({"v": 1, "t": "move", "dir": "up", "ref": format!("u{i}")}))
            .await;
        p.wait_for("moved", |v| v["ref"] == format!("u{i}").as_str())
            .await;
    }
    p.send(json!({"v": 1, "t": "move", "dir": "up"})).await;
    assert_eq!(p.wait_for("error", |_| true).await["code"], "invalid_move");

    // A socket that never says a valid hello gets nothing but errors.
    let mut stranger = tokio_tungstenite::connect_async(format!("ws://{}/play", c.addr()))
        .await
        .unwrap()
        .0;
    use futures_util::{SinkExt, StreamExt};
    stranger
        .send(tokio_tungstenite::tungstenite::Message::text(
            json!({"v": 1, "t": "hello", "token": "0".repeat(32)}).to_string(),
        ))
        .await
        .unwrap();
    let reply = stranger.next().await.unwrap().unwrap();
    assert!(
        reply.to_text().unwrap().contains("unauthenticated"),
        "{reply}"
    );

    // Room capacity: the default is 8 players.
    let mut full = Vec::new();
    for i in 0..8 {
        let (t, _) = login(c.addr(), &format!("p{i}")).await;
        let mut q = Player::connect(c.addr(), &t).await;
        q.join("small").await;
        full.push(q);
    }
    let (t, _) = login(c.addr(), "late").await;
    let mut late = Player::connect(c.addr(), &t).await;
    late.send(json!({"v": 1, "t": "join", "room": "small"}))
        .await;
    assert_eq!(late.wait_for("error", |_| true).await["code"], "room_full");

    // Bad logins are refused with 400.
    let req = ::http::Request::post(format!("http://{}/login", c.addr()))
        .body(tests::http::full("{\"name\": \"\\u0007\"}"))
        .unwrap();
    assert_eq!(tests::http::send(&h1(), req).await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_costs_a_reconnect_not_the_game() {
    let mut c = Cluster::start(3);
    let (mut a, mut b) = two_players(&c, "arena").await;
    let snap = a.join("arena").await;
    let from = position(&snap, &a.id).unwrap();
    let to = step(&mut a, from, "before").await;
    b.wait_for("moved", |v| v["ref"] == "before").await;

    // SIGKILL: no cleanup, no goodbye.
    let dead = a.process.clone();
    let idx = c.backends.iter().position(|x| x.id == dead).unwrap();
    let mut killed = c.backends.remove(idx);
    killed.proc.signal("KILL");
    killed.proc.wait_exit(DEADLINE);
    assert_eq!(a.ended().await, Ended::Dropped);

    // Reconnect through the balancer with the same session: any live
    // process resumes the player in their room where they stood.
    let mut a2 = Player::reconnect(c.addr(), &a.token).await;
    assert_ne!(a2.process, dead);
    assert_eq!(a2.id, a.id);
    let room = a2.wait_for("room", |_| true).await;
    assert_eq!(room["room"], "arena");
    assert_eq!(position(&room, &a.id), Some(to), "resumed where it stood");
    assert!(position(&room, &b.id).is_some());

    let to2 = step(&mut a2, to, "after").await;
    let seen = b.wait_for("moved", |v| v["ref"] == "after").await;
    assert_eq!(
        (seen["x"].as_u64().unwrap(), seen["y"].as_u64().unwrap()),
        to2
    );
    // b never saw a leave: the resume came before the presence expired.
    // (A player who does not come back is removed; see the next test.)
    drop(killed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_whose_process_dies_leaves_the_room_within_seconds() {
    let mut c = Cluster::start(2);
    let (a, mut b) = two_players(&c, "ghosts").await;
    let idx = c.backends.iter().position(|x| x.id == a.process).unwrap();
    let start = Instant::now();
    c.backends[idx].proc.signal("KILL");
    let left = b.wait_for("left", |v| v["player"] == a.id.as_str()).await;
    assert_eq!(left["reason"], "timeout");
    // Presence TTL 1.5 s plus a 200 ms cleanup period, with slack.
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    let snap = b.join("ghosts").await;
    assert!(position(&snap, &a.id).is_none());
    c.backends.remove(idx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_process_closes_with_1012_and_players_resume_elsewhere() {
    let mut c = Cluster::start(3);
    let (mut a, mut b) = two_players(&c, "drain").await;
    let snap = a.join("drain").await;
    let from = position(&snap, &a.id).unwrap();
    let draining = a.process.clone();
    let idx = c.backends.iter().position(|x| x.id == draining).unwrap();
    let backend_addr = c.backends[idx].addr;
    c.backends[idx].proc.signal("TERM");

    // Not ready while draining (the balancer's checks move players away).
    // The signal is handled asynchronously: wait for the switch, bounded.
    let end = Instant::now() + DEADLINE;
    loop {
        let ready = get(&h1(), &format!("http://{backend_addr}/readyz")).await;
        if ready.status == 503 {
            break;
        }
        assert_eq!(ready.status, 200, "{}", ready.text());
        assert!(
            Instant::now() < end,
            "/readyz never turned 503 while draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    assert_eq!(a.ended().await, Ended::Close(1012));
    let mut a2 = Player::reconnect(c.addr(), &a.token).await;
    assert_ne!(a2.process, draining);
    let room = a2.wait_for("room", |_| true).await;
    assert_eq!(position(&room, &a.id), Some(from));
    let to = step(&mut a2, from, "resumed").await;
    let seen = b.wait_for("moved", |v| v["ref"] == "resumed").await;
    assert_eq!(
        (seen["x"].as_u64().unwrap(), seen["y"].as_u64().unwrap()),
        to
    );

    let mut drained = c.backends.remove(idx);
    let status = drained.proc.wait_exit(DEADLINE);
    assert!(status.success(), "drained process exits 0: {status:?}");
}

/// Period -> number of runs, from the job's run counts in Redis.
fn runs(c: &Cluster, job: &str) -> BTreeMap<i64, i64> {
    let out = c.redis_cmd(&["HGETALL", &format!("game:job:{job}:runs")]);
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks_exact(2)
        .map(|kv| (kv[0].parse().unwrap(), kv[1].parse().unwrap()))
        .collect()
}

fn lease_holder(c: &Cluster, job: &str) -> Option<String> {
    let v = c.redis_cmd(&["GET", &format!("game:lease:{job}")]);
    let v = v.trim();
    (!v.is_empty()).then(|| v.rsplit_once(':').unwrap().0.to_string())
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "{what} within {DEADLINE:?}");
        // Polling Redis from outside; the deadline bounds the loop.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleanup_job_runs_once_per_period_and_survives_its_holder() {
    let mut c = Cluster::start(3);
    // 200 ms periods: wait for 10 of them.
    wait_until("10 periods run", || {
        (runs(&c, "cleanup").len() >= 10).then_some(())
    });
    let holder = wait_until("a lease holder", || lease_holder(&c, "cleanup"));
    let before = runs(&c, "cleanup");
    let last_before = *before.keys().last().unwrap();

    let idx = c.backends.iter().position(|x| x.id == holder).unwrap();
    let killed_at = Instant::now();
    c.backends[idx].proc.signal("KILL");
    let new_holder = wait_until("another holder", || {
        lease_holder(&c, "cleanup").filter(|h| *h != holder)
    });
    let takeover = killed_at.elapsed();
    // The lease is 1 s, waiters retry every 100 ms.
    assert!(
        takeover < Duration::from_millis(2500),
        "takeover took {takeover:?}"
    );
    assert_ne!(new_holder, holder);
    wait_until("10 more periods", || {
        (runs(&c, "cleanup")
            .keys()
            .filter(|p| **p > last_before)
            .count()
            >= 10)
            .then_some(())
    });

    let all = runs(&c, "cleanup");
    assert!(
        all.values().all(|n| *n == 1),
        "every period ran exactly once: {all:?}"
    );
    // Consecutive periods, except for the gap while the lease expired.
    let periods: Vec<i64> = all.keys().copied().collect();
    let gaps: Vec<i64> = periods
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|g| *g > 1)
        .collect();
    assert!(gaps.len() <= 1, "one gap at most (the takeover): {gaps:?}");
    assert!(
        gaps.iter().all(|g| *g <= 13),
        "gap within the lease: {gaps:?}"
    );
    c.backends.remove(idx);

    // A clean shutdown hands the lease over at once (released, not expired).
    let idx = c.backends.iter().position(|x| x.id == new_holder).unwrap();
    c.backends[idx].proc.signal("TERM");
    c.backends[idx].proc.wait_exit(DEADLINE);
    let third = wait_until("the last process takes over", || {
        lease_holder(&c, "cleanup").filter(|h| *h != new_holder)
    });
    assert_ne!(third, holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matchmaking_pairs_players_of_similar_skill_across_processes() {
    let c = Cluster::start(3);
    let (t1, _) = login(c.addr(), "low").await;
    let (t2, _) = login(c.addr(), "high").await;
    let (t3, _) = login(c.addr(), "low2").await;
    let mut p1 = Player::connect(c.addr(), &t1).await;
    let mut p2 = Player::connect_avoiding(c.addr(), &t2, &[&p1.process]).await;
    let mut p3 = Player::connect_avoiding(c.addr(), &t3, &[&p1.process, &p2.process]).await;
    for (p, skill) in [(&mut p1, 1000), (&mut p2, 3000), (&mut p3, 1040)] {
        p.send(json!({"v": 1, "t": "queue", "skill": skill, "region": "eu"}))
            .await;
        p.wait_for("queued", |_| true).await;
    }
    let m1 = p1.wait_for("matched", |_| true).await;
    let m3 = p3.wait_for("matched", |_| true).await;
    assert_eq!(m1["room"], m3["room"]);
    let mut players: Vec<&str> = m1["players"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    players.sort();
    let mut want = vec![p1.id.as_str(), p3.id.as_str()];
    want.sort();
    assert_eq!(players, want);
    // The 3000 player waits: nobody near their skill.
    let queued = c.redis_cmd(&["ZRANGE", "game:mm:queue:eu", "0", "-1"]);
    assert_eq!(queued.trim(), p2.id);
    // The match room is a room like any other.
    let room = m1["room"].as_str().unwrap().to_string();
    p1.join(&room).await;
    let snap = p3.join(&room).await;
    assert!(position(&snap, &p1.id).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_survived_without_restarting_processes() {
    let mut c = Cluster::start(2);
    let (mut a, mut b) = two_players(&c, "outage").await;
    let snap = a.join("outage").await;
    let from = position(&snap, &a.id).unwrap();

    let port = c.redis.port;
    c.redis.proc.signal("KILL");
    c.redis.proc.wait_exit(DEADLINE);
    // Not ready without Redis; the sockets stay open.
    for bk in &c.backends {
        bk.proc.wait_log("redis unreachable", |v| {
            v["message"] == "redis unreachable: not ready; sockets stay open"
        });
        let ready = get(&h1(), &format!("http://{}/readyz", bk.addr)).await;
        assert_eq!(ready.status, 503);
    }
    a.send(json!({"v": 1, "t": "ping", "ref": "during"})).await;
    a.wait_for("pong", |v| v["ref"] == "during").await;

    // An empty Redis comes back on the same port.
    c.redis = Redis::start_on(port).expect("restart redis on its port");
    for bk in &c.backends {
        bk.proc.wait_count("redis reachable again", 2, |v| {
            v["message"] == "redis reachable: subscriptions restored"
        });
    }
    // The processes put back what Redis lost: presence, sessions, the room.
    let players = c.redis_cmd(&["HKEYS", "game:room:outage:players"]);
    assert!(
        players.contains(&a.id) && players.contains(&b.id),
        "{players}"
    );
    let to = step(&mut a, from, "after-outage").await;
    let seen = b.wait_for("moved", |v| v["ref"] == "after-outage").await;
    assert_eq!(
        (seen["x"].as_u64().unwrap(), seen["y"].as_u64().unwrap()),
        to
    );
    // Sessions were restored too: a reconnect resumes.
    let token = a.token.clone();
    a.close().await;
    let mut a2 = Player::reconnect(c.addr(), &token).await;
    let room = a2.wait_for("room", |_| true).await;
    assert_eq!(position(&room, &a2.id), Some(to));
    let _ = &c.backends;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_moves_the_game_to_the_new_primary() {
    let primary = Redis::start();
    let replica = Redis::replica_of(&primary);
    let sentinel = Redis::sentinel(&primary, "game");
    // The sentinel learns about the replica from the primary's INFO.
    sentinel.proc.wait_log("the replica known", |v| {
        v.as_str().is_some_and(|l| l.contains("+slave"))
    });
    let url = format!("redis+sentinel://127.0.0.1:{}/game", sentinel.port);
    let c = Cluster::start_on(primary, &url, 2);
    let (mut a, mut b) = two_players(&c, "failover").await;
    let snap = a.join("failover").await;
    let mut at = position(&snap, &a.id).unwrap();

    // Sentinel refuses (NOGOODSLAVE) until it has seen the replica in sync;
    // ask until it accepts.
    let cli = |port: u16, args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    wait_until("the replica in sync", || {
        cli(replica.port, &["INFO", "replication"])
            .contains("master_link_status:up")
            .then_some(())
    });
    wait_until("sentinel accepts the failover", || {
        (cli(sentinel.port, &["SENTINEL", "FAILOVER", "game"]) == "OK").then_some(())
    });
    // A loaded machine can put the sentinel in TILT mode (its timer ran
    // late), which holds a failover for 30 s: allow for that.
    sentinel
        .proc
        .wait_log_within("the switch", Duration::from_secs(60), |v| {
            v.as_str().is_some_and(|l| l.contains("+switch-master"))
        });
    for bk in &c.backends {
        let moved = bk.proc.wait_message("redis primary changed: switching");
        assert_eq!(moved["to"], format!("127.0.0.1:{}", replica.port));
        bk.proc
            .wait_message("subscriptions moved to the new primary");
    }

    // Moves work again on the new primary, from where the replica had the
    // player (the room was replicated). Actions that hit the old primary
    // while it turned read-only are refused ("unavailable") and retried.
    let end = Instant::now() + DEADLINE;
    let mut n = 0;
    loop {
        n += 1;
        let tag = format!("after-{n}");
        let to = step(&mut a, at, &tag).await;
        // A move the old primary took just before it stepped down is
        // published where nobody listens any more (at-most-once): no reply
        // within 2 s means try again.
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            a.wait_for_any(&["moved", "error"], |v| {
                v["t"] == "error" || v["ref"] == tag.as_str()
            }),
        )
        .await
        .unwrap_or_else(|_| json!({"t": "lost"}));
        if reply["t"] == "moved" {
            let seen = b.wait_for("moved", |v| v["ref"] == tag.as_str()).await;
            assert_eq!(
                (seen["x"].as_u64().unwrap(), seen["y"].as_u64().unwrap()),
                to
            );
            break;
        }
        assert!(
            Instant::now() < end,
            "no move accepted after the failover: {reply}"
        );
        at = position(&a.join("failover").await, &a.id).unwrap_or(at);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_game_runs_on_redis_over_tls_with_a_private_ca() {
    let (redis, ca) = Redis::start_tls();
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    // Without the CA the certificate is refused: the process never gets ready.
    let untrusting = tests::Backend::start_game("no-ca", &url, FAST);
    let refused = untrusting.proc.wait_log("redis unreachable", |v| {
        v["message"] == "redis unreachable: not ready; sockets stay open"
    });
    assert!(
        refused["error"].as_str().unwrap().contains("certificate"),
        "{refused}"
    );
    let ready = get(&h1(), &format!("http://{}/readyz", untrusting.addr)).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    drop(untrusting);

    let ca = ca.display().to_string();
    let c = Cluster::start_with(redis, &url, 2, &["--redis-ca", &ca]);
    let (mut a, mut b) = two_players(&c, "tls").await;
    let snap = a.join("tls").await;
    let from = position(&snap, &a.id).unwrap();
    let to = step(&mut a, from, "over-tls").await;
    let seen = b.wait_for("moved", |v| v["ref"] == "over-tls").await;
    assert_eq!(
        (seen["x"].as_u64().unwrap(), seen["y"].as_u64().unwrap()),
        to
    );
}
