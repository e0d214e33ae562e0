#!/usr/bin/env python3
"""Recovery time of a windowed pipeline after SIGKILL, with and without the
state changelog (issue 28, docs/pipelines.md "Window state and recovery").

For each window size N (records in one open one-hour window) and each
`[state] checkpoint_ms` (0 = no changelog: recovery replays the window),
then with the changelog and the process a static member of its group
(`group.instance.id`: the restart does not wait for the session timeout):
produce N rides over four partitions, run `weir run` until it has read them
all, SIGKILL it, restart it, produce rides that close the window, and time
from the restart to the window's first result on the output topic. Also
prints how many records the restarted process read.

Starts a nisshi broker (SQLite storage) on loopback. Usage:

    scripts/bench_recovery.py [path/to/weir] [N ...]
"""
import os, re, shutil, signal, socket, subprocess, sys, tempfile, time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

CITIES = ["rome", "oslo", "lima", "kyiv", "baku"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait(cond, what, timeout=600):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            sys.exit(f"gave up waiting for {what}")
        time.sleep(0.05)


def start_broker(tmp):
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    nisshi = shutil.which("nisshi") or os.path.expanduser("~/.cargo/bin/nisshi")
    proc = subprocess.Popen([nisshi, "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--group-initial-rebalance-delay", "500ms", "--storage-engine", "sqlite://broker.db"],
                            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            return False
    wait(up, "the broker")
    return proc, f"127.0.0.1:{port}"


def produce(addr, topic, rides, n_window, at=None):
    """Rides `rides` (a range): ride i at 08:00 + i * 3000 / n_window s
    (all of 0..n_window inside [08:00, 09:00)), or at second `at`, to
    partition i % 4."""
    p = Producer({"bootstrap.servers": addr, "linger.ms": 20, "queue.buffering.max.messages": 1000000})
    for i in rides:
        second = at if at is not None else 8 * 3600 + (i * 3000) // n_window
        ts = f"2026-01-01T{second // 3600:02}:{(second // 60) % 60:02}:{second % 60:02}Z"
        city = CITIES[i * 7 % 5]
        payload = f'{{"ride":{i},"city":"{city}","fare":{100 + i % 900},"ts":"{ts}"}}'
        while True:
            try:
                p.produce(topic, payload.encode(), key=str(i).encode(), partition=i % 4)
                break
            except BufferError:
                p.poll(0.1)
    p.flush(120)


def committed_and_end(addr, group, topic):
    c = Consumer({"bootstrap.servers": addr, "group.id": group})
    parts = [TopicPartition(topic, p) for p in range(4)]
    committed = sum(max(tp.offset, 0) for tp in c.committed(parts, timeout=10))
    end = sum(c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts)
    c.close()
    return committed, end


def pipeline(tmp, addr, name, checkpoint_ms, static):
    path = os.path.join(tmp, f"{name}.toml")
    member = ', "group.instance.id" = "member-1"' if static else ""
    with open(path, "w") as f:
        f.write(f'''
name = "{name}"
sql = """
SELECT window_start, city, count(*) AS n, sum(fare) AS cents
FROM tumble(source, ts, INTERVAL '1' HOUR)
GROUP BY window_start, city
"""
[source]
kind = "kafka"
brokers = "{addr}"
topics = ["{name}"]
group = "g-{name}"
format = "json"
fields = [{{ name = "ride", type = "int64" }}, {{ name = "city", type = "utf8" }}, {{ name = "fare", type = "int64" }}, {{ name = "ts", type = "timestamp_us" }}]
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500"{member} }}
[watermark]
idle_partition_ms = 0
[state]
checkpoint_ms = {checkpoint_ms}
[sink]
kind = "kafka"
brokers = "{addr}"
topic = "{name}-out"
[errors]
policy = "skip"
[batch]
max_records = 4096
''')
    return path


def start(weir, path):
    return subprocess.Popen([weir, "run", path], stdout=subprocess.DEVNULL,
                            stderr=open(path + ".log", "a"), env={**os.environ, "WEIR_LOG": "info"})


def run(weir, tmp, addr, n, checkpoint_ms, static):
    name = f"rec-{n}-{checkpoint_ms}-{int(static)}"
    admin = AdminClient({"bootstrap.servers": addr})
    for f in admin.create_topics([NewTopic(name, 4, 1), NewTopic(f"{name}-out", 1, 1)]).values():
        f.result()
    produce(addr, name, range(n), n)
    path = pipeline(tmp, addr, name, checkpoint_ms, static)
    first = start(weir, path)
    log = path + ".log"
    time.sleep(1)
    if first.poll() is not None:
        sys.exit(open(log).read())

    def read_all():
        # Every record read (a progress line every 10 s says how many).
        text = open(log).read() if os.path.exists(log) else ""
        counts = [int(x) for x in re.findall(r"records_in=(\d+)", text)]
        return counts and max(counts) >= n
    wait(read_all, f"{name}: the first run reading every record")
    if checkpoint_ms:
        wait(lambda: committed_and_end(addr, f"g-{name}", name)[0] >= n, f"{name}: commits at the head")
    committed = committed_and_end(addr, f"g-{name}", name)[0]
    first.send_signal(signal.SIGKILL)
    first.wait()
    reader = Consumer({"bootstrap.servers": addr, "group.id": f"reader-{name}", "auto.offset.reset": "earliest"})
    reader.subscribe([f"{name}-out"])
    t0 = time.time()
    second = start(weir, path)
    # Rides at 10:00 (20: one per city and partition) close the window.
    produce(addr, name, range(20), 1, at=10 * 3600)
    got = None
    while got is None and time.time() - t0 < 600:
        m = reader.poll(0.2)
        if m is not None and not m.error():
            got = time.time() - t0
    reader.close()
    second.send_signal(signal.SIGTERM)
    second.wait(timeout=60)
    text = open(log).read()
    runs = text.split("pipeline started")
    counts = [int(x) for x in re.findall(r"records_in=(\d+)", runs[-1])]
    again = max(counts) if counts else -1
    return committed, got, again


def main():
    weir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "release", "weir")
    sizes = [int(x) for x in sys.argv[2:]] or [200_000, 2_000_000]
    tmp = tempfile.mkdtemp()
    broker, addr = start_broker(tmp)
    try:
        print("| records in the open window | checkpoint_ms | static member | committed before the kill | restart → first result s | records read after the restart |")
        print("|---:|---:|---|---:|---:|---:|")
        for n in sizes:
            for checkpoint_ms, static in ((0, False), (1000, False), (1000, True)):
                committed, got, again = run(weir, tmp, addr, n, checkpoint_ms, static)
                got = f"{got:.1f}" if got is not None else "none in 600 s"
                print(f"| {n:,} | {checkpoint_ms} | {'yes' if static else 'no'} | {committed:,} | {got} | {again:,} |", flush=True)
    finally:
        broker.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
