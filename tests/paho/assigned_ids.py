#!/usr/bin/env python3
"""Persistent MQTT 5 sessions with broker-assigned client ids, through two mqtt-lb instances (paho-mqtt).

Usage: assigned_ids.py HOST PORT_A PORT_B COUNT

Each of COUNT clients connects to one instance with an empty client id, Clean Start 0 and a Session Expiry Interval,
takes the Assigned Client Identifier from the CONNACK, subscribes, disconnects, and reconnects with that id through
the other instance, as an application resuming its session does. One line per client on stdout:
`<assigned id> <session present on the reconnect: 0 or 1>`. Every network wait is bounded (5 s).
"""

import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TIMEOUT = 5.0


def session(host, port, client_id):
    """Connects with Clean Start 0; returns (assigned id or None, session present, the connected client)."""
    done = threading.Event()
    result = {}

    def on_connect(client, userdata, flags, reason, properties):
        result["reason"] = reason
        result["present"] = flags.get("session present", 0)
        result["assigned"] = getattr(properties, "AssignedClientIdentifier", None)
        done.set()

    client = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    client.connect(host, port, keepalive=30, clean_start=False, properties=properties)
    client.loop_start()
    if not done.wait(TIMEOUT):
        client.loop_stop()
        raise SystemExit(f"no CONNACK from port {port} for {client_id!r}")
    if result["reason"] != 0:
        client.loop_stop()
        raise SystemExit(f"refused from port {port} for {client_id!r}: {result['reason']}")
    return result["assigned"], result["present"], client


def leave(client):
    client.disconnect()
    client.loop_stop()


def main():
    host, port_a, port_b, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    for i in range(count):
        first, second = (port_a, port_b) if i % 2 == 0 else (port_b, port_a)
        assigned, _, client = session(host, first, "")
        if not assigned:
            raise SystemExit(f"client {i}: no Assigned Client Identifier in the CONNACK")
        subscribed = threading.Event()
        client.on_subscribe = lambda *args: subscribed.set()
        client.subscribe(f"sticky/{i}", qos=1)
        if not subscribed.wait(TIMEOUT):
            raise SystemExit(f"client {i}: no SUBACK")
        leave(client)
        _, present, client = session(host, second, assigned)
        leave(client)
        print(assigned, int(bool(present)), flush=True)


main()
