//! `listeners[].routes`: a listener with routes and no default, names by index, and each bad route refused with
//! its key named.

use super::*;

/// Two backends, and an mqtt listener with `listener` as its extra keys (routes, backend, tls).
fn doc(protocol: &str, listener: &str) -> String {
    format!(
        "listeners:\n  - name: front\n    bind: \"127.0.0.1:0\"\n    protocol: {protocol}\n{listener}\
         backends:\n  - name: a\n    servers: [{{ name: a1, address: \"127.0.0.1:1883\" }}]\n\
         \x20 - name: b\n    servers: [{{ name: b1, address: \"127.0.0.1:1884\" }}]\n"
    )
}

fn refused(text: &str) -> ConfigError {
    match parse(text, Path::new("test.yaml")) {
        Ok(_) => panic!("config was accepted: {text}"),
        Err(e) => e,
    }
}

#[test]
fn routes_without_a_default_and_names_by_index() {
    let text = doc(
        "mqtt",
        "    routes:\n      - { client_id: \"gb-*\", backend: b }\n      - { name: users, username: \"u?\", backend: a }\n",
    );
    let c = parse(&text, Path::new("test.yaml")).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.backend, None);
    let names: Vec<(&str, usize)> = l.routes.iter().map(|r| (r.name.as_str(), r.backend)).collect();
    assert_eq!(names, [("0", 1), ("users", 0)]);
}

#[test]
fn a_listener_needs_a_backend_or_routes() {
    let e = refused(&doc("mqtt", ""));
    assert_eq!(e.key, "listeners[0].backend", "{e}");
    assert!(e.message.contains("routes"), "{e}");
    let e = refused(&doc("mqtt", "    routes: []\n"));
    assert_eq!(e.key, "listeners[0].routes", "{e}");
}

#[test]
fn each_bad_route_is_refused_naming_its_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("mqtt", "{ client_id: a, backend: nowhere }", "listeners[0].routes[0].backend"),
        ("mqtt", "{ backend: a }", "listeners[0].routes[0]"),
        ("mqtt", "{ client_id: \"a[12]\", backend: a }", "listeners[0].routes[0].client_id"),
        ("mqtt", "{ username: \"\", backend: a }", "listeners[0].routes[0].username"),
        ("mqtt", "{ identity: \"x*\", backend: a }", "listeners[0].routes[0].identity"),
        ("mqtt", "{ sni: \"a.*.org\", backend: a }", "listeners[0].routes[0].sni"),
        ("mqtt", "{ name: \"bad name\", client_id: a, backend: a }", "listeners[0].routes[0].name"),
        ("mqtt", "{ client_id: a, backend: a, colour: red }", "listeners[0].routes[0].colour"),
        ("tcp", "{ client_id: a, backend: a }", "listeners[0].routes[0].client_id"),
        ("tcp", "{ username: a, backend: a }", "listeners[0].routes[0].username"),
    ];
    for (protocol, route, key) in cases {
        let e = refused(&doc(protocol, &format!("    backend: a\n    routes:\n      - {route}\n")));
        assert_eq!(e.key, *key, "{route}: {e}");
    }
}

#[test]
fn a_route_an_earlier_one_always_takes_is_refused() {
    let hidden: &[(&str, &str)] = &[
        ("{ client_id: \"*\", backend: a }", "{ username: u, backend: b }"),
        ("{ client_id: \"gb-*\", backend: a }", "{ client_id: \"gb-1*\", username: u, backend: b }"),
        ("{ client_id: x, username: u, backend: a }", "{ username: u, client_id: x, backend: b }"),
        ("{ name: first, client_id: \"tenant-?/*\", backend: a }", "{ client_id: \"tenant-a/x\", backend: b }"),
    ];
    for (first, second) in hidden {
        let text = doc("mqtt", &format!("    routes:\n      - {first}\n      - {second}\n"));
        let e = refused(&text);
        assert_eq!(e.key, "listeners[0].routes[1]", "{second}: {e}");
        assert!(e.message.contains("can never match"), "{e}");
    }
    let text = doc(
        "mqtt",
        "    routes:\n      - { client_id: \"gb-1*\", backend: a }\n      - { client_id: \"gb-*\", backend: b }\n",
    );
    assert!(parse(&text, Path::new("test.yaml")).is_ok(), "a narrower route first is fine");
    let text = doc(
        "mqtt",
        "    routes:\n      - { name: x, client_id: a, backend: a }\n      - { name: x, client_id: b, backend: b }\n",
    );
    assert_eq!(refused(&text).key, "listeners[0].routes[1].name");
}

#[test]
fn sni_and_identity_need_what_gives_them() {
    let e = refused(&doc("mqtt", "    routes:\n      - { sni: mqtt.example.org, backend: a }\n"));
    assert_eq!(e.key, "listeners[0].routes[0].sni", "{e}");
    assert!(e.message.contains("tls"), "{e}");
    let e = refused(&doc("tcp", "    routes:\n      - { identity: \"sensor-*\", backend: a }\n"));
    assert_eq!(e.key, "listeners[0].routes[0].identity", "{e}");
    assert!(e.message.contains("client_ca"), "{e}");
}
