import os, shutil, statistics, subprocess, sys, tempfile, time
import numpy as np, pyarrow as pa
sys.path.insert(0, "/work/main/python")
import arrowpool
S = "/work/main/target/release/arrowpoold"
rng = np.random.default_rng(1)
t = pa.table({f"c{i}": rng.random(4_000_000) for i in range(12)})  # 384 MB
def run(extra):
    work = tempfile.mkdtemp(); sock = os.path.join(work, "s.sock")
    p = subprocess.Popen([S, "--socket", sock, "--memory", "1000M"] + extra, stderr=subprocess.DEVNULL)
    while True:
        try: c = arrowpool.connect(sock, autostart=False); break
        except Exception: time.sleep(0.01)
    kind = c.stats()["memory_kind"]
    puts = []
    for i in range(8):
        t0 = time.perf_counter(); c.put("t", t); puts.append(time.perf_counter() - t0)
    gets = []
    for i in range(300):
        t0 = time.perf_counter(); g = c.get("t"); gets.append(time.perf_counter() - t0); del g
    c.close(); p.kill(); p.wait()
    return kind, statistics.median(puts[2:]) * 1000, statistics.median(gets) * 1e6
for r in range(3):
    for label, extra in (("memfd", []), ("state-dir", ["--state-dir", "/dev/shm/hput-state", "--state-hugetlbfs", "/tmp/hmnt", "--quarantine", "0"])):
        shutil.rmtree("/dev/shm/hput-state", ignore_errors=True)
        for f in os.listdir("/tmp/hmnt"): os.remove(os.path.join("/tmp/hmnt", f))
        kind, put, get = run(extra)
        print(f"{label:10s} {kind:8s} put {put:6.1f} ms  get {get:5.0f} us", flush=True)
