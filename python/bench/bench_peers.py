"""A DataFrame from a Parquet file, through the user-facing path: ``arrowpool.connect()``
(this user's server, autostarted with default flags) against Feather on /dev/shm
(uncompressed, memory-mapped), same run: put (write), get (read), to pandas.

    python python/bench/bench_peers.py PATH.parquet

The first puts and writes land in fresh memory; the later ones are steady."""
import os, time, statistics as st, tempfile
import pyarrow as pa, pyarrow.parquet as pq, pyarrow.feather as feather
import arrowpool
import sys

path = sys.argv[1]
df = pq.read_table(path).to_pandas()
print("frame:", df.shape, f"{df.memory_usage(deep=False).sum()/1e9:.2f} GB (numpy part)")
def timed(f, n):
    out = []
    for _ in range(n):
        t = time.perf_counter(); r = f(); out.append(time.perf_counter() - t); del r
    return out
c = arrowpool.connect()
print("server:", c.path, c.memory_kind, f"arena {c.arena_bytes/2**30:.1f} GiB")
put = timed(lambda: c.put("peers", df), 4)
get = timed(lambda: c.get("peers"), 20)
pd_ = timed(lambda: c.get_pandas("peers"), 4)
f = "/dev/shm/peers.feather"
fw = timed(lambda: feather.write_feather(df, f, compression="uncompressed"), 4)
fr = timed(lambda: feather.read_table(f, memory_map=True), 20)
fp = timed(lambda: feather.read_table(f, memory_map=True).to_pandas(), 4)
os.unlink(f)
ms = lambda xs: ", ".join(f"{x*1e3:.1f}" for x in xs)
print(f"arrowpool put ms: {ms(put)}")
print(f"arrowpool get ms: median {st.median(get)*1e3:.3f} (min {min(get)*1e3:.3f})")
print(f"arrowpool get_pandas ms: {ms(pd_)}")
print(f"feather write ms: {ms(fw)}")
print(f"feather read (mmap) ms: median {st.median(fr)*1e3:.3f}")
print(f"feather read+to_pandas ms: {ms(fp)}")
c.delete("peers")
