"""paho-mqtt (Python) against Moat's broker over mutual TLS, run by
tests/mqtt.rs: connects with a device certificate, subscribes at QoS 2,
publishes one JSON message at each QoS and waits to hear all three back.

usage: mqtt_paho.py HOST PORT CA CERT KEY TOPIC 3.1.1|5 [tcp|websockets]

With `websockets`, PORT is the HTTPS port and the client speaks MQTT over
WebSocket at /mqtt.
"""

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

host, port, ca, cert, key, topic, version = sys.argv[1:8]
transport = sys.argv[8] if len(sys.argv) > 8 else "tcp"
protocol = mqtt.MQTTv311 if version == "3.1.1" else mqtt.MQTTv5

client = mqtt.Client(
    CallbackAPIVersion.VERSION2,
    client_id=f"paho-{version}-{transport}",
    protocol=protocol,
    transport=transport,
)
if transport == "websockets":
    client.ws_set_options(path="/mqtt")
client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
subscribed = threading.Event()
received = []
lock = threading.Lock()


def on_connect(c, userdata, flags, reason_code, properties):
    print("connected:", reason_code, flush=True)
    c.subscribe(topic, qos=2)


def on_subscribe(c, userdata, mid, reason_codes, properties):
    print("subscribed:", reason_codes, flush=True)
    if all(not rc.is_failure for rc in reason_codes):
        subscribed.set()


def on_message(c, userdata, msg):
    with lock:
        received.append(json.loads(msg.payload))


client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect(host, int(port), keepalive=30)
client.loop_start()
try:
    if not subscribed.wait(10):
        sys.exit("never subscribed")
    for qos in (0, 1, 2):
        info = client.publish(topic, json.dumps({"qos": qos, "v": version, "t": transport}), qos=qos)
        info.wait_for_publish(10)
        if not info.is_published():
            sys.exit(f"qos {qos} not acknowledged")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with lock:
            if len(received) >= 3:
                break
        time.sleep(0.05)
    with lock:
        got = sorted(m["qos"] for m in received)
    print("received:", got, flush=True)
    if got != [0, 1, 2]:
        sys.exit(f"expected one message at each QoS, got {got}")
finally:
    client.disconnect()
    client.loop_stop()
