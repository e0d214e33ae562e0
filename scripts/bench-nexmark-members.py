#!/usr/bin/env python3
"""Nexmark over Kafka with one and with two `weir run` members (issue 28).

Starts a nisshi broker (SQLite storage) on loopback, writes EVENTS Nexmark
events (`kind = "nexmark"`, seed 1) to a 2-partition topic with a weir
pipeline, then runs each query of examples/nexmark/ with its source
replaced by that topic: by one process, then by two in one consumer group.
Windowed queries run with `source.repartition = true` both times (the same
pipeline, so the figures compare). A run is over once the group's offsets
reach the end of the topic and the members' CPU time stops growing.

events/s per core = events / CPU seconds of the weir processes (user +
system, from /proc), the figure Nexmark reports; wall s runs from the
start to the last CPU the members used (group joins included).

    scripts/bench-nexmark-members.py [path/to/weir] [EVENTS] [QUERY ...]

A query name of `none` runs no query (the load alone).
"""
import os, re, subprocess, sys, tempfile, time, shutil

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_recovery import start_broker, wait  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
# The generator's columns (crates/weir-pipeline/src/source/nexmark.rs `fields`).
FIELDS = """[
  { name = "event_type", type = "int32", nullable = false },
  { name = "date_time", type = "timestamp_us", nullable = false },
  { name = "person_id", type = "int64" }, { name = "name", type = "utf8" },
  { name = "email_address", type = "utf8" }, { name = "credit_card", type = "utf8" },
  { name = "city", type = "utf8" }, { name = "state", type = "utf8" },
  { name = "auction_id", type = "int64" }, { name = "item_name", type = "utf8" },
  { name = "description", type = "utf8" }, { name = "initial_bid", type = "int64" },
  { name = "reserve", type = "int64" }, { name = "expires", type = "timestamp_us" },
  { name = "seller", type = "int64" }, { name = "category", type = "int64" },
  { name = "auction", type = "int64" }, { name = "bidder", type = "int64" },
  { name = "price", type = "int64" }, { name = "channel", type = "utf8" },
  { name = "url", type = "utf8" }, { name = "extra", type = "utf8" },
]"""
PARTITIONS = 2


def cpu_seconds(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return 0.0


def committed_and_end(addr, group, topic):
    c = Consumer({"bootstrap.servers": addr, "group.id": group})
    parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    committed = sum(max(tp.offset, 0) for tp in c.committed(parts, timeout=10))
    end = sum(c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts)
    c.close()
    return committed, end


def load(weir, tmp, addr, events):
    """Writes the events with a weir pipeline; its wall and CPU seconds.
    `NEXMARK_LOAD_PROPERTIES` adds librdkafka properties to its sink
    (e.g. `"max.in.flight.requests.per.connection" = "5"`)."""
    import resource
    extra = os.environ.get("NEXMARK_LOAD_PROPERTIES", "")
    path = os.path.join(tmp, "load.toml")
    with open(path, "w") as f:
        f.write(f'''
name = "nexmark-load"
sql = "SELECT * FROM source"
[source]
kind = "nexmark"
events = {events}
rate = 10000
seed = 1
[sink]
kind = "kafka"
brokers = "{addr}"
topic = "nexmark"
properties = {{ "linger.ms" = "20"{", " + extra if extra else ""} }}
[errors]
policy = "fail"
[batch]
max_records = 8192
''')
    def children_cpu():
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime
    t0, c0 = time.time(), children_cpu()
    subprocess.run([weir, "run", path], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "WEIR_LOG": "warn"})
    return time.time() - t0, children_cpu() - c0


def query_toml(q, addr, group):
    text = open(os.path.join(ROOT, "examples", "nexmark", f"{q}.toml")).read()
    windowed = re.search(r"\b(tumble|hop|session)\s*\(", text) is not None
    source = f'''[source]
kind = "kafka"
brokers = "{addr}"
topics = ["nexmark"]
group = "{group}"
format = "json"
start = "earliest"
fields = {FIELDS}
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
repartition = {"true" if windowed else "false"}
'''
    text = re.sub(r"\[source\]\n(?:[^\[\n][^\n]*\n|\n)*", source, text, count=1)
    # A name per run: a repartitioned run's internal topic is named after
    # its pipeline, and must not hold an earlier run's records.
    text = re.sub(r'^name = "([^"]*)"', rf'name = "\1-{group}"', text, count=1, flags=re.M)
    return text, windowed


def run(weir, tmp, addr, q, members, events):
    group = f"g-{q}-{members}"
    text, windowed = query_toml(q, addr, group)
    path = os.path.join(tmp, f"{q}-{members}.toml")
    with open(path, "w") as f:
        f.write(text)
    t0 = time.time()
    procs = [subprocess.Popen([weir, "run", path], stdout=subprocess.DEVNULL,
                              stderr=open(f"{path}.{m}.log", "w"),
                              env={**os.environ, "WEIR_LOG": "warn"}) for m in range(members)]
    try:
        wait(lambda: committed_and_end(addr, group, "nexmark")[0] >= events,
             f"{q} with {members}: the group's offsets at the end", timeout=900)
        # Then until the members' CPU time stops growing (the windows stage
        # of a repartitioned query works after the source's commits): 3 s in
        # which no half second used more than 10 % of a core (idle clients
        # poll at ~3 %).
        prev, last, last_change = -1.0, 0.0, time.time()
        while time.time() - last_change < 3:
            for p in procs:
                if p.poll() is not None:
                    sys.exit(open(f"{path}.{procs.index(p)}.log").read())
            now = sum(cpu_seconds(p.pid) for p in procs)
            if now - prev > 0.05:
                last, last_change = now, time.time()
            prev = now
            time.sleep(0.5)
        return last_change - t0, last, windowed
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)


def main():
    weir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "release", "weir")
    events = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    queries = sys.argv[3:] or ["q0", "q1", "q2", "q5", "q12", "q17", "q22"]
    tmp = tempfile.mkdtemp()
    broker, addr = start_broker(tmp)
    try:
        admin = AdminClient({"bootstrap.servers": addr})
        for f in admin.create_topics([NewTopic("nexmark", PARTITIONS, 1)]).values():
            f.result()
        took, cpu = load(weir, tmp, addr, events)
        print(f"{events:,} events written to a {PARTITIONS}-partition topic in {took:.1f} s, {cpu:.1f} CPU s\n")
        print("| query | members | repartition | wall s | CPU s | events/s | events/s per core |")
        print("|---|---:|---|---:|---:|---:|---:|")
        for q in [q for q in queries if q != "none"]:
            for members in (1, 2):
                wall, cpu, windowed = run(weir, tmp, addr, q, members, events)
                print(f"| {q} | {members} | {'yes' if windowed else 'no'} | {wall:.1f} | {cpu:.1f} | "
                      f"{events / wall:,.0f} | {events / cpu:,.0f} |", flush=True)
    finally:
        broker.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
