//! End-to-end tests of the front door: real mosquitto brokers behind an in-process mqtt-lb, real rumqttc clients
//! over real TLS. Each broker holds a retained `lb/whoami` naming itself, so a test learns where a client landed by
//! asking the broker through the proxy (`which_broker`), not by looking inside the proxy.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use mqtt_lb::balancer::selection::placement_hash;

/// Bound of every test body.
const TEST_LIMIT: Duration = Duration::from_secs(45);

/// Health settings of the test configs (see `yaml_for`): probe every 200 ms, rise 2, fall 2.
const INTERVAL: Duration = Duration::from_millis(200);
const RISE: u32 = 2;
const FALL: u32 = 2;
/// Slack for scheduling on a loaded 2-core machine, on top of rise/fall x interval.
const HEALTH_MARGIN: Duration = Duration::from_millis(1500);

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The placement hash as documented in `src/balancer/selection.rs`, computed here independently of the library:
/// xxHash64 with the fixed seed 0x6d71_7474_6c62_0001 over `server ++ [0xFF] ++ client_id`. Fixed algorithm and seed
/// are what make instances in different processes (and versions) agree.
fn documented_hash(server: &str, client_id: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = twox_hash::XxHash64::with_seed(0x6d71_7474_6c62_0001);
    h.write(server.as_bytes());
    h.write(&[0xFF]);
    h.write(client_id.as_bytes());
    let value = h.finish();
    assert_eq!(
        value,
        placement_hash(server, client_id.as_bytes()),
        "the library's hash differs from the documented one"
    );
    value
}

fn within(count: usize, expected: usize, tolerance: f64) -> bool {
    let (c, e) = (count as f64, expected as f64);
    (c - e).abs() <= e * tolerance
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Pub/sub through the proxy.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sub_through_the_proxy_over_tls_v311_and_v5() {
    bounded(TEST_LIMIT, "test", async {
        let cluster = Cluster::start(2).await;
        let proxy = TestProxy::start(&cluster.yaml().build()).await;
        let placement = Placement::new(&proxy.config);
        let tls = cluster.pki.client_config();

        // The listener is TLS only: a plain MQTT client gets no CONNACK.
        assert!(
            connect_v4(proxy.mqtts, None, "t1-plain").await.is_err(),
            "plain MQTT was accepted on the TLS listener"
        );

        for (version, tag) in [(Version::V4, "v311"), (Version::V5, "v5")] {
            // Subscriber and publisher are different clients whose ids land on the same broker: the message crosses
            // that broker, so it arrives only if both relays reach it.
            let sub_id = format!("t1-{tag}-sub");
            let broker = placement.place(&sub_id);
            let pub_id = id_on(&placement, &format!("t1-{tag}-pub"), &broker);
            assert_eq!(which_broker(proxy.mqtts, Some(tls.clone()), &sub_id, version).await, broker);
            assert_eq!(which_broker(proxy.mqtts, Some(tls.clone()), &pub_id, version).await, broker);

            let topic = format!("t1/{tag}/data");
            let mut sub =
                MqttClient::connect(proxy.mqtts, Some(tls.clone()), &sub_id, version).await.expect("subscriber");
            sub.subscribe(&topic).await.expect("subscribe through the proxy");
            let mut publisher =
                MqttClient::connect(proxy.mqtts, Some(tls.clone()), &pub_id, version).await.expect("publisher");
            let payload = format!("hello over TLS, {tag}");
            publisher.publish(&topic, payload.as_bytes(), false).await.expect("publish through the proxy");
            let got = sub.next_publish(&topic, STEP_TIMEOUT).await.expect("the message reaches the subscriber");
            assert_eq!(got, payload.as_bytes(), "{tag}: payload changed on the way");

            // The broker saw both client ids: the CONNECT reached it with the client's own id.
            let b = cluster.brokers.iter().find(|b| b.name == broker).expect("broker by name");
            let seen = b.client_ids_seen();
            assert!(seen.contains(&sub_id) && seen.contains(&pub_id), "{broker} saw {seen:?}");
            publisher.disconnect().await;
            sub.disconnect().await;
        }
        let sent = metric(
            proxy.admin,
            &format!(
                "mqttlb_server_sent_bytes_total{{backend=\"brokers\",server=\"{}\"}}",
                placement.place("t1-v5-sub")
            ),
        )
        .await;
        assert!(sent > 0.0, "no bytes counted to the broker");
        proxy.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sub_through_a_listener_with_an_rsa_certificate() {
    bounded(TEST_LIMIT, "test", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = match TestPki::new_rsa(dir.path()) {
            Ok(p) => p,
            Err(why) => {
                eprintln!("pub_sub_through_a_listener_with_an_rsa_certificate: {why}");
                return;
            }
        };
        let broker = Mosquitto::start(dir.path(), "rsa0").await;
        let proxy = TestProxy::start(&yaml_for(&pki, &[&broker]).build()).await;
        let tls = pki.client_config();
        for version in [Version::V4, Version::V5] {
            assert_eq!(which_broker(proxy.mqtts, Some(tls.clone()), "t1-rsa", version).await, "rsa0");
        }
        let mut c = MqttClient::connect(proxy.mqtts, Some(tls), "t1-rsa-rt", Version::V5).await.expect("connect");
        c.round_trip("t1/rsa", b"rsa").await.expect("round trip over an RSA certificate");
        c.disconnect().await;
        proxy.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Stickiness and agreement between instances.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_client_id_sticks_and_two_instances_place_ids_identically() {
    bounded(TEST_LIMIT, "test", async {
        let cluster = Cluster::start(3).await;
        let yaml = cluster.yaml().build();
        // Two instances of the same configuration, each parsing it on its own, on other ports.
        let a = TestProxy::start(&yaml).await;
        let b = TestProxy::start(&yaml).await;
        assert_ne!(a.mqtts, b.mqtts);
        let tls = cluster.pki.client_config();

        let sticky = "t2-sticky-client";
        let expected = Placement::new(&a.config).place(sticky);
        for round in 0..5 {
            let version = if round % 2 == 0 { Version::V4 } else { Version::V5 };
            let got = which_broker(a.mqtts, Some(tls.clone()), sticky, version).await;
            assert_eq!(got, expected, "reconnect {round} of {sticky} landed elsewhere");
        }

        // A sample through both instances, over real connections (v3.1.1 on one, v5 on the other: placement
        // depends on the client id only).
        let sample = ids("t2-sample", 30);
        let via_a = which_brokers(a.mqtts, Some(tls.clone()), &sample, Version::V4).await;
        let via_b = which_brokers(b.mqtts, Some(tls.clone()), &sample, Version::V5).await;
        assert_eq!(via_a, via_b, "the two instances placed the sample differently");
        let used: BTreeSet<&String> = via_a.iter().collect();
        assert!(used.len() >= 2, "the sample should use several brokers, used {used:?}");

        // All 1,000 ids through the library's selection, built from each instance's configuration, and against the
        // documented algorithm (highest xxHash64 score over server names when weights are equal).
        let (pa, pb) = (Placement::new(&a.config), Placement::new(&b.config));
        let names: Vec<String> = a.config.backends[0].servers.iter().map(|s| s.name.clone()).collect();
        for (i, id) in ids("t2-id", 1000).iter().enumerate() {
            let (on_a, on_b) = (pa.place(id), pb.place(id));
            assert_eq!(on_a, on_b, "id {id} placed differently by the two instances");
            let documented = names
                .iter()
                .max_by_key(|n| (documented_hash(n, id), std::cmp::Reverse((*n).clone())))
                .expect("servers");
            assert_eq!(&on_a, documented, "id {id} does not follow the documented hash");
            if i < sample.len() {
                // The real sample agrees with the library.
                assert_eq!(pa.place(&sample[i]), via_a[i], "{} landed off its computed server", sample[i]);
            }
        }
        a.stop().await;
        b.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Spread.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_spread_evenly_over_equal_brokers_and_weights_shift_the_spread() {
    bounded(TEST_LIMIT, "test", async {
        let cluster = Cluster::start(3).await;
        let tls = cluster.pki.client_config();
        let equal = TestProxy::start(&cluster.yaml().build()).await;
        let weighted = TestProxy::start(&cluster.yaml().weights(&[1, 2, 1]).build()).await;

        // The distribution over thousands of ids is measured with the library's selection over the proxy's own
        // servers (thousands of real connections would add time, not evidence); real connections below check that
        // the proxy follows that selection.
        let p_equal = Placement::new(&equal.config);
        let many = ids("t3-spread", 3000);
        let spread = p_equal.spread(many.iter().map(String::as_str));
        assert_eq!(spread.len(), 3, "{spread:?}");
        for (server, count) in &spread {
            assert!(within(*count, 1000, 0.10), "{server} got {count} of 3000 ids: {spread:?}");
        }

        let sample = ids("t3-real", 60);
        let landed = which_brokers(equal.mqtts, Some(tls.clone()), &sample, Version::V4).await;
        for (id, got) in sample.iter().zip(&landed) {
            assert_eq!(got, &p_equal.place(id), "{id} landed off its computed server");
        }
        let used: BTreeSet<&String> = landed.iter().collect();
        assert_eq!(used.len(), 3, "60 ids should reach all three brokers: {used:?}");

        // Weights 1:2:1 -> 1/4, 1/2, 1/4 of the ids.
        let p_weighted = Placement::new(&weighted.config);
        let many = ids("t3-weighted", 4000);
        let spread = p_weighted.spread(many.iter().map(String::as_str));
        let expected = [("b0", 1000), ("b1", 2000), ("b2", 1000)];
        for (server, want) in expected {
            let got = spread.get(server).copied().unwrap_or(0);
            assert!(within(got, want, 0.10), "{server}: {got} of 4000 ids, expected {want}±10%: {spread:?}");
        }
        // Real connections through the weighted proxy follow the weighted placement, including ids whose place
        // differs from the equal-weight one.
        // (Distinct ids only: two live connections with one id would take over each other's session.)
        let moved: Vec<String> =
            many.iter().skip(20).filter(|id| p_weighted.place(id) != p_equal.place(id)).take(10).cloned().collect();
        assert_eq!(moved.len(), 10, "weights should move some ids");
        let mut sample: Vec<String> = many.iter().take(20).cloned().collect();
        sample.extend(moved.iter().cloned());
        let landed = which_brokers(weighted.mqtts, Some(tls.clone()), &sample, Version::V5).await;
        for (id, got) in sample.iter().zip(&landed) {
            assert_eq!(got, &p_weighted.place(id), "{id} landed off its weighted server");
        }
        equal.stop().await;
        weighted.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Failover and recovery.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_moves_only_the_dead_brokers_clients_and_recovery_brings_them_back() {
    bounded(TEST_LIMIT, "test", async {
        let mut cluster = Cluster::start(3).await;
        let proxy = TestProxy::start(&cluster.yaml().build()).await;
        let tls = cluster.pki.client_config();
        let placement = Placement::new(&proxy.config);

        let sample = ids("t4-fo", 30);
        let before = which_brokers(proxy.mqtts, Some(tls.clone()), &sample, Version::V4).await;
        for (id, got) in sample.iter().zip(&before) {
            assert_eq!(got, &placement.place(id), "{id} before the failure");
        }
        let on_b1 = before.iter().filter(|b| *b == "b1").count();
        assert!(on_b1 >= 3, "the sample needs ids on b1, has {on_b1}");

        cluster.brokers[1].stop();
        let took = proxy.wait_server_up("b1", false, INTERVAL * FALL + HEALTH_MARGIN).await;
        eprintln!("b1 marked down {took:?} after it stopped");
        assert_eq!(proxy.server_up("b0").await, 1.0);
        assert_eq!(proxy.server_up("b2").await, 1.0);

        placement.set_up("b1", false);
        let during = which_brokers(proxy.mqtts, Some(tls.clone()), &sample, Version::V5).await;
        for ((id, was), now) in sample.iter().zip(&before).zip(&during) {
            if was == "b1" {
                assert_ne!(now, "b1", "{id} still reached the dead broker");
                assert_eq!(now, &placement.place(id), "{id} did not move to its next-ranked broker");
            } else {
                assert_eq!(now, was, "{id} moved although its broker {was} is up");
            }
        }

        cluster.brokers[1].restart().await;
        let took = proxy.wait_server_up("b1", true, INTERVAL * RISE + HEALTH_MARGIN).await;
        eprintln!("b1 marked up {took:?} after it restarted");
        let after = which_brokers(proxy.mqtts, Some(tls.clone()), &sample, Version::V4).await;
        assert_eq!(after, before, "after recovery every id should be back where it was");
        proxy.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// 5. No server up.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_up_refuses_with_server_unavailable_and_counts_it() {
    bounded(TEST_LIMIT, "test", async {
        let mut cluster = Cluster::start(2).await;
        let proxy = TestProxy::start(&cluster.yaml().build()).await;
        let tls = cluster.pki.client_config();
        let rejected = "mqttlb_connections_rejected_total{listener=\"mqtts\",reason=\"no_server_available\"}";

        assert_eq!(http_get(proxy.admin, "/readyz").await.0, 200, "ready while brokers are up");
        // The metric helper reads the real exposition (labels compared as a set, in any order).
        let (_, exposition) = http_get(proxy.admin, "/metrics").await;
        assert_eq!(metric_in(&exposition, "mqttlb_server_up{server=\"b0\",backend=\"brokers\"}"), Some(1.0));
        assert_eq!(metric(proxy.admin, rejected).await, 0.0);

        for b in &mut cluster.brokers {
            b.stop();
        }
        for name in ["b0", "b1"] {
            proxy.wait_server_up(name, false, INTERVAL * FALL + HEALTH_MARGIN).await;
        }
        let (status, body) = http_get(proxy.admin, "/readyz").await;
        assert_eq!(status, 503, "not ready without a broker: {body}");

        // 3.1.1: CONNACK with return code 0x03 (server unavailable), then the close.
        let answer = tls_exchange(proxy.mqtts, tls.clone(), &connect_packet_v311("t5-v311"), STEP_TIMEOUT)
            .await
            .expect("v3.1.1 refusal");
        assert_eq!(answer, [0x20, 0x02, 0x00, 0x03], "v3.1.1 refusal bytes");

        // 5: CONNACK with reason code 0x88 (server unavailable), then the close.
        let answer = tls_exchange(proxy.mqtts, tls.clone(), &connect_packet_v5("t5-v5"), STEP_TIMEOUT)
            .await
            .expect("v5 refusal");
        assert!(answer.len() >= 5, "v5 refusal too short: {answer:02x?}");
        assert_eq!(answer[0], 0x20, "not a CONNACK: {answer:02x?}");
        assert_eq!(usize::from(answer[1]) + 2, answer.len(), "CONNACK length: {answer:02x?}");
        assert_eq!(answer[2], 0x00, "session present on a refusal: {answer:02x?}");
        assert_eq!(answer[3], 0x88, "v5 reason code: {answer:02x?}");

        assert_eq!(metric(proxy.admin, rejected).await, 2.0, "both refusals counted");
        proxy.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// 6. A broker closing.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_closing_ends_only_its_own_clients() {
    bounded(TEST_LIMIT, "test", async {
        let mut cluster = Cluster::start(2).await;
        let proxy = TestProxy::start(&cluster.yaml().build()).await;
        let tls = cluster.pki.client_config();
        let placement = Placement::new(&proxy.config);
        let id_a = id_on(&placement, "t6-a", "b0");
        let id_b = id_on(&placement, "t6-b", "b1");
        assert_eq!(which_broker(proxy.mqtts, Some(tls.clone()), &id_a, Version::V4).await, "b0");
        assert_eq!(which_broker(proxy.mqtts, Some(tls.clone()), &id_b, Version::V4).await, "b1");

        let mut a = MqttClient::connect(proxy.mqtts, Some(tls.clone()), &id_a, Version::V4).await.expect("client a");
        let mut b = MqttClient::connect(proxy.mqtts, Some(tls.clone()), &id_b, Version::V5).await.expect("client b");
        a.round_trip("t6/a", b"a").await.expect("a works before");
        b.round_trip("t6/b", b"b").await.expect("b works before");
        let active_b0 = "mqttlb_server_connections_active{backend=\"brokers\",server=\"b0\"}";
        assert_eq!(metric(proxy.admin, active_b0).await, 1.0);

        let stopped = Instant::now();
        cluster.brokers[0].stop();
        let why = a.wait_closed(Duration::from_secs(3)).await.expect("a's connection ends with its broker");
        let took = stopped.elapsed();
        eprintln!("client on b0 saw its connection end after {took:?}: {why}");
        assert!(took < Duration::from_secs(2), "a's connection took {took:?} to end");

        b.publish("t6/b", b"still here", false).await.expect("b still publishes");
        let got = b.next_publish("t6/b", STEP_TIMEOUT).await.expect("b still receives");
        assert_eq!(got, b"still here");
        assert!(b.closed().is_none(), "b's connection ended: {:?}", b.closed());
        eventually(Duration::from_secs(2), || async { (metric(proxy.admin, active_b0).await == 0.0).then_some(()) })
            .await
            .expect("the proxy released the relay to b0");
        b.disconnect().await;
        proxy.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// 7. Graceful shutdown.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_clients_keeps_open_relays_and_ends_at_the_drain_timeout() {
    bounded(TEST_LIMIT, "test", async {
        let cluster = Cluster::start(1).await;
        let drain = Duration::from_secs(2);
        let mut proxy = TestProxy::start(&cluster.yaml().drain_timeout("2s").build()).await;
        let tls = cluster.pki.client_config();
        let mut c = MqttClient::connect(proxy.mqtts, Some(tls.clone()), "t7-stays", Version::V4).await.expect("client");
        c.subscribe("t7/topic").await.expect("subscribe");

        let cancelled = Instant::now();
        proxy.token.cancel();
        let handle = proxy.handle.take().expect("server task");

        let addr = proxy.mqtts;
        eventually(
            Duration::from_secs(1),
            || async move { tokio::net::TcpStream::connect(addr).await.err().map(|_| ()) },
        )
        .await
        .expect("the listener stops accepting after the cancel");
        assert!(
            connect_v4(proxy.mqtts, Some(tls.clone()), "t7-new").await.is_err(),
            "a new client connected during shutdown"
        );

        // The open relay still carries traffic both ways.
        c.publish("t7/topic", b"during drain", false).await.expect("publish during drain");
        assert_eq!(c.next_publish("t7/topic", STEP_TIMEOUT).await.expect("receive during drain"), b"during drain");

        // The client stays: run() returns at the drain deadline.
        let result = tokio::time::timeout(drain + Duration::from_secs(3), handle)
            .await
            .expect("run() did not return after the drain timeout");
        let took = cancelled.elapsed();
        result.expect("server task").expect("server result");
        eprintln!("run() returned {took:?} after the cancel (drain_timeout {drain:?})");
        assert!(took >= drain - Duration::from_millis(200), "run() returned after {took:?}, before the drain deadline");
        assert!(took <= drain + Duration::from_millis(1500), "run() returned {took:?} after the cancel");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_early_when_the_last_client_leaves() {
    bounded(TEST_LIMIT, "test", async {
        let cluster = Cluster::start(1).await;
        let mut proxy = TestProxy::start(&cluster.yaml().drain_timeout("20s").build()).await;
        let tls = cluster.pki.client_config();
        let mut c =
            // 3.1.1: an MQTT 5 client would be sent a DISCONNECT as the shutdown starts (tests/shutdown.rs).
            MqttClient::connect(proxy.mqtts, Some(tls.clone()), "t7-leaves", Version::V4).await.expect("client");

        proxy.token.cancel();
        let handle = proxy.handle.take().expect("server task");
        c.round_trip("t7/leaves", b"still relayed").await.expect("relay works during drain");
        assert!(!handle.is_finished(), "run() returned while a client was connected");

        let left = Instant::now();
        c.disconnect().await;
        tokio::time::timeout(Duration::from_secs(3), handle)
            .await
            .expect("run() did not return after the last client left")
            .expect("server task")
            .expect("server result");
        eprintln!("run() returned {:?} after the last client left", left.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_still_open_at_the_drain_deadline_are_closed() {
    bounded(TEST_LIMIT, "test", async {
        let cluster = Cluster::start(1).await;
        let mut proxy = TestProxy::start(&cluster.yaml().drain_timeout("1s").build()).await;
        let tls = cluster.pki.client_config();
        let mut c = MqttClient::connect(proxy.mqtts, Some(tls), "t7-lingers", Version::V4).await.expect("client");
        proxy.token.cancel();
        let handle = proxy.handle.take().expect("server task");
        tokio::time::timeout(Duration::from_secs(4), handle)
            .await
            .expect("run() did not return after the drain timeout")
            .expect("server task")
            .expect("server result");
        // `shutdown.drain_timeout`: "How long open relays may go on after SIGTERM/SIGINT before they are closed."
        c.wait_closed(Duration::from_secs(2)).await.expect("the relay left at the drain deadline was closed");
    })
    .await;
}
